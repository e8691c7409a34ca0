"""Hostile HTTP against a real replica of the example model and the real gateway in front of it.

The replica is `python -m cortex_flows.serving` serving the iris example's model with the built-in sklearn
handler (as tests/integration/test_serving.py starts one); the gateway is the local backend's, on its own
loop thread, routing `/iris-classifier` to that replica (as tests/integration/test_gateway.py runs it).
Clients are raw sockets, so nothing between the test and the server fixes up what is sent.

Every answer must be 200 (for a valid prediction request) or a 4xx, or 503 when the replica sheds load:
never a 500 from a crash, never silence, never a server that stops answering. After every test a valid
request must still get its prediction, the replica's log must hold no traceback and the gateway must have
logged no error.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex_flows.backends.local.gateway import DEFAULT_MAX_BODY_BYTES as GATEWAY_MAX_BODY
from cortex_flows.backends.local.gateway import MAX_HEAD_BYTES
from cortex_flows.backends.local.routing import Upstream
from cortex_flows.serving.config import DEFAULT_MAX_BODY_BYTES as REPLICA_MAX_BODY
from tests.fuzz.settings import FUZZ
from tests.helpers import example_project
from tests.integration.test_gateway import GatewayThread
from tests.integration.test_serving import Replica, launch, stop

pytestmark = pytest.mark.timeout(120)

MAX_CONCURRENCY = 4  # the example's pod settings
MAX_QUEUE_LENGTH = 100
SETOSA = [5.1, 3.5, 1.4, 0.2]
VALID = json.dumps({"features": SETOSA}).encode()
ANSWER_TIMEOUT = 10.0  # no single answer may take longer: beyond it the server counts as hung


@dataclass
class Target:
    """A server under test: where it listens, the path prefix of the API, and its body limit."""

    name: str
    port: int
    prefix: bytes
    max_body: int

    def path(self, suffix: bytes = b"") -> bytes:
        path = self.prefix + suffix
        return path if path.startswith(b"/") else b"/" + path


# --- servers ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """The iris example's trained model behind the built-in sklearn handler, with the example's pod."""
    project = example_project(tmp_path_factory.mktemp("iris"))
    workdir = tmp_path_factory.mktemp("replica")
    config = {
        "api_name": "iris-classifier",
        "handler": {"type": "sklearn"},
        "model_path": "model.joblib",
        "project_dir": str(project),
        "cache_dir": str(workdir / "cache"),
        "max_concurrency": MAX_CONCURRENCY,
        "max_queue_length": MAX_QUEUE_LENGTH,
    }
    started = launch(config, workdir)
    try:
        started.wait_ready()
        yield started
    finally:
        stop(started)


class _Records(logging.Handler):
    """Keeps the records, so a test can tell which ones its own requests caused."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def gateway_records() -> Iterator[list[logging.LogRecord]]:
    """Warnings and errors the gateway logs: a crash in it shows up here, not as a failed request."""
    handler = _Records()
    logger = logging.getLogger("cortex_flows.gateway")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def gateway(replica: Replica, gateway_records: list[logging.LogRecord]) -> Iterator[GatewayThread]:
    port = int(replica.url.rsplit(":", 1)[1])
    with GatewayThread() as thread:
        thread.route("iris-classifier", "/iris-classifier", (100, [Upstream("127.0.0.1", port)]))
        yield thread


@pytest.fixture(params=["replica", "gateway"])
def target(
    request: pytest.FixtureRequest, replica: Replica, gateway_records: list[logging.LogRecord]
) -> Iterator[Target]:
    """Each test runs against the replica directly and through the gateway; it ends checking both."""
    log_start = replica.log.stat().st_size
    records_start = len(gateway_records)
    if request.param == "replica":
        chosen = Target("replica", int(replica.url.rsplit(":", 1)[1]), b"", REPLICA_MAX_BODY)
    else:
        gw: GatewayThread = request.getfixturevalue("gateway")
        chosen = Target("gateway", gw.port, b"/iris-classifier", GATEWAY_MAX_BODY)
    yield chosen
    assert replica.proc.poll() is None, "the replica died"
    assert_serves(chosen)
    with replica.log.open("rb") as log:
        log.seek(log_start)
        lines = log.read().decode("utf-8", "replace").splitlines()
    crashes = [i for i, line in enumerate(lines) if "Traceback" in line or " -> 500" in line]
    assert not crashes, "\n".join(lines[crashes[0] : crashes[0] + 3] + lines[-3:]) if crashes else ""
    problems = [r for r in gateway_records[records_start:] if r.exc_info or r.levelno >= logging.ERROR]
    assert not problems, [record.getMessage() for record in problems]


