"""No payload makes the ingest API answer 5xx, and every message sent is accounted for.

Hypothesis builds Segment messages, mutates them (wrong types, huge strings, deep nesting,
bad timestamps, NUL bytes, giant arrays, odd numbers, non-objects) and then their bodies
(truncated JSON, duplicated keys, stray and non-UTF-8 bytes, broken gzip, wrong content types
and encodings, every way of sending a write key, or a wrong one), and posts them to every
route of one real `cohortsync serve`, gzip on and off. Each answer must be 2xx or 4xx. At the
end the server is still healthy, and the store holds exactly what the answers promised:
`stats` events + quarantined rows == the messages of 2xx answers plus the single calls
refused as invalid messages (those are quarantined too), each found there once by a unique
marker; every other 4xx refused its whole request. HOSTILE_EXAMPLES sets the number of
payloads (default 3,000, spread over the routes; 200,000 for a long run); HOSTILE_THREADS how
many routes are posted at once (default 3: generating one request overlaps the server's work
on others).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import itertools
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohortsync.engine import Engine
from cohortsync.events.models import MAX_MESSAGE_BYTES
from tests.conftest import WRITE_KEY
from tests.server.serve_process import serving

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "3000"))
KINDS = ("track", "identify", "page", "screen", "group", "alias")
ROUTES = (*KINDS, "batch")
THREADS = int(os.environ.get("HOSTILE_THREADS", "3"))
# Codes that refuse a whole request; any other 4xx of a single call is a quarantined message.
REQUEST_CODES = {"invalid_json", "invalid_write_key", "unsupported_encoding", "invalid_gzip"}

# Pools of telling values: one draw picks one, which keeps 20,000 examples quick to generate;
# free text comes in where a string is expected.
VALUES = st.sampled_from(
    [None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 1.5, -0.0, 1e308, 5e-324, 1e15,
     "", " ", "Order Completed", "\x00", "a\x00b", "\u2028\u2029", "\U0001f600" * 20,
     "\u202egnp.exe", "\\", '"', "\r\n", "2026-05-01T12:00:00Z", "Ada@Example.com",
     "+1 650 555 1212", [], [1, "a", None], [[[[]]]], {}, {"a": 1}, {"": ""}, {"\x00": "\x00"},
     {"a": {"b": [1, {"c": None}]}}, {"email": "Ada@Example.com", "phone": "(650) 555-1212"}]
)  # fmt: skip
IDS = st.sampled_from(
    ["u1", "ada@example.com", " ", "0", "\x00", "\U0001f600", "x" * 1024, "x" * 1025, 0, -5,
     2**63 - 1, 1.5, True, [], {}, None, ""]
) | st.text(min_size=1, max_size=6)  # fmt: skip
OBJECTS = st.sampled_from(
    [{}, {"revenue": 42.5, "currency": "USD"}, {"email": "Ada@Example.com", "plan": "pro"},
     {"phone": "(650) 555-1212", "name": "Ada"}, {"traits": {"email": "a@b.co"}, "ip": "::1"},
     {"items": [{"sku": "a", "price": 1}] * 3}, {"": None, "\x00": [], "\U0001f600": {}},
     {"All": False, "Mixpanel": True}]
)  # fmt: skip
TIMES = st.sampled_from(
    ["2026-05-01T12:00:00Z", "2026-05-01T12:00:00.123456+02:00", "2026-05-01 12:00:00",
     "1970-01-02T00:00:00Z", "2199-12-30T23:59:59Z", "2026-05-01"]
)  # fmt: skip
BAD_TIMES = st.sampled_from(
    ["", "yesterday", "2024-13-45T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
     "1969-12-31T23:59:59Z", "2024-05-01T25:61:00", "2026-05-01T12:00:00+25:00", 0, 1.5e9, [],
     {}, "\x00"]
)  # fmt: skip
FIELDS = st.sampled_from(
    ["type", "userId", "anonymousId", "event", "messageId", "groupId", "previousId", "name",
     "properties", "traits", "context", "integrations", "timestamp", "sentAt"]
)  # fmt: skip
STRING_FIELDS = st.sampled_from(
    ["userId", "anonymousId", "event", "groupId", "previousId", "name", "messageId"]
)
SPOTS = st.integers(0, 999).map(lambda permille: permille / 1000)  # where to break a body
DEPTHS = st.sampled_from([62, 63, 64, 65, 100, 253, 254, 255, 960, 1000, 1020])
_counter = itertools.count()
_RUN = os.urandom(4).hex()


@dataclass
class Ledger:
    """What the answers promised, summed over every request."""

    sent: int = 0
    kept: int = 0  # stored as events or quarantined rows
    refused: int = 0  # in requests refused whole with 4xx
    # each message kept, by its `n`: where it went and how it began (to explain a mismatch)
    markers: dict[int, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Request:
    """One request to send, and how many messages it carries."""

    route: str
    body: bytes
    headers: dict[str, str]
    messages: int
    plain: bytes  # the body before compression: what the server parses
    markers: tuple[int, ...]  # the `n` of each message in the body
    garbled: bool  # a byte of the gzip stream flipped: it may inflate to more than `plain`

    def summary(self) -> str:
        """The route, headers and start of the body, to tell which request it was."""
        return f"{self.route} {self.headers} {self.plain[:300]!r}"


def nested(depth: int, objects: bool) -> orjson.Fragment:
    """Lists or objects nested `depth` levels, as ready JSON (Python's encoders recurse)."""
    if objects:
        return orjson.Fragment(b'{"d":' * depth + b"1" + b"}" * depth)
    return orjson.Fragment(b"[" * depth + b"1" + b"]" * depth)


def draw_message(draw: st.DrawFn, kind: str, markers: list[int]) -> Any:
    """One message of `kind`, valid or mutated once. Each is unique (`n`, `messageId`), so
    deduplication never merges two of them; `n` is appended to `markers`."""
    n = next(_counter)
    markers.append(n)
    message: dict[str, Any] = {"n": n, "type": kind, "messageId": f"h-{_RUN}-{n}"}
    shape = draw(st.integers(0, 63))  # which optional parts the message has, one bit each
    if shape & 1 or kind == "alias":
        message["userId"] = draw(IDS)
    if shape & 2 or "userId" not in message:
        message["anonymousId"] = draw(IDS)
    required = {"track": "event", "group": "groupId", "alias": "previousId"}.get(kind)
    if required:
        message[required] = draw(IDS)
    for bit, part in ((4, "properties"), (8, "traits")):
        if shape & bit:
            message[part] = dict(draw(OBJECTS))  # a copy: mutations below add keys
    # `n` also in the context, which is stored: it names the event if messageId is dropped
    message["context"] = {**(draw(OBJECTS) if shape & 16 else {}), "n": n}
    if shape & 32:
        message["timestamp"] = draw(TIMES)
    how = draw(st.integers(0, 13))
    if how == 1:  # a wrong type (a string messageId of the right length would still be valid)
        part, value = draw(FIELDS), draw(VALUES)
        message[part] = [value] if part == "messageId" and isinstance(value, str) else value
    elif how == 2:
        message.pop(draw(FIELDS), None)
    elif how == 3:
        size = draw(st.sampled_from([1_000, 20_000, MAX_MESSAGE_BYTES - 200, 33_000, 40_000]))
        message[draw(st.sampled_from(["event", "userId", "name", "big"]))] = "x" * size
    elif how == 4:
        part = draw(st.sampled_from(["properties", "traits", "context", "integrations", "x"]))
        message[part] = {"deep": nested(draw(DEPTHS), draw(st.booleans()))}
    elif how == 5:
        part = draw(st.sampled_from(["timestamp", "originalTimestamp", "sentAt", "receivedAt"]))
        message[part] = draw(BAD_TIMES)
    elif how == 6:  # a NUL byte or another odd character in an id and in a property name
        odd = draw(st.sampled_from(["\x00", "\u2028", "\U0001f600", "\\", '"', "\r\n", "\ufeff"]))
        message[draw(STRING_FIELDS)] = f"{odd}{n}{odd}"
        message.setdefault("properties", {})[odd] = odd
    elif how == 7:
        length = draw(st.sampled_from([100, 3_000, 10_000]))
        message.setdefault("properties", {})["items"] = list(range(length))
    elif how == 8:
        message.setdefault("properties", {})["number"] = draw(VALUES)
    elif how == 9:  # not an object; never a bare number, which truncated is another number
        return draw(st.sampled_from([[n, "junk"], f"junk {n}", [n, [n, {"a": n}]]]))
    elif how == 10:
        message["messageId"] = draw(st.sampled_from(["", "m" * 101]))
    elif how == 11:
        message["type"] = draw(st.sampled_from(["Track", "", "delete", "batch"]) | st.text())
    return message


@st.composite
def requests(draw: st.DrawFn, route: str) -> Request:
    """A request to `route`, its body and headers possibly mutated too."""
    markers: list[int] = []
    # Most requests get past the transport, so that most payloads reach validation.
    auth = draw(
        st.sampled_from(["basic"] * 10 + ["body"] * 3 + ["none", "wrong", "malformed", "bearer"])
    )
    if route == "batch":
        size = draw(st.sampled_from([0, 1, 1, 2, 2, 3, 5]))
        kinds = st.sampled_from(KINDS)
        batch: Any = [draw_message(draw, draw(kinds), markers) for _ in range(size)]
        body: Any = {"batch": batch}
        extra = draw(st.integers(0, 19))
        if extra == 0:  # not a list: quarantined items would lack the marker that keeps them apart
            value = draw(VALUES)
            body["batch"] = {"batch": value} if isinstance(value, list) else value
            size = 1
        elif extra == 1:  # past 2,500 messages, each valid
            body["batch"] = [{"type": "track", "userId": "u1", "event": "E"}] * 2_501
            size = 2_501
        elif extra == 2:
            body["sentAt"] = draw(BAD_TIMES | TIMES)
        elif extra == 3:
            depth = draw(st.sampled_from([62, 63, 64, 300]))
            body["context"] = {"deep": nested(depth, draw(st.booleans()))}
        elif extra == 4:
            body[draw(st.sampled_from(["context", "integrations"]))] = draw(VALUES | OBJECTS)
    else:
        body, size = draw_message(draw, route, markers), 1
    if auth == "body" and isinstance(body, dict):
        body["writeKey"] = WRITE_KEY
    plain = corrupt(orjson.dumps(body), draw(st.integers(0, 39)), draw(SPOTS))
    headers = {"content-type": draw(CONTENT_TYPES)}
    if auth in AUTHORIZATIONS:
        headers["authorization"] = AUTHORIZATIONS[auth]
    if auth == "malformed":
        headers["authorization"] = draw(st.sampled_from(["Basic !!!", "Basic", "Basic =="]))
    sent, encoding, garbled = plain, draw(ENCODINGS), False
    if encoding.lower() == "gzip":
        sent = gzip.compress(plain, compresslevel=1)
        # the spot as a fraction: a length-bound draw would change with the unique markers
        broken, spot = draw(st.integers(0, 19)), int(draw(SPOTS) * len(sent))
        if broken == 0:
            sent = sent[:spot]
        elif broken == 1:
            sent = sent[:spot] + bytes([sent[spot] ^ 0xFF]) + sent[spot + 1 :]
            garbled = True
        elif broken == 2:
            sent = plain  # says gzip, is not
        elif broken == 3:
            sent += b"trailing"
    if encoding:
        headers["content-encoding"] = encoding
    return Request(f"/v1/{route}", sent, headers, size, plain, tuple(markers), garbled)


CONTENT_TYPES = st.sampled_from(
    ["application/json"] * 4
    + ["text/plain", "application/json; charset=latin-1", "multipart/form-data; boundary=x", ""]
)
ENCODINGS = st.sampled_from(["", "", "", "", "gzip", "gzip", "gzip", "GZIP", "x-gzip", "br"])
AUTHORIZATIONS = {
    "basic": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
    "wrong": "Basic " + base64.b64encode(b"wk_wrong:").decode(),
    "bearer": "Bearer " + WRITE_KEY,  # not a write key: the body must carry one
}


def corrupt(body: bytes, how: int, where: float) -> bytes:
    """`body` left alone, or broken at the byte level (`where` picks the spot, 0 ≤ where < 1)."""
    spot = int(len(body) * where)
    prefix = {
        3: b'{"userId":"dup",',  # a key twice: the last one counts
        4: b'{"bad":"\\ud800",',  # a lone surrogate
        5: b'{"big":123456789012345678901234567890,',
        6: b'{"nan":NaN,',
        7: b'{"type":"track","type":"identify",',
    }.get(how)
    if how == 1:
        return body[:spot]
    if how == 2:
        return (
            body[:spot] + (b"\x00", b"\xff", b"\xc3\x28", b"\xed\xa0\x80")[spot % 4] + body[spot:]
        )
    if prefix is not None and body.startswith(b"{") and len(body) > 2:
        return prefix + body[1:]
    if how == 8:
        return body + b"}"
    if how == 9:
        return b""
    return body


def account(request: Request, response: httpx.Response, ledger: Ledger) -> None:
    """Check one answer, and add what it promised to `ledger`."""
    status = response.status_code
    assert status < 500, (status, response.text[:300], request.headers, request.body[:300])
    answer = response.json()
    if 200 <= status < 300:
        assert answer["success"] is True, answer
        count = 1
        if request.route == "/v1/batch":  # what the server read (orjson: the last key counts)
            count = len(orjson.loads(request.plain)["batch"])
            quarantined = answer.get("quarantined", [])
            assert answer.get("accepted", count - len(quarantined)) + len(quarantined) == count
        ledger.sent += count
        ledger.kept += count
        if count == len(request.markers):
            ledger.markers.update(dict.fromkeys(request.markers, request.summary()))
        return
    assert 400 <= status < 500 and answer["success"] is False, answer
    assert isinstance(answer["code"], str) and isinstance(answer["message"], str), answer
    ledger.sent += request.messages
    refused_whole = (
        request.route == "/v1/batch"
        or status != 400
        or answer["code"] in REQUEST_CODES
        # too large before parsing; past the limit only once re-encoded, it is a message fault
        or (
            answer["code"] == "message_too_large"
            and (len(request.plain) > MAX_MESSAGE_BYTES or request.garbled)
        )
    )
    if refused_whole:
        ledger.refused += request.messages
    else:
        ledger.kept += 1  # a single call refused as an invalid message is quarantined
        ledger.markers.update(dict.fromkeys(request.markers, request.summary()))


def post_hostile_requests(url: str, route: str, ledger: Ledger) -> None:
    """Hypothesis posts its share of the examples to `route`, one request at a time."""
    with httpx.Client(base_url=url, timeout=30) as client:

        @settings(
            max_examples=-(-EXAMPLES // len(ROUTES)),
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(request=requests(route))
        def post(request: Request) -> None:
            response = client.post(request.route, content=request.body, headers=request.headers)
            account(request, response, ledger)

        post()


def test_no_payload_gets_a_5xx_and_every_message_is_accounted_for(
    project_dir: Path, tmp_path: Path
) -> None:
    ledgers = {route: Ledger() for route in ROUTES}
    log = tmp_path / "serve.log"
    with serving(project_dir, log) as served:
        with ThreadPoolExecutor(THREADS) as pool:
            runs = [
                pool.submit(post_hostile_requests, served.url, route, ledgers[route])
                for route in ROUTES
            ]
            for run in runs:
                run.result()
        assert httpx.get(f"{served.url}/health").status_code == 200
        assert served.process.poll() is None
    assert "Traceback" not in log.read_text()
    with Engine.open(project_dir) as engine:
        stats = engine.stats()
        found = stored_markers(engine)
    kept = sum(ledger.kept for ledger in ledgers.values())
    refused = sum(ledger.refused for ledger in ledgers.values())
    sent = sum(ledger.sent for ledger in ledgers.values())
    promised = {n: said for ledger in ledgers.values() for n, said in ledger.markers.items()}
    missing = [promised[n] for n in sorted(set(promised) - set(found))]
    extra = sorted((found - Counter(promised.keys())).elements())
    assert stats["events"]["total"] + stats["quarantined"]["total"] == kept, (
        f"{stats}; {ledgers}; not stored: {missing[:5]}; unexpected: {extra[:20]}"
    )
    assert not missing and not extra, (missing[:5], extra[:20])  # each promised one, once
    assert kept + refused == sent


def stored_markers(engine: Engine) -> Counter[int]:
    """The `n` of each stored event (its messageId or context) and quarantined row (payload)."""
    query = engine.store.query  # type: ignore[attr-defined]
    found: Counter[int] = Counter()
    for message_id, context in query("SELECT message_id, context FROM events"):
        if message_id.startswith(f"h-{_RUN}-"):
            found[int(message_id.rsplit("-", 1)[1])] += 1
            continue
        stored = orjson.loads(context or "{}")
        if isinstance(stored, dict) and isinstance(stored.get("n"), int):
            found[stored["n"]] += 1
    for (payload,) in query("SELECT payload FROM quarantine"):
        with contextlib.suppress(orjson.JSONDecodeError, ValueError):
            value = orjson.loads(payload)
            if isinstance(value, dict) and isinstance(value.get("n"), int):
                found[value["n"]] += 1
            elif isinstance(value, list) and value and isinstance(value[0], int):
                found[value[0]] += 1
            elif isinstance(value, str) and value.startswith("junk "):
                found[int(value[5:])] += 1
    return found
