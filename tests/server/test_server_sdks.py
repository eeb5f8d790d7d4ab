"""Four server SDKs, unchanged and with their defaults, pointed at `cohortsync serve`.

`segment-analytics-python` and `rudder-sdk-python` (PyPI) run in this process, one after the
other; `@segment/analytics-node` and `@rudderstack/rudder-sdk-node` (npm, pinned in
tests/server/browser/package.json and installed by .ci/run into the browser cache folder) run
meanwhile, each in its own `node` through tests/server/sdks/node_client.mjs. All send to one
`cohortsync serve` process, each with its own source's write key and the same shop traffic under
its own ids: identify, track, page, group, alias for USERS users, one track per user dated days in
the past by an explicit `timestamp`. Every test below holds for each SDK: it reports no error, and
every event it sent is stored exactly once, as sent (the store is read once the server stopped).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cohortsync.engine import Engine
from cohortsync.events.timestamps import now_micros, parse_timestamp
from tests.conftest import free_port, wait_until_healthy

USERS = 300
SECOND_US = 1_000_000
COHORTSYNC = Path(sys.executable).with_name("cohortsync")
NODE_CLIENT = Path(__file__).with_name("sdks") / "node_client.mjs"
# The folder .ci/run installs tests/server/browser/package.json into (test_browser_sdks.py too).
CACHE = Path(
    os.environ.get("COHORTSYNC_BROWSER_CACHE", Path.home() / ".cache" / "cohortsync-browser")
)
NODE_PACKAGES = {
    "segment-node": "@segment/analytics-node",
    "rudder-node": "@rudderstack/rudder-sdk-node",
}
SDKS = ["segment-python", "rudder-python", "segment-node", "rudder-node"]
SOURCES = {sdk: sdk.replace("-", "_") for sdk in SDKS}
WRITE_KEYS = {sdk: f"wk_{SOURCES[sdk]}_0123456789" for sdk in SDKS}
PROJECT_YAML = "store: .cohortsync/store.duckdb\nidentity:\n  primary: email\nsources:\n" + "".join(
    f"  {SOURCES[sdk]}:\n    write_key: {WRITE_KEYS[sdk]}\n" for sdk in SDKS
)
# The loggers the Python SDKs report through (backoff logs each retry at INFO).
SDK_LOGGERS = {"segment": logging.WARNING, "rudderstack": logging.WARNING, "backoff": logging.INFO}
# Python keyword of each field of a call.
PYTHON_ARGUMENTS = {
    "userId": "user_id",
    "anonymousId": "anonymous_id",
    "previousId": "previous_id",
    "groupId": "group_id",
    "event": "event",
    "name": "name",
    "properties": "properties",
    "traits": "traits",
    "timestamp": "timestamp",
}


def email_of(sdk: str, i: int) -> str | None:
    """Two users in three identify with an email; some write it in mixed case."""
    if i % 3 == 0:
        return None
    return f"{sdk}.User{i}@Example.com" if i % 2 else f"{sdk}.user{i}@example.com"


def iso_millis(moment: datetime) -> str:
    """ISO-8601 in UTC to the millisecond, as JavaScript's Date writes it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def user(sdk: str, i: int) -> str:
    return f"{sdk}-user-{i}"


def visitor(sdk: str, i: int) -> str:
    return f"{sdk}-anon-{i}"