# --- clients ------------------------------------------------------------------------------------------------


def build(
    method: bytes,
    path: bytes,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    body: bytes | None = None,
    *,
    length: int | None = None,
    close: bool = True,
) -> bytes:
    """One HTTP/1.1 request as bytes; `length` overrides the Content-Length (a lie) when given."""
    lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: 127.0.0.1"]
    lines += [b"Connection: close"] if close else []
    lines += [b"%s: %s" % (name, value) for name, value in headers]
    if body is not None or length is not None:
        lines.append(b"Content-Length: %d" % (len(body or b"") if length is None else length))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def read_response(sock: socket.socket, method: bytes = b"POST") -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock, method=method.decode("latin-1"))
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def exchange(port: int, data: bytes, method: bytes = b"POST") -> tuple[int, dict[str, str], bytes]:
    """Send `data` on a new connection and read the answer; a server that answers early and stops reading
    (a 413) may make the rest of the send fail, which is fine as long as its answer arrives."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_response(sock, method)


def acceptable(status: int) -> bool:
    return status == 200 or 400 <= status < 500 or status == 503


def assert_serves(target: Target, within: float = 5.0) -> None:
    """A valid prediction request, on a connection of its own, still gets its prediction `within` seconds."""
    request = build(b"POST", target.path(), [(b"Content-Type", b"application/json")], VALID)
    with socket.create_connection(("127.0.0.1", target.port), timeout=within) as sock:
        sock.sendall(request)
        try:
            status, _, body = read_response(sock)
        except TimeoutError:
            pytest.fail(f"the {target.name} did not answer a valid request within {within:.0f}s")
    assert (status, json.loads(body)) == (200, {"prediction": "setosa"}), (target.name, body[:300])


# --- generated requests -------------------------------------------------------------------------------------

JSONISH = [None, b"application/json", b"Application/JSON", b"application/json; charset=utf-8",
           b"application/vnd.api+json", b"application/x-www-form-urlencoded"]  # fmt: skip
OTHER_TYPES = [b"text/plain", b"text/plain; charset=utf-8", b"text/plain; charset=latin-1",
               b"text/plain; charset=utf-16", b"text/csv; charset=idna", b"text/plain; charset=punycode",
               b"text/plain; charset=undefined", b"text/plain; charset=rot13", b"text/plain; charset=zlib",
               b"text/plain; charset=bogus", b'text/plain; charset="utf-8"', b"text/plain; charset=",
               b"text/html; charset=unicode_escape", b"application/octet-stream", b"multipart/form-data",
               b"application/xml", b"*/*", b";", b"application/json;;;", b"\xff\xfe"]  # fmt: skip
TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Headers the generated requests set themselves, or that change the framing (tested on their own below)
RESERVED = {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade", b"te",
            b"trailer", b"content-type", b"x-request-id"}  # fmt: skip
header_names = st.text(TOKEN, min_size=1, max_size=30).map(str.encode).filter(lambda n: n.lower() not in RESERVED)
header_values = st.binary(max_size=200).map(lambda v: bytes(b for b in v if b == 9 or 32 <= b != 127).strip())
feature_values = st.one_of(
    st.floats(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, -(10**400), 2**64, True, None, "1", "NaN", [], {}, [1.0]]),
    st.text(max_size=5),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity included: json.loads reads them


valid_bodies = st.lists(st.floats(-10, 10, allow_nan=False), min_size=4, max_size=4).map(
    lambda features: _json({"features": features})
)
bodies = st.one_of(
    json_values.map(_json),
    st.fixed_dictionaries({"features": st.lists(feature_values, max_size=6)}).map(_json),
    st.fixed_dictionaries({"instances": st.lists(st.lists(feature_values, max_size=6), max_size=4)}).map(_json),
    st.builds(lambda body, cut: body[:cut], valid_bodies, st.integers(0, 40)),
    st.builds(lambda depth, opener: opener * depth, st.integers(1, 200_000), st.sampled_from([b"[", b'{"a":'])),
    st.builds(lambda digits: b'{"features": [1%s, 1, 1, 1]}' % (b"0" * digits), st.integers(1, 6000)),
    st.builds(lambda codec: VALID.decode().encode(codec), st.sampled_from(["utf-16", "utf-32", "utf-8-sig"])),
    st.builds(lambda junk: b'{"features": ["%s", 1, 2, 3]}' % junk, st.binary(min_size=1, max_size=8)),
    st.binary(max_size=2000),
)


@dataclass
class Fuzzed:
    method: bytes
    suffix: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    valid: bool  # a request the model must answer with 200


@st.composite
def fuzzed_requests(draw: st.DrawFn) -> Fuzzed:
    """Half are valid predictions (with generated headers and queries around them), half anything at all."""
    valid = draw(st.booleans())
    methods = [b"POST"] if valid else [b"POST"] * 6 + [b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"]
    method = draw(st.sampled_from(methods))
    predict = [b"", b"/", b"/predict"]
    suffix = draw(st.sampled_from(predict if valid else [*predict, b"/predict/x", b"/healthz", b"/nope", b"/%ff%00"]))
    if draw(st.booleans()):
        suffix += b"?" + draw(st.binary(max_size=40).map(lambda q: bytes(b for b in q if 33 <= b < 127 and b != 35)))
    content_type = draw(st.sampled_from(JSONISH) if valid else st.sampled_from(JSONISH + OTHER_TYPES) | header_values)
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=5))
    if content_type is not None:
        headers.append((b"Content-Type", content_type))
    if draw(st.booleans()):
        headers.append((b"X-Request-ID", draw(header_values)))
    return Fuzzed(method, suffix, headers, draw(valid_bodies if valid else bodies), valid)


def test_generated_requests_get_a_prediction_or_a_4xx(target: Target) -> None:
    """Bodies, content types, headers and methods from hypothesis: 200 for valid ones, else 4xx (or 503)."""

    @settings(FUZZ, max_examples=220)
    @given(request=fuzzed_requests())
    def run(request: Fuzzed) -> None:
        data = build(request.method, target.path(request.suffix), request.headers, request.body)
        status, _, body = exchange(target.port, data, request.method)
        assert acceptable(status), (status, body[:500])
        if request.valid:
            assert status == 200, body[:500]

    run()


class _Stream:
    """One buffered reader shared by the responses of a connection: each HTTPResponse would buffer (and then
    close) its own, losing the answers read ahead."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def makefile(self, *args: object) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def close(self) -> None:
        """Kept open for the next answer; the socket's `with` closes it."""


