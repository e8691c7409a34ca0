"""The gateway over real loopback sockets: routing, weights, HTTP edge cases, failures, drain and stop.

Upstreams are uvicorn servers in threads answering a JSON echo of what they received (so a test sees the
forwarded path, headers and body, and which replica and upstream connection served it). The gateway runs
on its own event loop thread (uvloop when installed, as in the agent); clients are blocking sockets and
`http.client` in the test thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self, TypeVar
from urllib.parse import parse_qs

import pytest
import uvicorn

from cortex_flows.backends.local.gateway import Gateway
from cortex_flows.backends.local.routing import RoutingTable, Upstream
from tests.helpers import LoopServer, wait_for

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)


# --- upstreams ----------------------------------------------------------------------------------------


class EchoServer:
    """uvicorn in a thread; answers JSON describing the request. `?delay=s` sleeps before answering;
    `?size=n` answers n bytes instead, chunked (no Content-Length), with the request body's length."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.connections: set[int] = set()  # client ports seen: one per upstream connection
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.upstream = Upstream("127.0.0.1", self.sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            interface="asgi3",
            lifespan="off",
            log_level="warning",
            access_log=False,
            http="httptools",
            loop="uvloop",  # uvicorn on the asyncio loop in a thread takes ~40 ms per keep-alive request
            proxy_headers=False,  # keep scope["client"]: it identifies the upstream connection
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.requests += 1
        self.connections.add(scope["client"][1])
        query = scope["query_string"].decode()
        params = parse_qs(query)
        delay = float(params.get("delay", ["0"])[0])
        if delay:
            await asyncio.sleep(delay)
        if "size" in params:
            size = int(params["size"][0])
            headers = [(b"x-body-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for i in range(4):
                piece = b"%d" % i * (size // 4 if i < 3 else size - 3 * (size // 4))
                await send({"type": "http.response.body", "body": piece, "more_body": i < 3})
            return
        payload = {
            "server": self.name,
            "method": scope["method"],
            "path": scope["path"],
            "query": query,
            "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
            "body": body.decode("latin-1"),
            "conn": scope["client"][1],
        }
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def start(self) -> EchoServer:
        self.thread.start()
        wait_for(lambda: self.server.started, timeout=10, what=f"upstream {self.name} to start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class OneShotServer(LoopServer):
    """Answers the first request on each connection; a later request on it is met by a close, unanswered.

    That is the keep-alive race: the replica closes an idle connection just as the gateway reuses it.
    """

    def __init__(self) -> None:
        self.connections = 0
        super().__init__()

    def _protocol(self) -> asyncio.Protocol:
        self.connections += 1
        outer = self

        class Proto(asyncio.Protocol):
            answered = False

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                if self.answered:
                    self.transport.close()
                else:
                    self.answered = True
                    body = b'{"server": "oneshot", "conn": %d}' % outer.connections
                    self.transport.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )  # type: ignore[attr-defined]

        return Proto()


class ClosingServer(LoopServer):
    """A replica that fails a request: reads its head, then closes without answering (`partial=False`,
    as a crashed or stopped replica does), or after the start of a response (`partial=True`)."""

    PARTIAL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\npartial"

    def __init__(self, *, partial: bool = False) -> None:
        self.partial = partial
        self.requests = 0  # request heads received (one per connection: each is closed after it)
        super().__init__()

    def _protocol(self) -> asyncio.Protocol:
        outer = self

        class Proto(asyncio.Protocol):
            received = b""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: asyncio.Transport = transport  # type: ignore[assignment]

            def data_received(self, data: bytes) -> None:
                self.received += data
                if b"\r\n\r\n" in self.received and not self.transport.is_closing():
                    outer.requests += 1
                    if outer.partial:
                        self.transport.write(outer.PARTIAL)
                    self.transport.close()

        return Proto()


# A replica process that takes requests and never answers, until it is killed.
_HOLDER = """
import socket, threading
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(128)
print(srv.getsockname()[1], flush=True)
held = []
while True:
    conn, _ = srv.accept()
    held.append(conn)
    threading.Thread(target=conn.recv, args=(65536,), daemon=True).start()
"""


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, EchoServer]]:
    """Three long-lived replicas, shared by the tests that do not kill them."""
    started = {name: EchoServer(name).start() for name in ("a", "b", "c")}
    yield started
    for server in started.values():
        server.stop()


# --- the gateway ---------------------------------------------------------------------------------------


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class GatewayThread:
    """A Gateway on port 0 running on its own loop thread; the table is changed on that thread too."""

    def __init__(self, table: RoutingTable | None = None, **options: Any) -> None:
        self.table = table or RoutingTable()
        self.gateway = Gateway(self.table, port=0, **options)
        self.loop = _new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        self.run(self.gateway.start())
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.run(self.gateway.stop(1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.gateway.port

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper())

    def route(self, api: str, endpoint: str, *groups: tuple[int, list[Upstream]]) -> None:
        self.call(self.table.set_route, api, endpoint, list(groups))


@pytest.fixture
def gw() -> Iterator[GatewayThread]:
    with GatewayThread() as g:
        yield g


# --- clients -------------------------------------------------------------------------------------------


def request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def echo(port: int, path: str, body: bytes | None = None, **kw: Any) -> dict[str, Any]:
    status, _, data = request(port, "POST" if body is not None else "GET", path, body, **kw)
    assert status == 200, data
    return json.loads(data)


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, read until the gateway closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def split_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse back-to-back responses that carry Content-Length."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        n = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        data = rest[n:]
    return out


# --- routing table (pure) ------------------------------------------------------------------------------


def test_table_resolves_longest_endpoint_and_rewrites_path() -> None:
    table = RoutingTable()
    up = Upstream("127.0.0.1", 1)
    table.set_route("iris", "iris/", [(100, [up])])
    table.set_route("iris-v2", "/iris/v2", [(100, [up])])
    assert [(r.api, p) for r, p in [table.resolve(b"/iris")]] == [("iris", b"/")]  # type: ignore[misc]
    for path, api, rest in [
        (b"/iris/", "iris", b"/"),
        (b"/iris/predict/x", "iris", b"/predict/x"),
        (b"/iris/v2", "iris-v2", b"/"),
        (b"/iris/v2/predict", "iris-v2", b"/predict"),
    ]:
        route, forward = table.resolve(path)  # type: ignore[misc]
        assert (route.api, forward) == (api, rest), path
    assert table.resolve(b"/irisX") is None
    assert table.resolve(b"/") is None
    with pytest.raises(ValueError, match="already used"):
        table.set_route("other", "/iris", [(100, [up])])
    with pytest.raises(ValueError, match=r"0\.\.100"):
        table.set_route("iris", "/iris", [(101, [up])])
    table.remove_route("iris")
    assert table.resolve(b"/iris/predict") is None
    assert table.resolve(b"/iris/v2/x") is not None


def test_table_weights_are_exact_and_skip_empty_groups() -> None:
    table = RoutingTable()
    a, b, c = (Upstream("127.0.0.1", p) for p in (1, 2, 3))
    table.set_route("api", "/api", [(80, [a]), (20, [b])])
    route = table.route("api")
    assert route is not None
    picks = Counter(route.pick({}) for _ in range(1000))
    assert picks == {a: 800, b: 200}
    picks.clear()
    for _ in range(100):  # the agent republishing the route (replica churn) keeps the split exact
        table.set_route("api", "/api", [(80, [a]), (20, [b])])
        picks[table.route("api").pick({})] += 1  # type: ignore[union-attr]
    assert picks == {a: 80, b: 20}
    table.set_route("api", "/api", [(50, [a]), (30, []), (20, [c]), (0, [b])])
    route = table.route("api")
    assert route is not None
    assert Counter(route.pick({}) for _ in range(70)) == {a: 50, c: 20}  # the empty group's 30 is shared
    table.set_route("api", "/api", [(0, [a]), (100, [])])
    assert table.route("api").pick({}) is None  # type: ignore[union-attr]


def test_table_prefers_least_in_flight_and_rotates_ties() -> None:
    table = RoutingTable()
    a, b, c = (Upstream("127.0.0.1", p) for p in (1, 2, 3))
    table.set_route("api", "/api", [(100, [a, b, c])])
    route = table.route("api")
    assert route is not None
    assert Counter(route.pick({}) for _ in range(30)) == {a: 10, b: 10, c: 10}
    busy = {a: 2, b: 1}
    assert {route.pick(busy) for _ in range(10)} == {c}
    table.begin("api", a)
    assert (table.in_flight(a), table.api_in_flight["api"]) == (1, 1)
    table.end("api", a)
    assert (table.in_flight(a), table.api_in_flight) == (0, {})


# --- the gateway on the wire -------------------------------------------------------------------------


def test_routes_rewrite_path_keep_query_and_filter_headers(gw: GatewayThread, servers: dict) -> None:
    gw.route("iris", "/iris", (100, [servers["a"].upstream]))
    got = echo(gw.port, "/iris")
    assert (got["server"], got["method"], got["path"], got["query"]) == ("a", "GET", "/", "")

    got = echo(
        gw.port,
        "/iris/predict?x=1&y=a%20b",
        b'{"features": [1]}',
        headers={
            "X-Custom": "kept",
            "X-Forwarded-For": "10.0.0.1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic eA==",
            "TE": "trailers",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "dropped",
        },
    )
    assert (got["path"], got["query"], got["body"]) == ("/predict", "x=1&y=a%20b", '{"features": [1]}')
    headers = got["headers"]
    assert headers["host"] == f"127.0.0.1:{gw.port}"
    assert headers["x-custom"] == "kept"
    assert headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert headers["content-length"] == "17"
    for hop in ("keep-alive", "proxy-authorization", "te", "connection", "x-secret"):
        assert hop not in headers, hop
    assert gw.gateway.api_requests("iris") == 2

    status, headers, body = request(gw.port, "GET", "/irisX?q=1")
    assert (status, json.loads(body)) == (404, {"error": "no API at /irisX"})
    assert headers["content-type"] == "application/json"


def test_no_ready_replica_is_503_with_retry_after(gw: GatewayThread, servers: dict) -> None:
    gw.route("iris", "/iris", (100, []))
    status, headers, body = request(gw.port, "POST", "/iris", b"{}")
    assert (status, headers["retry-after"]) == (503, "1")
    assert "no ready replica" in json.loads(body)["error"]
    gw.route("iris", "/iris", (0, [servers["a"].upstream]), (100, []))  # weight 0 gets nothing
    assert request(gw.port, "GET", "/iris")[0] == 503


def test_weighted_split_between_versions(gw: GatewayThread, servers: dict) -> None:
    a, b = servers["a"], servers["b"]
    gw.route("iris", "/iris", (80, [a.upstream]), (20, [b.upstream]))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    seen: Counter[str] = Counter()
    for _ in range(1000):
        conn.request("GET", "/iris")
        seen[json.loads(conn.getresponse().read())["server"]] += 1
    assert 760 <= seen["a"] <= 840 and seen["a"] + seen["b"] == 1000, seen

    gw.route("iris", "/iris", (100, [a.upstream]), (0, [b.upstream]))
    seen.clear()
    for _ in range(100):
        conn.request("GET", "/iris")
        seen[json.loads(conn.getresponse().read())["server"]] += 1
    assert seen == {"a": 100}
    conn.close()


def test_least_in_flight_replica_gets_the_next_requests(gw: GatewayThread, servers: dict) -> None:
    a, b = servers["a"], servers["b"]
    gw.route("iris", "/iris", (100, [a.upstream, b.upstream]))
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(echo, gw.port, "/iris?delay=0.8")
        busy = wait_for(
            lambda: next((u for u in (a.upstream, b.upstream) if gw.gateway.in_flight(u) == 1), None),
            timeout=5,
            what="the slow request to be in flight",
        )
        idle = b if busy == a.upstream else a
        assert {echo(gw.port, "/iris")["server"] for _ in range(10)} == {idle.name}
        assert slow.result(timeout=5)["server"] != idle.name
    assert gw.gateway.api_in_flight("iris") == 0


def test_upstream_connections_are_pooled(gw: GatewayThread, servers: dict) -> None:
    c = servers["c"]
    gw.route("iris", "/iris", (100, [c.upstream]))
    before = set(c.connections)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    for _ in range(20):  # one keep-alive client connection
        conn.request("POST", "/iris", body=b"x")
        assert conn.getresponse().read()
    conn.close()
    for _ in range(10):  # a new client connection each time
        echo(gw.port, "/iris")
    assert len(c.connections - before) == 1


def test_expect_100_continue(gw: GatewayThread, servers: dict) -> None:
    gw.route("iris", "/iris", (100, [servers["a"].upstream]))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(
            b"POST /iris HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert s.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"  # like curl: the body only after this
        s.sendall(b"hello world")
        [(status, _, body)] = split_responses(read_all(s))
    got = json.loads(body)
    assert (status, got["body"]) == (200, "hello world")
    assert "expect" not in got["headers"]


def test_chunked_request_body_is_forwarded_with_content_length(gw: GatewayThread, servers: dict) -> None:
    gw.route("iris", "/iris", (100, [servers["a"].upstream]))
    data = raw_exchange(
        gw.port,
        b"POST /iris HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    [(status, _, body)] = split_responses(data)
    got = json.loads(body)
    assert (status, got["body"], got["headers"]["content-length"]) == (200, "hello world", "11")
    assert "transfer-encoding" not in got["headers"]


def test_oversized_body_is_413_without_reading_it() -> None:
    with GatewayThread(max_body_bytes=1000) as gw:
        gw.route("iris", "/iris", (100, [Upstream("127.0.0.1", 9)]))  # never reached
        for head in (
            b"POST /iris HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n",
            b"POST /iris HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
                s.sendall(head + b"x" * 500)  # a client that is still sending
                [(status, headers, body)] = split_responses(read_all(s))
            assert (status, headers["connection"]) == (413, "close")
            assert json.loads(body) == {"error": "request body too large"}
        chunk = b"258\r\n" + b"y" * 600 + b"\r\n"
        data = raw_exchange(
            gw.port, b"POST /iris HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 3
        )
        assert split_responses(data)[0][0] == 413
        assert gw.gateway.api_requests("iris") == 0


def test_malformed_request_is_400_and_the_gateway_keeps_serving(gw: GatewayThread, servers: dict) -> None:
    gw.route("iris", "/iris", (100, [servers["a"].upstream]))
    for garbage in (
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /iris HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"GET /iris HTTP/1.1\r\n" + b"X-Big: " + b"z" * 70000 + b"\r\n\r\n",
    ):
        status = split_responses(raw_exchange(gw.port, garbage))[0][0]
        assert status in (400, 431), garbage[:20]
    assert echo(gw.port, "/iris")["server"] == "a"


def test_pipelining_http10_and_head(gw: GatewayThread, servers: dict) -> None:
    gw.route("iris", "/iris", (100, [servers["a"].upstream, servers["b"].upstream]))
    data = raw_exchange(
        gw.port,
        b"GET /iris/first?delay=0.2 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /iris/second HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    responses = split_responses(data)
    assert [s for s, _, _ in responses] == [200, 404, 200]
    assert json.loads(responses[0][2])["path"] == "/first"
    assert json.loads(responses[2][2])["path"] == "/second"

    data = raw_exchange(gw.port, b"GET /iris HTTP/1.0\r\n\r\n")  # closed by the gateway after one response
    assert split_responses(data)[0][0] == 200

    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    conn.request("HEAD", "/iris")
    resp = conn.getresponse()
    assert (resp.status, resp.read(), int(resp.getheader("content-length") or 0) > 0) == (200, b"", True)
    conn.request("GET", "/iris/after-head")  # the same client and upstream connections still work
    assert json.loads(conn.getresponse().read())["path"] == "/after-head"
    conn.close()


def test_dead_replica_fails_over_then_502() -> None:
    a, b = EchoServer("a").start(), EchoServer("b").start()
    try:
        with GatewayThread() as gw:
            gw.route("iris", "/iris", (100, [a.upstream, b.upstream]))
            assert {echo(gw.port, "/iris")["server"] for _ in range(4)} == {"a", "b"}  # pools both
            a.stop()
            assert {echo(gw.port, "/iris")["server"] for _ in range(10)} == {"b"}
            b.stop()
            status, _, body = request(gw.port, "GET", "/iris")
            assert status == 502 and "cannot reach" in json.loads(body)["error"]
            assert gw.gateway.api_in_flight("iris") == 0
    finally:
        a.stop()
        b.stop()


def test_stale_pooled_connection_is_retried_transparently() -> None:
    upstream = OneShotServer()
    try:
        with GatewayThread() as gw:
            gw.route("iris", "/iris", (100, [upstream.upstream]))
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
            for _ in range(3):
                conn.request("GET", "/iris")
                resp = conn.getresponse()
                assert (resp.status, json.loads(resp.read())["server"]) == (200, "oneshot")
            conn.close()
            assert upstream.connections == 3
    finally:
        upstream.stop()


def test_removed_replica_finishes_in_flight_work_and_gets_no_more(gw: GatewayThread, servers: dict) -> None:
    a, b = servers["a"], servers["b"]
    gw.route("iris", "/iris", (100, [a.upstream]))
    echo(gw.port, "/iris")  # leaves an idle pooled connection to a
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(echo, gw.port, "/iris?delay=0.8")
        wait_for(lambda: gw.gateway.in_flight(a.upstream) == 1, timeout=5, what="slow request in flight")
        gw.route("iris", "/iris", (100, [b.upstream]))
        assert gw.call(lambda: a.upstream not in gw.gateway.idle)  # its idle sockets were closed
        assert {echo(gw.port, "/iris")["server"] for _ in range(5)} == {"b"}
        assert gw.gateway.in_flight(a.upstream) == 1
        assert slow.result(timeout=5)["server"] == "a"
    wait_for(lambda: gw.gateway.in_flight(a.upstream) == 0, timeout=2, what="in-flight count to drop")
    assert gw.gateway.api_in_flight("iris") == 0
    assert gw.call(lambda: a.upstream not in gw.gateway.idle)  # not returned to the pool either


def test_clients_that_send_too_slowly_get_408_and_idle_ones_are_closed(servers: dict) -> None:
    """Slowloris: a head trickled in a byte at a time, or a body that stops, holds a connection for the
    read timeout at most; a keep-alive connection with no request is closed; steady senders are served."""
    with GatewayThread(read_timeout=0.6, keepalive_timeout=1.0) as gw:
        gw.route("iris", "/iris", (100, [servers["a"].upstream]))

        def trickle(data: bytes, pause: float) -> tuple[float, bytes]:
            """Send a byte per `pause` until the gateway answers: (seconds until it did, the answer)."""
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
                for byte in data:
                    s.sendall(bytes([byte]))
                    if select.select([s], [], [], pause)[0]:
                        break
                answered = time.monotonic()
                return answered - started, read_all(s)

        slow_head = b"POST /iris HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"z" * 200
        took, answer = trickle(slow_head, 0.02)  # a byte every 20 ms: never silent, never done
        [(status, headers, body)] = split_responses(answer)
        assert (status, headers["connection"]) == (408, "close") and json.loads(body)["error"].startswith("request not")
        assert took < 0.6 + 1.0, took
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"POST /iris HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")  # then silence
            started = time.monotonic()
            assert split_responses(read_all(s))[0][0] == 408
            assert time.monotonic() - started < 0.6 + 1.0
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:  # keep-alive, then nothing
            s.sendall(b"GET /iris HTTP/1.1\r\nHost: t\r\n\r\n")
            started = time.monotonic()
            [(status, _, _)] = split_responses(read_all(s))  # closed by the gateway, not by us
            assert status == 200 and 1.0 <= time.monotonic() - started < 1.0 + 1.0
        steady = b"POST /iris HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:  # a slow body, never silent long
            s.sendall(steady)
            for byte in b"abcdefgh":  # 1.6 s in all, longer than the read timeout
                time.sleep(0.2)
                s.sendall(bytes([byte]))
            [(status, _, body)] = split_responses(read_all(s))
            assert status == 200 and json.loads(body)["body"] == "abcdefgh"
        assert gw.call(lambda: len(gw.gateway.clients)) == 0
        assert echo(gw.port, "/iris")["server"] == "a"


def test_upstream_timeout_is_504(servers: dict) -> None:
    with GatewayThread(upstream_timeout=0.3) as gw:
        gw.route("iris", "/iris", (100, [servers["c"].upstream]))
        started = time.monotonic()
        status, _, body = request(gw.port, "GET", "/iris?delay=1")
        assert status == 504 and "timed out" in json.loads(body)["error"]
        assert time.monotonic() - started < 2
        assert gw.gateway.in_flight(servers["c"].upstream) == 0
        assert echo(gw.port, "/iris")["server"] == "c"


def test_stop_lets_in_flight_requests_finish(servers: dict) -> None:
    with GatewayThread() as gw, ThreadPoolExecutor(1) as pool:
        gw.route("iris", "/iris", (100, [servers["a"].upstream]))
        idle_client = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        slow = pool.submit(echo, gw.port, "/iris?delay=0.5")
        wait_for(lambda: gw.gateway.api_in_flight("iris") == 1, timeout=5, what="slow request in flight")
        stopping = asyncio.run_coroutine_threadsafe(gw.gateway.stop(grace=5), gw.loop)
        assert idle_client.recv(10) == b""  # idle keep-alive connections are closed at once
        idle_client.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        assert slow.result(timeout=5)["server"] == "a"
        stopping.result(timeout=5)


def test_large_bodies_chunked_responses_and_a_slow_reader(gw: GatewayThread, servers: dict) -> None:
    c = servers["c"]
    gw.route("iris", "/iris", (100, [c.upstream]))
    before = set(c.connections)
    status, headers, body = request(gw.port, "POST", "/iris?size=3000000", b"b" * 1_000_000)
    assert (status, headers["x-body-length"], headers["transfer-encoding"]) == (200, "1000000", "chunked")
    assert body == b"0" * 750_000 + b"1" * 750_000 + b"2" * 750_000 + b"3" * 750_000
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(b"GET /iris?size=40000000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        # A client that does not read: the gateway must hold the replica back, not buffer 40 MB.
        wait_for(lambda: gw.call(lambda: any(conn.paused for conn in gw.gateway.busy)), timeout=5)
        data = read_all(s)
    assert data.startswith(b"HTTP/1.1 200 OK") and data.count(b"3") >= 10_000_000
    assert echo(gw.port, "/iris")["server"] == "c"
    assert len(c.connections - before) == 1  # pooled again after each chunked response


def test_wait_for_upstream_hook_can_hold_a_request(servers: dict) -> None:
    class ScaleFromZero(RoutingTable):
        async def wait_for_upstream(self, api: str, timeout: float) -> Upstream | None:
            await asyncio.sleep(0.1)  # as if a replica were being started
            return servers["a"].upstream

    with GatewayThread(ScaleFromZero()) as gw:
        gw.route("iris", "/iris", (100, []))
        assert echo(gw.port, "/iris")["server"] == "a"
        assert gw.gateway.api_in_flight("iris") == 0


def test_replica_closing_before_answering_fails_over(gw: GatewayThread, servers: dict) -> None:
    bad, good = ClosingServer(), servers["b"]
    try:
        gw.route("iris", "/iris", (100, [bad.upstream, good.upstream]))
        before = good.requests

        def client(n: int) -> list[tuple[int, str, str]]:
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            out = []
            for i in range(25):
                body = b"%d-%d" % (n, i)
                conn.request("POST", "/iris/predict", body=body)
                resp = conn.getresponse()
                got = json.loads(resp.read())
                out.append((resp.status, got["server"], got["body"] == body.decode()))
            conn.close()
            return out

        with ThreadPoolExecutor(8) as pool:
            results = [r for rs in pool.map(client, range(8)) for r in rs]
        assert len(results) == 200
        assert Counter(results) == {(200, "b", True): 200}  # each from the good replica, with its body
        assert bad.requests >= 10  # the bad replica really took (and dropped) a share of them
        assert good.requests - before == 200

        big = bytes(range(256)) * 800  # above the join limit: the body is written on its own, and resent
        for _ in range(4):
            got = echo(gw.port, "/iris", big)
            assert (got["server"], got["body"]) == ("b", big.decode("latin-1"))
        assert gw.gateway.api_in_flight("iris") == 0
    finally:
        bad.stop()


def test_replica_killed_mid_request_fails_over(gw: GatewayThread, servers: dict) -> None:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        dying = Upstream("127.0.0.1", int(holder.stdout.readline()))
        gw.route("iris", "/iris", (100, [dying, servers["a"].upstream]))
        with ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(echo, gw.port, "/iris?delay=0.3") for _ in range(8)]
            wait_for(lambda: gw.gateway.api_in_flight("iris") == 8, timeout=5, what="8 requests in flight")
            held = gw.gateway.in_flight(dying)
            assert held >= 1
            wait_for(  # forwarded to the replica on open connections, not just routed to it
                lambda: gw.call(lambda: sum(c.upstream == dying for c in gw.gateway.busy)) == held,
                timeout=5,
                what="the held requests to be sent",
            )
            holder.kill()
            assert [c.result(timeout=10)["server"] for c in calls] == ["a"] * 8
        assert gw.gateway.in_flight(dying) == 0 and gw.gateway.api_in_flight("iris") == 0
    finally:
        holder.kill()
        holder.wait(timeout=5)


def test_replica_closing_without_another_is_502(gw: GatewayThread, servers: dict) -> None:
    bad, worse = ClosingServer(), ClosingServer()
    try:
        gw.route("iris", "/iris", (100, [bad.upstream]))
        gw.route("other", "/other", (100, [servers["a"].upstream]))
        status, _, body = request(gw.port, "POST", "/iris", b"{}")
        assert (status, json.loads(body)) == (502, {"error": "replica of API iris closed the connection"})
        assert bad.requests == 1

        gw.route("iris", "/iris", (100, [bad.upstream, worse.upstream]))
        for n in range(1, 4):  # the failover dies too: 502 after exactly one more attempt
            status, _, body = request(gw.port, "GET", "/iris")
            assert (status, json.loads(body)) == (502, {"error": "replica of API iris closed the connection"})
            assert bad.requests + worse.requests == 1 + 2 * n
        assert gw.gateway.api_in_flight("iris") == 0
        assert echo(gw.port, "/other")["server"] == "a"  # the gateway keeps serving
    finally:
        bad.stop()
        worse.stop()


def test_partial_response_is_cut_not_retried(gw: GatewayThread, servers: dict) -> None:
    partial, good = ClosingServer(partial=True), servers["c"]
    try:
        gw.route("iris", "/iris", (100, [partial.upstream, good.upstream]))
        before = good.requests
        cuts = 0
        for _ in range(6):
            data = raw_exchange(gw.port, b"GET /iris HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            if data.endswith(b"\r\n\r\npartial"):  # Content-Length 1000, 7 bytes, then the connection ends
                cuts += 1
            else:
                [(status, _, body)] = split_responses(data)
                assert (status, json.loads(body)["server"]) == (200, "c")
        assert cuts >= 1 and cuts == partial.requests
        assert good.requests - before == 6 - cuts  # a cut request was not resent to the good replica
        assert gw.gateway.api_in_flight("iris") == 0
    finally:
        partial.stop()