def shop_calls(sdk: str, history_start: datetime) -> list[dict[str, Any]]:
    """10 calls for each of USERS users, interleaved across users, as Segment-spec fields."""
    per_user: list[Callable[[int], dict[str, Any]]] = [
        lambda i: {"type": "page", "anonymousId": visitor(sdk, i), "name": "Home",
                   "properties": {"path": "/"}},
        lambda i: {"type": "track", "anonymousId": visitor(sdk, i), "event": "Product Viewed",
                   "properties": {"sku": f"sku-{i % 7}"}},
        lambda i: {"type": "identify", "userId": user(sdk, i),
                   "traits": {"name": f"User {i}",
                              **({"email": email} if (email := email_of(sdk, i)) else {})}},
        lambda i: {"type": "alias", "previousId": visitor(sdk, i), "userId": user(sdk, i)},
        lambda i: {"type": "group", "userId": user(sdk, i), "groupId": f"org-{i % 20}",
                   "traits": {"plan": "pro"}},
        lambda i: {"type": "track", "userId": user(sdk, i), "event": "Account Created",
                   "timestamp": iso_millis(history_start - timedelta(minutes=i))},
        lambda i: {"type": "track", "userId": user(sdk, i), "event": "Product Added",
                   "properties": {"qty": 1}},
        lambda i: {"type": "page", "userId": user(sdk, i), "name": "Cart"},
        lambda i: {"type": "track", "userId": user(sdk, i), "event": "Order Completed",
                   "properties": {"revenue": i + 0.5}},
        lambda i: {"type": "page", "userId": user(sdk, i), "name": "Thanks"},
    ]  # fmt: skip
    return [call(i) for call in per_user for i in range(USERS)]


@dataclass
class Delivery:
    """What an SDK said about its calls: each one's messageId and type, and its reports."""

    sent: list[tuple[str, str]]
    confirmed: int  # calls the SDK reports delivered
    errors: list[str]  # errors, retries and warnings the SDK reported or logged
    started_us: int
    finished_us: int


class _LogCapture(logging.Handler):
    def __init__(self, errors: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= SDK_LOGGERS.get(record.name.partition(".")[0], logging.WARNING):
            self.errors.append(f"{record.name} {record.levelname}: {record.getMessage()}")


@contextmanager
def sdk_logs(errors: list[str]) -> Iterator[None]:
    """Record what the Python SDKs log at SDK_LOGGERS' levels into `errors`."""
    handler = _LogCapture(errors)
    saved = {}
    for name, level in SDK_LOGGERS.items():
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(min(level, logger.getEffectiveLevel()))
        logger.addHandler(handler)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).setLevel(level)


def send_python(sdk: str, url: str, calls: list[dict[str, Any]]) -> Delivery:
    """Replay `calls` through a Python SDK's Client (background thread, defaults), then flush.

    Besides `on_error` and the logs, every HTTP answer but 200 is reported: the SDKs retry
    those quietly (segment-analytics-python logs its retries at DEBUG only).
    """
    if sdk == "segment-python":
        from segment.analytics import request as transport
        from segment.analytics.client import Client
    else:
        from rudderstack.analytics import request as transport  # type: ignore[import-untyped]
        from rudderstack.analytics.client import Client  # type: ignore[import-untyped,no-redef]
    errors: list[str] = []
    failed: list[int] = []

    def on_error(error: Exception, batch: list[dict[str, Any]]) -> None:
        errors.append(f"on_error: {error!r} for {len(batch)} messages")
        failed.append(len(batch))

    def on_response(response: Any, *args: Any, **kwargs: Any) -> None:
        if response.status_code != 200:
            errors.append(f"HTTP {response.status_code} from {response.url}: {response.text}")

    sent: list[tuple[str, str]] = []
    started = now_micros()
    hooks = transport._session.hooks["response"]  # the session each SDK posts with
    hooks.append(on_response)
    try:
        with sdk_logs(errors):
            client = Client(write_key=WRITE_KEYS[sdk], host=url, on_error=on_error)
            for call in calls:
                arguments = {PYTHON_ARGUMENTS[k]: v for k, v in call.items() if k != "type"}
                if "timestamp" in arguments:
                    arguments["timestamp"] = datetime.fromisoformat(arguments["timestamp"])
                queued, message = getattr(client, call["type"])(**arguments)
                if not queued:
                    errors.append(f"the client's queue refused message {len(sent)}")
                sent.append((message["messageId"], message["type"]))
            client.flush()
            client.shutdown()
    finally:
        hooks.remove(on_response)
    return Delivery(sent, len(sent) - sum(failed), errors, started, now_micros())


