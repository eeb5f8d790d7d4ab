"""Customer Match user lists: found by exact display name, or created on first use (§1.6)."""

from __future__ import annotations

from cohortsync.destinations.base import PermanentError
from cohortsync.destinations.google_api import GoogleClient
from cohortsync.destinations.google_auth import GoogleConfig

PAGE_SIZE = 1000
MAX_PAGES = 100
TAKEN = "DISPLAY_NAME_ALREADY_USED"


class UserLists:
    """The ids of the operating account's user lists, by display name, cached once found."""

    def __init__(
        self, client: GoogleClient, config: GoogleConfig, name: str, days: int | None = None
    ) -> None:
        self.client = client
        self.config = config
        self.name = name
        self.days = days
        self._ids: dict[str, str] = {}

    @property
    def path(self) -> str:
        """The account's `userLists` collection."""
        account = self.config.operating_account_id
        return f"v1/accountTypes/{self.config.operating_account_type}/accounts/{account}/userLists"

    def known(self, display_name: str) -> str | None:
        """The id already found for a name, without asking Google."""
        return self._ids.get(display_name)

    def forget(self, display_name: str) -> None:
        """Drop a cached id (the list was deleted on the platform)."""
        self._ids.pop(display_name, None)

    def existing(self, display_name: str) -> str | None:
        """The id of the list named exactly `display_name`, or None (never creates one)."""
        found = self._ids.get(display_name) or self._find(display_name)
        if found is not None:
            self._ids[display_name] = found
        return found

    def size(self, list_id: str, what: str) -> dict[str, object]:
        """The list's `sizeInfo` as Google shows it (empty when it shows none)."""
        request = self.client.prepare("GET", f"{self.path}/{list_id}", headers=self._login())
        info = self.client.call(request, what).get("sizeInfo")
        return dict(info) if isinstance(info, dict) else {}

    def id_of(self, display_name: str) -> str:
        """The id of the list named exactly `display_name`, created if missing."""
        found = self._ids.get(display_name) or self._find(display_name)
        if found is None:
            try:
                found = self._create(display_name)
            except PermanentError as refused:
                if TAKEN not in str(refused):
                    raise
                found = self._find(display_name)  # created meanwhile by another run
                if found is None:
                    raise
        self._ids[display_name] = found
        return found

    def _find(self, display_name: str) -> str | None:
        what = f"{self.name}: look up user list {display_name}"
        token = ""
        for _ in range(MAX_PAGES):
            params = {"pageSize": str(PAGE_SIZE)}
            if token:
                params["pageToken"] = token
            listing = self.client.prepare("GET", self.path, params=params, headers=self._login())
            page = self.client.call(listing, what)
            for user_list in page.get("userLists") or ():
                if isinstance(user_list, dict) and user_list.get("displayName") == display_name:
                    name = str(user_list.get("name", ""))
                    return str(user_list.get("id") or name.rsplit("/", 1)[-1])
            token = str(page.get("nextPageToken") or "")
            if not token:
                break
        return None

    def _create(self, display_name: str) -> str:
        what = f"{self.name}: create user list {display_name}"
        body: dict[str, object] = {
            "displayName": display_name,
            "description": described(display_name),
            "ingestedUserListInfo": {
                "uploadKeyTypes": ["CONTACT_ID"],
                "contactIdInfo": {"dataSourceType": "DATA_SOURCE_TYPE_FIRST_PARTY"},
            },
        }
        if self.days is not None:
            body["membershipDuration"] = f"{self.days * 86_400}s"
        creation = self.client.prepare("POST", self.path, body, headers=self._login())
        created = self.client.call(creation, what)
        list_id = created.get("id")
        if not list_id:
            raise PermanentError(f"{what}: Google answered without a user list id")
        return str(list_id)

    def _login(self) -> dict[str, str]:
        """The `login-account` header, when the account is reached through a manager."""
        if self.config.login_account_id is None:
            return {}
        login = self.config.login_account_id
        return {"login-account": f"accountTypes/{self.config.login_account_type}/accounts/{login}"}


def described(name: str) -> str:
    """The description cohortsync gives a list it creates."""
    return f"{name}: kept in sync by cohortsync; members change on every sync."
