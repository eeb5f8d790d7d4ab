"""Settings and OAuth every Google Data Manager destination shares.

Credentials come from a service-account key file or an OAuth client's refresh token, through
the `google-auth` library, with the scope `https://www.googleapis.com/auth/datamanager`. Token
requests go over the destination's own httpx client; a token is refreshed before it expires
(google-auth treats one as stale a few minutes early), and after a 401 on the next call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import ConfigDict, SecretStr, field_validator, model_validator

from cohortsync.destinations.base import (
    AuthError,
    DestinationConfig,
    DestinationContext,
    TransientError,
)

SCOPE = "https://www.googleapis.com/auth/datamanager"
API_URL = "https://datamanager.googleapis.com"
TOKEN_URI = "https://oauth2.googleapis.com/token"
AccountType = Literal[
    "GOOGLE_ADS",
    "DISPLAY_VIDEO_PARTNER",
    "DISPLAY_VIDEO_ADVERTISER",
    "DATA_PARTNER",
    "GOOGLE_ANALYTICS_PROPERTY",
    "GOOGLE_AD_MANAGER_AUDIENCE_LINK",
    "FLOODLIGHT_CONFIG",
]
Consent = Literal["CONSENT_GRANTED", "CONSENT_DENIED"]


class GoogleConfig(DestinationConfig):
    """The account, credentials and address every Data Manager destination takes."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    operating_account_id: str
    """The account that receives the data: a Google Ads customer id (`123-456-7890` or
    `1234567890`)."""
    operating_account_type: AccountType = "GOOGLE_ADS"
    login_account_id: str | None = None
    """The manager account the credentials reach the operating account through, if any."""
    login_account_type: AccountType = "GOOGLE_ADS"
    service_account_file: str | None = None
    """A service-account key file (relative to the project folder)."""
    refresh_token: SecretStr | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    token_uri: str | None = None
    """Where tokens are refreshed; by default the key file's, else Google's."""
    base_url: str = API_URL
    ad_user_data_consent: Consent | None = None
    """Sent as `consent.adUserData` with every request that carries user data."""
    ad_personalization_consent: Consent | None = None
    """Sent as `consent.adPersonalization`."""
    requests_per_minute: int = 300
    """Google's quota is 300 requests per minute per Cloud project; calls wait to keep it."""
    diagnostics_delay_seconds: float = 1800.0
    """How long after an ingest Google is first asked for its diagnostics (match rate)."""
    default_region: str = "US"
    """Where phone numbers without a country code are read."""

    @field_validator("operating_account_id", "login_account_id")
    @classmethod
    def _account(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = value.strip().replace("-", "")
        if not re.fullmatch(r"[0-9]{10}", digits):
            raise ValueError("an account id is 10 digits, like 123-456-7890 or 1234567890")
        return digits

    @field_validator("base_url", "token_uri")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError("must be an http(s) address")
        return value.rstrip("/")

    @field_validator("requests_per_minute")
    @classmethod
    def _rate(cls, value: int) -> int:
        if value < 1:
            raise ValueError("requests_per_minute must be at least 1")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> GoogleConfig:
        oauth = (self.refresh_token, self.client_id, self.client_secret)
        if self.service_account_file is None and not all(oauth):
            raise ValueError(
                "set service_account_file, or refresh_token with client_id and client_secret"
            )
        if self.service_account_file is not None and any(oauth):
            raise ValueError("set service_account_file or a refresh token, not both")
        return self

    def url(self, path: str) -> str:
        """The full address of an API method (`v1/audienceMembers:ingest`)."""
        return f"{self.base_url}/{path.lstrip('/')}"

    def operating_account(self) -> dict[str, str]:
        """`{"accountType", "accountId"}` of the operating account."""
        return {"accountType": self.operating_account_type, "accountId": self.operating_account_id}

    def destination(self, product_destination_id: str) -> dict[str, Any]:
        """One `destinations[]` entry (§1.2)."""
        entry: dict[str, Any] = {
            "operatingAccount": self.operating_account(),
            "productDestinationId": product_destination_id,
        }
        if self.login_account_id is not None:
            entry["loginAccount"] = {
                "accountType": self.login_account_type,
                "accountId": self.login_account_id,
            }
        return entry

    def consent(self) -> dict[str, str]:
        """The request-level `consent` (empty when none is configured)."""
        found = {"adUserData": self.ad_user_data_consent}
        found["adPersonalization"] = self.ad_personalization_consent
        return {key: value for key, value in found.items() if value is not None}


class _Response:
    """A google-auth transport response over an httpx one."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = dict(response.headers)
        self.data = response.content


class _Transport:
    """The google-auth transport: token requests through the destination's httpx client."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        from google.auth.exceptions import TransportError

        try:
            response = self.client.request(
                method, url, content=body, headers=dict(headers or {}), timeout=timeout or 30
            )
        except httpx.HTTPError as exc:
            failure = f"token request failed ({type(exc).__name__})"
            raise TransportError(failure) from None  # type: ignore[no-untyped-call]
        return _Response(response)


class GoogleSession:
    """Bearer tokens for one destination's calls, refreshed before they expire."""

    def __init__(self, config: GoogleConfig, context: DestinationContext) -> None:
        self.config = config
        self.context = context
        self._credentials: Any = None

    def headers(self) -> dict[str, str]:
        """`Authorization` and `Content-Type` for one API call."""
        credentials = self._load()
        if not credentials.valid:
            self._refresh(credentials)
        return {
            "Authorization": f"Bearer {credentials.token}",
            "Content-Type": "application/json",
        }

    def invalidate(self) -> None:
        """Forget the access token (the API refused it): the next call refreshes first."""
        if self._credentials is not None:
            self._credentials.token = None

    def _refresh(self, credentials: Any) -> None:
        from google.auth.exceptions import RefreshError, TransportError

        what = f"{self.context.name}: OAuth token refresh"
        try:
            credentials.refresh(_Transport(self.context.http))
        except TransportError as exc:
            raise TransientError(f"{what} failed: {exc}") from None
        except RefreshError as exc:
            if getattr(exc, "retryable", False):
                raise TransientError(f"{what} failed: {_short(exc)}") from None
            raise AuthError(
                f"{what} refused: {_short(exc)} — check the credentials and their access to "
                f"scope {SCOPE}"
            ) from None

    def _load(self) -> Any:
        if self._credentials is not None:
            return self._credentials
        try:
            from google.oauth2 import credentials as user
            from google.oauth2 import service_account
        except ImportError:
            raise AuthError(
                "google-auth is not installed: pip install 'google-auth>=2.30'"
            ) from None
        config = self.config
        if config.service_account_file is not None:
            path = Path(config.service_account_file)
            if not path.is_absolute():
                path = self.context.project_dir / path
            try:
                found = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    str(path), scopes=[SCOPE]
                )
            except (OSError, ValueError, KeyError) as exc:
                raise AuthError(
                    f"{self.context.name}: cannot read service_account_file {path.name}: "
                    f"{type(exc).__name__}"
                ) from None
            if config.token_uri is not None:
                found = found.with_token_uri(config.token_uri)  # type: ignore[no-untyped-call]
        else:
            if config.refresh_token is None or config.client_secret is None:
                raise AuthError(f"{self.context.name}: no credentials configured")
            found = user.Credentials(  # type: ignore[no-untyped-call]
                token=None,
                refresh_token=config.refresh_token.get_secret_value(),
                token_uri=config.token_uri or TOKEN_URI,
                client_id=config.client_id,
                client_secret=config.client_secret.get_secret_value(),
                scopes=[SCOPE],
            )
        self._credentials = found
        return found


def _short(exc: Exception) -> str:
    """The first line of an auth library error, cut short (it may quote the token response)."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.splitlines()[0][:200] if text else type(exc).__name__
