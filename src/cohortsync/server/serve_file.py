"""`.cohortsync/serve.json`: where a running `serve` answers, so the CLI can go through it.

`serve` (the process holding the store) writes it once it listens, with a token made at each
start that its admin API accepts, and removes it at shutdown. Only the owner may read it (0600).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

SERVE_FILE = Path(".cohortsync") / "serve.json"
"""The file's place in the project folder."""

_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@dataclass(frozen=True)
class ServeInfo:
    """What a running `serve` tells the CLI: its URL, pid, store and this start's token."""

    url: str
    pid: int
    store: str
    token: str


def new_token() -> str:
    """A random admin token for this start of `serve` only."""
    return "serve_" + secrets.token_urlsafe(32)


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches `serve` at (any-address becomes loopback)."""
    host = _ANY_ADDRESS.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_path(root: Path) -> Path:
    """Where the project in `root` keeps its serve file."""
    return root / SERVE_FILE


def write_serve_file(root: Path, info: ServeInfo) -> None:
    """Write the serve file, readable by its owner only (it holds a token)."""
    path = serve_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps(
        {"url": info.url, "pid": info.pid, "store": info.store, "token": info.token},
        option=orjson.OPT_INDENT_2,
    )
    partial = path.with_name(f".serve.{os.getpid()}.json")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    os.chmod(partial, 0o600)  # whatever the umask
    partial.replace(path)  # readers never see half a file


def remove_serve_file(root: Path, pid: int) -> None:
    """Remove the serve file if it is still the one process `pid` wrote."""
    found = read_serve_file(root)
    if found is not None and found.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            serve_path(root).unlink()


def read_serve_file(root: Path) -> ServeInfo | None:
    """The serve file of the project in `root`; None when there is none or it is unreadable."""
    try:
        raw = orjson.loads(serve_path(root).read_bytes())
        return ServeInfo(str(raw["url"]), int(raw["pid"]), str(raw["store"]), str(raw["token"]))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def live_server(root: Path, store: str) -> ServeInfo | None:
    """The `serve` named by the serve file if its process is alive and holds `store`."""
    found = read_serve_file(root)
    if found is None or found.store != store or not _alive(found.pid):
        return None
    return found


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


@contextlib.contextmanager
def announced(root: Path, info: ServeInfo) -> Iterator[None]:
    """Remove the serve file when the block ends, however it ends (the caller writes it once
    listening, and removes it as shutdown begins)."""
    try:
        yield
    finally:
        remove_serve_file(root, info.pid)