def test_pipelined_requests_are_answered_in_order(target: Target) -> None:
    """Generated requests sent back to back on one keep-alive connection: one answer each, in order, until
    an answer closes the connection."""

    @settings(FUZZ, max_examples=60)
    @given(requests=st.lists(fuzzed_requests(), min_size=2, max_size=4))
    def run(requests: list[Fuzzed]) -> None:
        data = b"".join(
            build(r.method, target.path(r.suffix), r.headers, r.body, close=i == len(requests) - 1)
            for i, r in enumerate(requests)
        )
        with socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_TIMEOUT) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(data)
            stream = _Stream(sock)
            for request in requests:
                response = http.client.HTTPResponse(stream, method=request.method.decode())  # type: ignore[arg-type]
                response.begin()
                body = response.read()
                assert acceptable(response.status), (response.status, body[:300])
                if request.valid:
                    assert response.status == 200, body[:300]
                if response.will_close:
                    break

    run()


# Requests the fuzzing found answered with 500, kept as they were found: each must get a 400.
FOUND = {
    "json-nested-200000-deep": (b"application/json", b"[" * 200_000),
    "form-json-nested-200000-deep": (b"application/x-www-form-urlencoded", b"[" * 200_000),
    "charset-undefined": (b"text/plain; charset=undefined", b"abc"),
    "charset-punycode-bad-input": (b"text/plain; charset=punycode", b"\\x"),
    "feature-beyond-float-range": (b"application/json", b'{"features": [1%s, 1, 1, 1]}' % (b"0" * 309)),
    "instance-beyond-float-range": (b"application/json", b'{"instances": [[-1%s, 1, 1, 1]]}' % (b"0" * 400)),
}


