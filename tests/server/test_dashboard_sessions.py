"""Dashboard sessions: they end at their expiry or at logout, and only this server's pages
pass the origin check."""

from __future__ import annotations

from starlette.requests import Request

from cohortsync.server.ui.sessions import Session, Sessions, csrf_ok, same_origin


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(headers: dict[str, str]) -> Request:
    raw = [(k.encode(), v.encode()) for k, v in {"host": "127.0.0.1:8000", **headers}.items()]
    scope = {"type": "http", "method": "POST", "scheme": "http", "path": "/ui/x",
             "query_string": b"", "headers": raw, "server": ("127.0.0.1", 8000)}  # fmt: skip
    return Request(scope)


def test_a_session_ends_at_its_expiry() -> None:
    clock = Clock()
    sessions = Sessions(lifetime=60, clock=clock)
    opened = sessions.open()
    clock.now += 59
    assert sessions.find(opened.id) == opened
    clock.now += 1
    assert sessions.find(opened.id) is None


def test_logout_forgets_the_session_and_unknown_ids_open_nothing() -> None:
    sessions = Sessions()
    opened = sessions.open()
    assert sessions.find("made-up") is None and sessions.find(None) is None
    sessions.close(opened.id)
    assert sessions.find(opened.id) is None


def test_each_session_has_its_own_random_id_and_csrf_token() -> None:
    sessions = Sessions()
    one, two = sessions.open(), sessions.open()
    assert len({one.id, two.id, one.csrf, two.csrf}) == 4
    assert csrf_ok(one, one.csrf) and not csrf_ok(one, two.csrf) and not csrf_ok(one, "")


def test_only_this_servers_pages_pass_the_origin_check() -> None:
    assert same_origin(request({"origin": "http://127.0.0.1:8000"}))
    assert same_origin(request({"referer": "http://127.0.0.1:8000/ui/destinations/x"}))
    assert not same_origin(request({"origin": "https://evil.example"}))
    assert not same_origin(request({"origin": "http://127.0.0.1:8001"}))
    assert not same_origin(request({"origin": "null"}))
    assert not same_origin(request({}))  # a request that says nothing is refused


def test_a_session_never_outlives_an_expired_neighbour_sweep() -> None:
    clock = Clock()
    sessions = Sessions(lifetime=10, clock=clock)
    old = sessions.open()
    clock.now += 11
    fresh = sessions.open()  # opening sweeps the expired ones
    assert sessions.find(old.id) is None
    assert isinstance(sessions.find(fresh.id), Session)