def node_missing(sdk: str) -> str | None:
    """Why a Node SDK cannot run here (None: it can)."""
    if shutil.which("node") is None:
        return "node is missing (apt-get install nodejs)"
    if not (CACHE / "node_modules" / NODE_PACKAGES[sdk] / "package.json").is_file():
        return (
            f"{NODE_PACKAGES[sdk]} missing in {CACHE} "
            "(npm ci there with tests/server/browser/package.json; .ci/run does)"
        )
    return None


class NodeSender:
    """A Node SDK replaying `calls` in its own `node` process; what it prints counts as reports
    (the SDKs log errors and retries to the console)."""

    def __init__(self, sdk: str, url: str, calls: list[dict[str, Any]], folder: Path) -> None:
        self.sdk = sdk
        self.result_file = folder / f"{sdk}-result.json"
        self.output_file = folder / f"{sdk}-output.txt"
        calls_file = folder / f"{sdk}-calls.json"
        calls_file.write_text(json.dumps(calls), encoding="utf-8")
        self.started = now_micros()
        with self.output_file.open("wb") as output:
            self.process = subprocess.Popen(
                ["node", str(NODE_CLIENT), sdk, str(CACHE / "node_modules"), url,
                 WRITE_KEYS[sdk], str(calls_file), str(self.result_file)],
                stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def finish(self) -> Delivery:
        """Wait (60 s at most) for the SDK to flush and exit; what it reported."""
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finished = now_micros()
        output = self.output_file.read_text(encoding="utf-8", errors="replace")
        said = [f"node: {line}" for line in output.splitlines() if line.strip()]
        if self.process.returncode != 0:
            failed = f"node exited with {self.process.returncode}"
            return Delivery([], 0, [failed, *said], self.started, finished)
        result = json.loads(self.result_file.read_text(encoding="utf-8"))
        # An event whose callback never came is a hole ("", ""): the tests then fail on it.
        sent = [(str(e[0]), str(e[1])) if e else ("", "") for e in result["sent"]]
        return Delivery(sent, result["confirmed"], result["errors"] + said, self.started, finished)


@contextmanager
def cohortsync_serve(project: Path) -> Iterator[str]:
    """`cohortsync serve` on a free port for the project; stopped (SIGTERM) on leaving."""
    port = free_port()
    server = subprocess.Popen(
        [str(COHORTSYNC), "serve", "--project", str(project), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, 30, server)
        yield url
    finally:
        server.terminate()
        _, said = server.communicate(timeout=20)
    assert b"Traceback" not in said and b"ERROR" not in said, said.decode(errors="replace")


@dataclass
class Served:
    """Every available SDK's traffic, and the store opened after the server stopped."""

    engine: Engine
    calls: dict[str, list[dict[str, Any]]]
    deliveries: dict[str, Delivery]
    missing: dict[str, str]  # SDK: why it could not run here


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Each SDK's traffic into one `cohortsync serve` (the Node ones only where installed)."""
    project = tmp_path_factory.mktemp("sdks")
    (project / "cohortsync.yml").write_text(PROJECT_YAML, encoding="utf-8")
    history_start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    calls = {sdk: shop_calls(sdk, history_start) for sdk in SDKS}
    missing = {sdk: why for sdk in NODE_PACKAGES if (why := node_missing(sdk))}
    deliveries: dict[str, Delivery] = {}
    with cohortsync_serve(project) as url:
        node = [
            NodeSender(sdk, url, calls[sdk], project) for sdk in NODE_PACKAGES if sdk not in missing
        ]
        try:
            for sdk in ("segment-python", "rudder-python"):
                deliveries[sdk] = send_python(sdk, url, calls[sdk])
        finally:
            for sender in node:
                deliveries[sender.sdk] = sender.finish()
    with Engine.open(project) as engine:
        yield Served(engine, calls, deliveries, missing)


@dataclass
class SdkRun:
    """One SDK's calls, what it reported, and the store's rows of its source."""

    sdk: str
    calls: list[dict[str, Any]]
    delivery: Delivery
    engine: Engine

    def rows(self, columns: str, tail: str = "") -> list[tuple[Any, ...]]:
        """`SELECT columns FROM events` of this SDK's source (`tail`: GROUP BY …)."""
        return self.engine.store.query(  # type: ignore[attr-defined,no-any-return]
            f"SELECT {columns} FROM events WHERE source = ? {tail}", [SOURCES[self.sdk]]
        )


@pytest.fixture(params=SDKS)
def run(request: pytest.FixtureRequest, served: Served) -> SdkRun:
    sdk: str = request.param
    if sdk in served.missing:
        if os.environ.get("COHORTSYNC_BROWSER_REQUIRED"):  # set by .ci/run, which installs all
            pytest.fail(served.missing[sdk])
        pytest.skip(served.missing[sdk])
    return SdkRun(sdk, served.calls[sdk], served.deliveries[sdk], served.engine)


def test_sdk_reports_no_error_and_confirms_every_call(run: SdkRun) -> None:
    assert run.delivery.errors == []
    assert run.delivery.confirmed == len(run.calls) == 10 * USERS
    ids = [message_id for message_id, _ in run.delivery.sent]
    assert len(ids) == len(set(ids)) == len(run.calls)
    assert [kind for _, kind in run.delivery.sent] == [call["type"] for call in run.calls]


def test_sdk_events_are_all_stored_exactly_once_as_sent(run: SdkRun) -> None:
    sent = dict(run.delivery.sent)
    [(total, distinct)] = run.rows("count(*), count(DISTINCT message_id)")
    assert (total, distinct) == (len(run.calls), len(run.calls))
    stored = {
        row[0]: row[1:]
        for row in run.rows(
            "message_id, type, user_id, anonymous_id, previous_id, group_id, "
            "coalesce(event, name), properties"
        )
    }
    assert stored.keys() == sent.keys()
    for (message_id, _), call in zip(run.delivery.sent, run.calls, strict=True):
        kind, user_id, anonymous_id, previous_id, group_id, label, properties = stored[message_id]
        assert (kind, user_id, anonymous_id, previous_id, group_id, label) == (
            call["type"], call.get("userId"), call.get("anonymousId"), call.get("previousId"),
            call.get("groupId"), call.get("event") or call.get("name"),
        ), call  # fmt: skip
        for key, value in call.get("properties", {}).items():
            assert json.loads(properties)[key] == value, call
    by_type = dict(run.rows("type, count(*)", "GROUP BY type"))
    assert by_type == {"page": 900, "track": 1_200, "identify": 300, "alias": 300, "group": 300}
    assert run.engine.stats()["quarantined"]["total"] == 0
    [(sent_ats,)] = run.rows("count(DISTINCT sent_at)")  # one per request, or more
    assert sent_ats >= 10, "the SDK should have sent several batches"


def test_sdk_event_times_are_kept_and_an_explicit_timestamp_wins(run: SdkRun) -> None:
    explicit = {
        message_id: parse_timestamp(call["timestamp"])
        for (message_id, _), call in zip(run.delivery.sent, run.calls, strict=True)
        if "timestamp" in call
    }
    assert len(explicit) == USERS
    window = (run.delivery.started_us - SECOND_US, run.delivery.finished_us + SECOND_US)
    for message_id, original, corrected in run.rows(
        'message_id, epoch_us(original_timestamp), epoch_us("timestamp")'
    ):
        if message_id in explicit:
            assert original == explicit[message_id], message_id
        else:
            assert window[0] <= original <= window[1], message_id
        assert abs(corrected - original) < 10 * SECOND_US, message_id


def test_sdk_identify_and_alias_resolve_profiles(run: SdkRun) -> None:
    for i in range(0, USERS, 25):
        by_user = run.engine.find_profile(f"user_id:{user(run.sdk, i)}")
        by_visitor = run.engine.find_profile(f"anonymous_id:{visitor(run.sdk, i)}")
        assert by_visitor.profile_id == by_user.profile_id, i
        assert by_user.traits.get("name") == f"User {i}", i
        if email := email_of(run.sdk, i):
            assert run.engine.find_profile(f"email:{email}").profile_id == by_user.profile_id