@pytest.mark.parametrize(("content_type", "body"), FOUND.values(), ids=FOUND.keys())
def test_found_requests_are_400(target: Target, content_type: bytes, body: bytes) -> None:
    data = build(b"POST", target.path(), [(b"Content-Type", content_type)], body)
    status, _, answer = exchange(target.port, data)
    assert status == 400, answer[:300]


# --- the protocol -------------------------------------------------------------------------------------------

MALFORMED = [
    b"\x00\x01\x02 garbage\r\n\r\n",
    b"FOO {path} HTTP/1.1\r\nHost: x\r\n\r\n",
    b"post {path} HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    b"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST {path} HTTP/1.1\r\nHost: x\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    b"POST {path} HTTP/1.1\r\nHost: x\r\nNo colon here\r\nContent-Length: 2\r\n\r\n{}",
    b"POST {path} HTTP/1.1\r\nHost: x\r\nBad Name: x\r\nContent-Length: 2\r\n\r\n{}",
    b"POST {path} HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}" + b"\x00" * 10,
    b"POST {path}\r\nHost: x\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\n",
]


def test_malformed_requests_are_4xx(target: Target) -> None:
    for template in MALFORMED:
        status, _, body = exchange(target.port, template.replace(b"{path}", target.path()))
        assert 400 <= status < 500, (template, status, body[:300])


def test_bad_methods_are_refused(target: Target) -> None:
    for method in (b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"TRACE", b"HEAD"):
        status, _, _ = exchange(target.port, build(method, target.path()), method)
        assert status == 405, (method, status)


def test_long_urls_and_headers(target: Target) -> None:
    """Past the gateway's head limit it answers 431; the replica has no such limit but must stay sane."""
    huge = MAX_HEAD_BYTES + 1
    cases = [
        build(b"POST", target.path(b"/predict?" + b"q" * huge), [(b"Content-Type", b"application/json")], VALID),
        build(b"POST", target.path(b"/" + b"p" * huge), body=VALID),
        build(b"POST", target.path(), [(b"X-Big", b"v" * huge)], VALID),
        build(b"POST", target.path(), [(b"X-%d" % i, b"v") for i in range(huge // 6)], VALID),
        build(b"POST", target.path(), [(b"X-Request-ID", b"r" * huge)], VALID),
    ]
    for data in cases:
        status, _, body = exchange(target.port, data)
        assert acceptable(status), (status, body[:300])
        if target.name == "gateway":
            assert status == 431, body[:300]


def test_bodies_over_the_limit_are_413(target: Target) -> None:
    """Declared too large: 413 without reading (and no 100 Continue); streamed too large: 413 at the limit."""
    head = build(b"POST", target.path(), [(b"Content-Type", b"application/json")], length=target.max_body + 1)
    status, headers, _ = exchange(target.port, head)
    assert (status, headers.get("connection")) == (413, "close")
    expect = [(b"Expect", b"100-continue"), (b"Content-Type", b"application/json")]
    with socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(build(b"POST", target.path(), expect, length=target.max_body + 1))
        assert sock.recv(12, socket.MSG_WAITALL) == b"HTTP/1.1 413"  # not "HTTP/1.1 100"
    assert stream_chunked(target, target.max_body + 2 * 1024 * 1024) == 413


def test_body_over_the_replica_limit_through_the_gateway_is_the_replicas_413(gateway: GatewayThread) -> None:
    body = b'{"pad": "' + b"x" * REPLICA_MAX_BODY + b'"}'
    status, _, answer = exchange(gateway.port, build(b"POST", b"/iris-classifier", body=body))
    assert status == 413 and b"max_body_bytes" in answer, answer[:300]


def stream_chunked(target: Target, total: int) -> int:
    """Send a chunked body of up to `total` bytes, stopping once the server answers; returns the status."""
    chunk = b"%x\r\n%s\r\n" % (1024 * 1024, b"7" * 1024 * 1024)
    headers = [(b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"application/json")]
    with socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(build(b"POST", target.path(), headers))
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(chunk)
                sent += 1024 * 1024
        return read_response(sock)[0]


def test_content_length_that_lies(target: Target) -> None:
    """Shorter bodies than declared, left open or closed, and longer ones: no hang, no effect on others."""
    short = build(b"POST", target.path(), [(b"Content-Type", b"application/json")], VALID[:10], length=len(VALID))
    with socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(short)  # and close at once
    held = [socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_TIMEOUT)
            for _ in range(MAX_CONCURRENCY + 1)]  # fmt: skip
    try:
        for sock in held:
            sock.sendall(short)  # and wait for the rest, which never comes
        time.sleep(0.2)
        assert_serves(target)  # the waiting bodies must not hold the replica's slots
    finally:
        for sock in held:
            sock.close()
    longer = build(b"POST", target.path(), [(b"Content-Type", b"application/json")], VALID + b"GARBAGE\r\n\r\n",
                   length=len(VALID), close=False)  # fmt: skip
    with socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(longer)
        status, _, _ = read_response(sock)
        assert acceptable(status)


def test_slow_clients(target: Target) -> None:
    """Heads and bodies trickled a byte at a time for 2 s (slowloris) while others are served on time."""
    heads = [socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_TIMEOUT) for _ in range(20)]
    bodies = [socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_TIMEOUT)
              for _ in range(MAX_CONCURRENCY + 1)]  # fmt: skip
    padded = VALID + b" " * 100  # JSON may end in spaces: the body lasts the whole trickle
    request = build(b"POST", target.path(), [(b"Content-Type", b"application/json")], padded)
    split = request.index(b"\r\n\r\n") + 4
    try:
        for sock in bodies:
            sock.sendall(request[:split])
        sent = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for sock in heads:
                sock.sendall(request[sent : sent + 1])
            for sock in bodies:
                sock.sendall(request[split + sent : split + sent + 1])
            sent += 1
            if sent % 5 == 0:
                assert_serves(target)
            time.sleep(0.05)
        for sock in heads:
            sock.sendall(request[sent:])
        for sock in bodies:
            sock.sendall(request[split + sent :])
        for sock in heads + bodies:
            assert read_response(sock)[0] == 200
    finally:
        for sock in heads + bodies:
            sock.close()


def test_many_concurrent_connections(target: Target) -> None:
    """200 connections at once: each gets 200 or, beyond the replica's queue, 503; none waits forever."""
    request = build(b"POST", target.path(), [(b"Content-Type", b"application/json")], VALID)

    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        writer.write(request)
        answer = await reader.read()
        writer.close()
        return int(answer.split(b" ", 2)[1])

    async def all_of_them() -> list[int]:
        async with asyncio.timeout(30):
            return await asyncio.gather(*(one() for _ in range(200)))

    statuses = asyncio.run(all_of_them())
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= MAX_CONCURRENCY + MAX_QUEUE_LENGTH // 2


def test_clients_that_vanish(target: Target) -> None:
    """Connections reset mid-head, mid-body and before reading the answer leave the server serving."""
    request = build(b"POST", target.path(), [(b"Content-Type", b"application/json")], VALID)
    for cut in (5, request.index(b"\r\n\r\n"), len(request) - 5, len(request)):
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", target.port), timeout=ANSWER_TIMEOUT)
            sock.sendall(request[:cut])
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, not a FIN
    assert_serves(target)
