"""The local backend's gateway: one port that forwards `/<endpoint>` to the ready replicas of an API.

It sits on every request, so it is a bare asyncio Protocol with the httptools (llhttp) parser rather than
an ASGI app with an HTTP client: the request is parsed once, re-emitted with its hop-by-hop headers dropped,
and the response is relayed to the client as the raw bytes the replica sent. The response parser only
tells us where the response ends, so the upstream connection can go back to a keep-alive pool.

Per client connection one request is served at a time (pipelined requests wait in a queue, in order).
Request bodies are buffered (bounded) and sent with Content-Length, which lets a request be retried on
another connection or replica when nothing reached the client yet: a pooled connection that turns out
closed is retried on a new one, and a replica that cannot be reached, or that closes the connection
before answering (it crashed, or was stopped by a rolling update), is failed over once to another one.

A route may be a traffic splitter's (the request is served as one of its target APIs', picked per
request) and may mirror a share of its requests: the same upstream request is also sent, once the primary
is on its way, to a shadow replica over the gateway's separate shadow connections. The shadow's answer is
never relayed; it is compared with the primary's (captured while relayed) into the route's `ShadowTally`.
Plain routes pay one attribute check for all this (`Route.direct`), and one per response chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any, TypeVar

import httptools

from cortex_flows.backends.local.routing import MirrorState, Route, RoutingTable, Split, Upstream
from cortex_flows.rollout.shadow import Reply, ShadowTally

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_PORT", "Gateway", "RoutingTable", "Upstream"]

log = logging.getLogger("cortex_flows.gateway")

DEFAULT_PORT = 8888
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_HEAD_BYTES = 64 * 1024  # request line + headers; beyond -> 431
_JOIN_LIMIT = 64 * 1024  # bodies up to this size are joined to the head: one write, one segment
_LINGER = 1.0  # after a 4xx that closes, keep reading (and dropping) this long so the client sees it
DEFAULT_MAX_MIRRORS = 256  # mirrored requests in flight at once; beyond, mirroring is skipped
MAX_COMPARE_BYTES = 1024 * 1024  # response bodies kept to compare primary and shadow; larger: uncompared

# Request headers handled specially: hop-by-hop ones (and Proxy-*) are dropped, framing ones regenerated.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_SPECIAL = _HOP_BY_HOP | {b"content-length", b"expect", b"x-forwarded-for", b"host"}
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing; the reason is already in `_Client.failed`."""


class _Request:
    """One parsed client request, waiting in its connection's queue or being served."""

    __slots__ = ("api", "body", "capture", "head", "head_only", "keep_alive", "method", "url")

    def __init__(
        self, method: bytes, url: bytes, head: bytes, body: bytes, keep_alive: bool, head_only: bool
    ) -> None:
        self.method = method
        self.url = url
        self.head = head  # headers to forward and the blank line; once routed, the whole upstream request
        # Once routed: only a large body that is written separately. Kept (never streamed) until the
        # response is done, so a failover or a retry can resend the request as a whole.
        self.body = body
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.api = ""  # set once routed
        self.capture: _Capture | None = None  # set when mirrored: the response is also kept to compare


class Gateway:
    """Listens on one port and forwards each request to a replica chosen by a `RoutingTable`.

    The agent reads `in_flight(upstream)` to drain a replica (take it out of the table, wait for 0, stop
    it) and `api_in_flight(api)` / `api_requests(api)` for status.
    """

    def __init__(
        self,
        table: RoutingTable,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        upstream_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_idle_per_upstream: int = 64,
        idle_timeout: float = 4.0,
        max_mirrors_in_flight: int = DEFAULT_MAX_MIRRORS,
        read_timeout: float = 30.0,
        keepalive_timeout: float = 75.0,
    ) -> None:
        """`upstream_timeout`: longest silence from a replica mid-request (then 504, or a cut response),
        and the longest `RoutingTable.wait_for_upstream` may hold a request; a shadow's too. `idle_timeout`:
        pooled connections idle longer are closed; it stays below the replicas' keep-alive (uvicorn: 5 s)
        so we rarely reuse a socket the replica is closing (that race is retried anyway).
        `read_timeout`: longest a client may take to send a request's whole head, and the longest silence
        within its body (then 408 and close), so clients that send slowly on purpose hold no connection for
        long. `keepalive_timeout`: a client connection with no request for this long is closed (nginx's
        default).
        """
        self.table = table
        self.host = host
        self._port = port
        self.upstream_timeout = upstream_timeout
        self.connect_timeout = connect_timeout
        self.max_body_bytes = max_body_bytes
        self.max_idle_per_upstream = max_idle_per_upstream
        self.idle_timeout = idle_timeout
        self.max_mirrors_in_flight = max_mirrors_in_flight
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.loop: asyncio.AbstractEventLoop  # set by start()
        self.stopping = False
        self.host_line = b""
        self.requests: dict[str, int] = {}  # by API, and by traffic splitter
        self.clients: set[_Client] = set()
        self.busy: set[_UpstreamConn | _MirrorConn] = set()
        self.idle: dict[Upstream, list[_UpstreamConn]] = {}
        self.mirror_idle: dict[Upstream, list[_MirrorConn]] = {}  # shadow connections, never mixed in
        self.mirrors_in_flight = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        table.add_removal_listener(self._on_upstreams_removed)

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port=0)."""
        return self._port

    def in_flight(self, upstream: Upstream) -> int:
        """Requests forwarded to `upstream` and not finished, whether or not it is still in the table."""
        return self.table.upstream_in_flight.get(upstream, 0)

    def api_in_flight(self, api: str) -> int:
        return self.table.api_in_flight.get(api, 0)

    def api_requests(self, api: str) -> int:
        """Requests routed to `api` since start, whatever their outcome (503/502/504 included)."""
        return self.requests.get(api, 0)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: _Client(self), self.host, self._port, backlog=4096, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self.host_line = f"Host: {self.host}:{self._port}\r\n".encode()
        self._sweeper = self.loop.create_task(self._sweep())
        log.info("gateway listening on %s:%d", self.host, self._port)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let requests in progress finish for up to `grace` seconds, then cut the rest."""
        assert self._server is not None, "gateway not started"
        self.stopping = True
        self._server.close()
        for client in list(self.clients):
            client.closing = True
            if client.current is None:
                client.close()
        deadline = self.loop.time() + grace
        while self.clients and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.clients:
            log.warning(
                "gateway stop: cutting %d connection(s) still busy after %.1f s", len(self.clients), grace
            )
        for client in list(self.clients):
            client.transport.abort()
        for pool in (self.idle, self.mirror_idle):
            for conns in pool.values():
                for conn in conns:
                    conn.close()
            pool.clear()
        for conn in list(self.busy):
            conn.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self._server.wait_closed()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task we hold on to (the loop keeps only weak references)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- upstream connection pool ------------------------------------------------------------------------

    def take_idle(self, pool: dict[Upstream, list[_Conn]], upstream: Upstream) -> _Conn | None:
        conns = pool.get(upstream)
        while conns:
            conn = conns.pop()  # most recently used: least likely to be closing
            if not conn.closed:
                return conn
        return None

    def put_idle(self, pool: dict[Upstream, list[_Conn]], conn: _Conn) -> None:
        upstream = conn.upstream
        if self.stopping or not self.table.has_upstream(upstream):
            conn.close()
            return
        conns = pool.setdefault(upstream, [])
        if len(conns) >= self.max_idle_per_upstream:
            conn.close()
        else:
            conns.append(conn)

    def _on_upstreams_removed(self, upstreams: set[Upstream]) -> None:
        for upstream in upstreams:
            for pool in (self.idle, self.mirror_idle):
                for conn in pool.pop(upstream, ()):
                    conn.close()

    # --- mirroring -------------------------------------------------------------------------------------

    def mirror(self, req: _Request, states: list[MirrorState]) -> None:
        """Copy `req` to a shadow replica of each of `states`, started after the primary went out.

        A copy is skipped (and counted so) when too many are in flight or no shadow replica is ready.
        """
        capture = _Capture(self)
        table = self.table
        for state in states:
            tally = state.tally
            upstream = state.pick(table) if self.mirrors_in_flight < self.max_mirrors_in_flight else None
            if upstream is None:
                tally.skipped += 1
                continue
            tally.mirrored += 1
            self.mirrors_in_flight += 1
            table.begin_mirror(upstream)
            shadow = _Shadow(self, capture, tally, upstream, req)
            capture.shadows.append(shadow)
            self.loop.call_soon(shadow.start)
        if capture.shadows:
            req.capture = capture

    async def _sweep(self) -> None:
        """Once per tick: time out silent upstreams and stalled clients, close connections idle too long.

        One periodic task instead of a timer per request keeps the request path free of timer churn.
        """
        loop = self.loop
        tick = max(0.01, min(1.0, self.upstream_timeout / 10, self.idle_timeout / 4, self.read_timeout / 10))
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            try:
                for conn in [c for c in self.busy if now - c.last_active > self.upstream_timeout]:
                    conn.time_out()
                for client in [c for c in self.clients if c.stalled(now)]:
                    client.time_out()
                for pool in (self.idle, self.mirror_idle):
                    for conns in pool.values():
                        while conns and now - conns[0].last_active > self.idle_timeout:
                            conns.pop(0).close()
            except Exception:
                log.warning("gateway: error in the timeout sweep", exc_info=True)


class _Client(asyncio.Protocol):
    """One client connection: parses requests, serves them one at a time, writes responses in order."""

    __slots__ = (
        "body",
        "body_size",
        "closed",
        "closing",
        "conn",
        "conn_tokens",
        "continue_pending",
        "current",
        "declared_length",
        "eof",
        "expect",
        "failed",
        "failover",
        "framed",
        "gw",
        "has_host",
        "head_bytes",
        "head_size",
        "in_head",
        "lines",
        "message_at",
        "parser",
        "peer",
        "queue",
        "read_at",
        "reading_paused",
        "replied",
        "target",
        "transport",
        "url",
        "writing_paused",
        "xff",
        "xff_line",
    )

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.xff_line = b""
        self.queue: deque[_Request] = deque()
        self.current: _Request | None = None  # being served
        self.target: Upstream | None = None  # counted as in flight for `current`
        self.conn: _UpstreamConn | None = None  # relaying `current`'s response
        self.replied = False  # some response bytes for `current` went to the client
        self.failover = False  # `current` may still go to another replica if `target` fails it
        self.closed = False
        self.closing = False  # close when `current` is done (gateway stopping, or Connection: close)
        self.eof = False  # no more input (client half-closed, or an Upgrade request): answer, then close
        self.failed = 0  # 400/413/431: answer this once earlier requests are done, then close
        self.continue_pending = False
        self.reading_paused = False
        self.writing_paused = False
        self.in_head = False
        self.head_bytes = 0  # bytes received while a head is incomplete (bounds one endless header)
        self.head_size = 0
        self.read_at = 0.0  # loop time of the last bytes read, or of the last response
        self.message_at = 0.0  # loop time the request being received began; 0: none is
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.lines: list[bytes] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.framed = False
        self.declared_length = 0
        self.has_host = False
        self.expect = False
        self.xff = b""
        self.conn_tokens: frozenset[bytes] = frozenset()

    # --- transport callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0] if peer else "unknown").encode()
        self.xff_line = b"X-Forwarded-For: %s\r\n" % self.peer
        self.read_at = self.gw.loop.time()
        self.gw.clients.add(self)

    def data_received(self, data: bytes) -> None:
        if self.failed or self.eof:
            return  # lingering after an error reply, or reading stopped after an Upgrade request
        self.read_at = self.gw.loop.time()
        try:
            if self.in_head:
                self.head_bytes += len(data)
                if self.head_bytes > MAX_HEAD_BYTES:
                    self.failed = 431
                    raise _Abort
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._stop_parsing_after_upgrade()
        except (httptools.HttpParserError, _Abort) as exc:
            if not self.failed:
                log.debug("bad request from client: %s", exc)
                self.failed = 400
        try:
            if self.current is None:
                self.process()
            elif self.queue and not self.reading_paused:
                self.reading_paused = True  # pipelining: hold the rest in the kernel until we catch up
                self.transport.pause_reading()
        except Exception:
            log.warning("gateway: error serving a client connection", exc_info=True)
            self.transport.abort()

    def eof_received(self) -> bool | None:
        self.eof = True
        # Keep the write side open to answer what was already sent; else let the transport close.
        return True if self.current is not None or self.queue else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gw.clients.discard(self)
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.abandon()
        self.release()
        req = self.current
        if req is not None and req.capture is not None:
            req.capture.settle(None)  # cut, or the client left: nothing complete to compare
        self.current = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.conn is not None:
            self.conn.pause()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.conn is not None:
            self.conn.resume()

    # --- parser callbacks ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.message_at = self.read_at
        self.in_head = True
        self.head_bytes = 0
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        lname = name.lower()
        if lname in _SPECIAL:
            if lname == b"host":
                self.has_host = True
            elif lname == b"content-length":
                self.framed = True
                self.declared_length = int(value)  # llhttp has validated the digits
                return
            elif lname == b"transfer-encoding":
                self.framed = True
                return
            elif lname == b"expect":
                self.expect = value.lower() == b"100-continue"
                return
            elif lname == b"x-forwarded-for":
                self.xff = value
                return
            elif lname == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")} - _CONNECTION_OPTIONS
                self.conn_tokens = self.conn_tokens | tokens
                return
            else:
                return
        elif lname.startswith(b"proxy-"):
            return
        self.lines.append(b"%s: %s\r\n" % (name, value))

    def _count_head(self, n: int) -> None:
        """Exact head size from the callbacks; data_received also bounds a head that never completes."""
        self.head_size += n
        if self.head_size > MAX_HEAD_BYTES:
            self.failed = 431
            raise _Abort

    def on_headers_complete(self) -> None:
        self.in_head = False
        gw = self.gw
        if self.declared_length > gw.max_body_bytes:
            self.failed = 413  # refuse before reading the body (and before any 100 Continue)
            raise _Abort
        if self.expect and self.parser.get_http_version() == "1.1":
            if self.current is None and not self.queue:
                self.transport.write(_CONTINUE)
            else:
                self.continue_pending = True  # answer when the requests ahead are done

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size > self.gw.max_body_bytes:
            self.failed = 413
            raise _Abort
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        parser = self.parser
        self.message_at = 0.0
        self.continue_pending = False
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        lines = self.lines
        if self.conn_tokens:
            lines = [ln for ln in lines if ln.split(b":", 1)[0].lower() not in self.conn_tokens]
        lines.append(b"X-Forwarded-For: %s, %s\r\n" % (self.xff, self.peer) if self.xff else self.xff_line)
        if not self.has_host:
            lines.append(self.gw.host_line)
        if self.framed or body:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        method = parser.get_method()
        keep_alive = parser.should_keep_alive() and parser.get_http_version() == "1.1"
        self.queue.append(_Request(method, self.url, b"".join(lines), body, keep_alive, method == b"HEAD"))
        self._reset_message()

    # --- serving ----------------------------------------------------------------------------------------

    def process(self) -> None:
        """Serve queued requests until one has to wait for an upstream, then settle the connection."""
        while self.current is None and not self.closed:
            if self.closing:
                self.close()
                return
            if self.queue:
                self.handle(self.queue.popleft())
                continue
            if self.failed:
                self.reject(self.failed)
                return
            if self.eof:
                self.close()
                return
            if self.continue_pending:
                self.continue_pending = False
                self.transport.write(_CONTINUE)
            if self.reading_paused:
                self.reading_paused = False
                self.transport.resume_reading()
            self.read_at = self.gw.loop.time()  # idle from now on, until the next request
            return

    def stalled(self, now: float) -> bool:
        """Not serving it, a request's head arriving for longer than the read timeout, a silence that
        long within its body, or no request at all for the keep-alive timeout."""
        if self.current is not None or self.queue or self.closed:
            return False  # the client waits for us, not we for it
        if self.message_at:
            return now - (self.message_at if self.in_head else self.read_at) > self.gw.read_timeout
        return now - self.read_at > self.gw.keepalive_timeout

    def time_out(self) -> None:
        """408 for a request that is not coming in time, then close; close an idle connection."""
        if self.message_at and not self.failed:
            log.debug("gateway: %s sent a request too slowly", self.peer.decode())
            self.failed = 408
            self.process()
        else:
            self.close()

    def handle(self, req: _Request) -> None:
        self.current = req
        self.replied = False
        gw = self.gw
        url = req.url
        if url[:1] == b"/":
            q = url.find(b"?")
            path, query = (url, b"") if q < 0 else (url[:q], url[q:])
        else:  # absolute-form (a client that thinks we are a forward proxy)
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self.reply(400, "invalid request target")
                return
            path = parsed.path or b"/"
            query = b"?" + parsed.query if parsed.query else b""
        hit = gw.table.resolve(path)
        if hit is None:
            self.reply(404, f"no API at {path.decode('latin-1')}")
            return
        route, rest = hit
        req.api = api = route.api
        gw.requests[api] = gw.requests.get(api, 0) + 1
        head = b"%s %s%s HTTP/1.1\r\n%s" % (req.method, rest, query, req.head)
        if len(req.body) <= _JOIN_LIMIT:
            req.head, req.body = head + req.body, b""
        else:
            req.head = head
        if not route.direct:  # a traffic splitter, or a route that mirrors
            route = self.redirect(req, route)
            if route is None:
                return
        upstream = route.pick(gw.table.upstream_in_flight)
        if upstream is None:
            gw.spawn(self.wait_for_upstream(req))
        else:
            self.send_to(upstream, failover=True)

    def redirect(self, req: _Request, entry: Route | Split) -> Route | None:
        """The slow path: the route that serves `req` (a splitter's target API's), with its mirrored copies
        started; None when `req` was answered here because the target API has no route."""
        gw = self.gw
        states: list[MirrorState] = []
        if isinstance(entry, Split):
            target = entry.pick()
            route = gw.table.route(target)
            if route is None:
                self.reply(
                    503,
                    f"API {target} of traffic splitter {entry.api} is not deployed",
                    b"Retry-After: 1\r\n",
                )
                return None
            req.api = target  # from here on the request is the target API's: in-flight, failover, waking
            gw.requests[target] = gw.requests.get(target, 0) + 1
            if entry.mirror is not None and not req.head_only and entry.mirror.take():
                states.append(entry.mirror)
        else:
            route = entry
        if route.mirror is not None and not req.head_only and route.mirror.take():
            states.append(route.mirror)  # HEAD is never mirrored: its answer has no body to compare
        if states:
            gw.mirror(req, states)
        return route

    def send_to(self, upstream: Upstream, *, failover: bool) -> None:
        req = self.current
        assert req is not None
        gw = self.gw
        gw.table.begin(req.api, upstream)
        self.target = upstream
        self.failover = failover
        conn = gw.take_idle(gw.idle, upstream)
        if conn is not None:
            conn.send(self, req, reused=True)
        else:
            gw.spawn(self.connect(upstream))

    async def connect(self, upstream: Upstream) -> None:
        gw = self.gw
        loop = gw.loop
        try:
            async with asyncio.timeout(gw.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _UpstreamConn(gw, upstream), upstream.host, upstream.port
                )
        except Exception as exc:  # noqa: BLE001 - any failure must end as failover or 502, never a hung client
            expected = isinstance(exc, OSError | TimeoutError)  # the replica just died or is wedged
            log.log(
                logging.DEBUG if expected else logging.WARNING,
                "gateway: cannot connect to %s: %r",
                upstream,
                exc,
            )
            if self.target is not upstream:
                return  # the client went away meanwhile
            self.fail_over(upstream, "cannot reach a replica of API %s")
            return
        if self.target is not upstream:
            gw.put_idle(gw.idle, conn)  # the client went away meanwhile
        else:
            conn.send(self, self.current, reused=False)  # type: ignore[arg-type]

    async def wait_for_upstream(self, req: _Request) -> None:
        gw = self.gw
        try:
            upstream = await gw.table.wait_for_upstream(req.api, gw.upstream_timeout)
        except Exception:
            log.warning("gateway: wait_for_upstream failed for %s", req.api, exc_info=True)
            upstream = None
        if self.closed or self.current is not req:
            return
        if upstream is None:
            self.fail(503, f"API {req.api} has no ready replica", b"Retry-After: 1\r\n")
        else:
            self.send_to(upstream, failover=True)

    def retry_fresh(self) -> None:
        """The pooled connection died before answering: same replica, new connection."""
        self.conn = None
        upstream = self.target
        assert upstream is not None
        self.gw.spawn(self.connect(upstream))  # keeps `failover`: that race is no replica failure

    def fail_over(self, upstream: Upstream, message: str) -> None:
        """`upstream` could not be reached, or closed a fresh connection before any response byte.

        Resend the request once to another ready replica of the API, else answer 502 (`message` % api).
        Rolling updates and crashes must not lose requests, and an inference request is safe to resend
        when the replica produced no answer. Once a response byte reached the client it is never resent.
        """
        self.conn = None
        self.release()
        req = self.current
        assert req is not None
        other = None
        if self.failover and not self.replied and not self.closed:
            self.failover = False
            gw = self.gw
            route = gw.table.route(req.api)
            if route is not None:
                other = route.pick_other(gw.table.upstream_in_flight, upstream)
        if other is not None:
            log.debug("gateway: failing a request to API %s over from %s to %s", req.api, upstream, other)
            self.send_to(other, failover=False)
        else:
            self.fail(502, message % req.api)

    def response_done(self, upstream_keep_alive: bool) -> None:
        req = self.current
        assert req is not None
        self.release()
        self.current = None
        self.conn = None
        if not (upstream_keep_alive and req.keep_alive):
            self.closing = True  # the relayed response may say close; either way the client expects it
        self.process()

    def fail(self, status: int, message: str, extra: bytes = b"") -> None:
        """An upstream problem for the current request: error reply if nothing was relayed, else cut."""
        if self.replied:
            self.cut()
            return
        self.release()
        self.conn = None
        if not self.closed:
            self.reply(status, message, extra)
            self.process()

    def cut(self) -> None:
        """The upstream stopped mid-response: close, so the client sees the end (truncated, or read-to-EOF)."""
        self.release()
        self.conn = None
        if not self.closed:
            self.close()

    def release(self) -> None:
        upstream = self.target
        if upstream is not None:
            self.target = None
            self.gw.table.end(self.current.api, upstream)

    def reply(self, status: int, message: str, extra: bytes = b"", close: bool = False) -> None:
        """Answer the current request from the gateway itself with a small JSON error."""
        req = self.current
        if req is not None and req.capture is not None:
            req.capture.settle(None)  # the primary replica gave no answer to compare
        close = close or req is None or not req.keep_alive or self.closing
        body = json.dumps({"error": message}).encode()
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n" % (
            status,
            HTTPStatus(status).phrase.encode(),
            len(body),
            extra,
            b"Connection: close\r\n" if close else b"",
        )
        self.transport.write(head if req is not None and req.head_only else head + body)
        self.current = None
        if close:
            self.closing = True

    def reject(self, status: int) -> None:
        """Answer a request we could not parse or accept, then close without resetting the connection."""
        messages = {
            400: "malformed HTTP request",
            408: "request not received in time",
            413: "request body too large",
            431: "request head too large",
        }
        self.reply(status, messages[status], close=True)
        self.closed = True
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()  # the client sees our answer, even while it is still sending a body
            self.gw.loop.call_later(_LINGER, transport.close)
        else:
            transport.close()

    def close(self) -> None:
        self.closed = True
        self.transport.close()

    def _stop_parsing_after_upgrade(self) -> None:
        """llhttp stops at an Upgrade request; we serve it as plain HTTP and then close the connection."""
        if self.queue:
            self.queue[-1].keep_alive = False
            self.eof = True
        else:
            self.failed = 400


class _UpstreamConn(asyncio.Protocol):
    """One keep-alive connection to a replica; relays one response at a time to a `_Client`."""

    __slots__ = (
        "capture",
        "client",
        "closed",
        "done",
        "got_data",
        "gw",
        "head_only",
        "informational",
        "keep_alive",
        "last_active",
        "parser",
        "paused",
        "reused",
        "transport",
        "upstream",
    )

    def __init__(self, gw: Gateway, upstream: Upstream) -> None:
        self.gw = gw
        self.upstream = upstream
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.parser = httptools.HttpResponseParser(self)
        self.client: _Client | None = None
        self.capture: _Capture | None = None
        self.closed = False
        self.done = False
        self.got_data = False
        self.head_only = False
        self.informational = False
        self.keep_alive = False
        self.paused = False
        self.reused = False
        self.last_active = gw.loop.time()

    def send(self, client: _Client, req: _Request, *, reused: bool) -> None:
        self.client = client
        self.reused = reused
        self.got_data = self.done = False
        self.head_only = req.head_only
        self.capture = req.capture
        client.conn = self
        gw = self.gw
        self.last_active = gw.loop.time()
        gw.busy.add(self)
        self.transport.write(req.head)
        if req.body:
            self.transport.write(req.body)
        if client.writing_paused:
            self.pause()

    # --- transport callbacks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            self.close()  # bytes while idle: the replica is confused; don't reuse this socket
            return
        self.got_data = True
        self.last_active = self.gw.loop.time()
        client.replied = True
        client.transport.write(data)
        try:
            self.parser.feed_data(data)
            capture = self.capture
            if capture is not None:
                capture.add(data, self.done)
            if self.done:
                self._finish(client)
        except Exception as exc:
            bad = isinstance(exc, httptools.HttpParserError)
            log.warning(
                "gateway: %s from %s",
                "bad response" if bad else "error relaying",
                self.upstream,
                exc_info=not bad,
            )
            self.detach()
            self.transport.abort()
            client.cut()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        gw = self.gw
        client = self.client
        if client is None:
            conns = gw.idle.get(self.upstream)
            if conns and self in conns:
                conns.remove(self)
            return
        self.detach()
        if self.got_data:
            client.cut()  # part of the response was relayed: never resent
        elif self.reused:
            log.debug("gateway: pooled connection to %s was closed; retrying on a new one", self.upstream)
            client.retry_fresh()
        else:
            log.debug("gateway: %s closed the connection before answering", self.upstream)
            client.fail_over(self.upstream, "replica of API %s closed the connection")

    # --- parser callbacks ----------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self.informational = True  # 1xx: relayed, but the real response follows
        elif self.head_only:
            self.done = True  # a HEAD response ends with its head, whatever Content-Length says
            self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
        elif not self.done:
            self.done = True
            self.keep_alive = self.parser.should_keep_alive()

    # --- state ---------------------------------------------------------------------------------------

    def _finish(self, client: _Client) -> None:
        self.detach()
        keep_alive = self.keep_alive
        if self.head_only:
            self.parser = httptools.HttpResponseParser(self)  # llhttp still expects the HEAD body
        if self.paused:
            self.resume()
        if keep_alive:
            self.put_back()
        else:
            self.close()
        client.response_done(keep_alive)

    def put_back(self) -> None:
        gw = self.gw
        self.last_active = gw.loop.time()
        gw.put_idle(gw.idle, self)

    def detach(self) -> None:
        self.client = None
        self.gw.busy.discard(self)

    def abandon(self) -> None:
        """The client went away mid-response: stop the replica's work on it rather than read it to the end."""
        self.detach()
        self.transport.abort()

    def time_out(self) -> None:
        client = self.client
        self.detach()
        self.transport.abort()
        if client is not None:
            log.warning("gateway: %s did not answer within %.1f s", self.upstream, self.gw.upstream_timeout)
            client.fail(504, f"replica of API {client.current.api} timed out")

    def pause(self) -> None:
        if not self.paused and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        self.transport.close()


class _ResponseReader:
    """Parses one response to a mirrored request into its status and body (de-chunked), to compare."""

    __slots__ = ("body", "complete", "keep_alive", "parser", "size", "status")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False
        self.keep_alive = False

    def feed(self, data: bytes) -> bool:
        """True once the response is complete; raises `httptools.HttpParserError` for a malformed one."""
        self.parser.feed_data(data)
        return self.complete

    def reply(self, latency: float) -> Reply:
        return Reply(self.status, b"".join(self.body) if self.size <= MAX_COMPARE_BYTES else None, latency)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= MAX_COMPARE_BYTES:
            self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.status < 200:
            self.body.clear()  # a 1xx: the real response follows
            self.size = 0
        else:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()  # only valid until the parser moves on


class _Capture:
    """The primary side of a mirrored request: its response as relayed, and the shadows to compare it with.

    Each pair is recorded once both sides are settled, by whichever settles last, in a callback of its own:
    comparing parses JSON, which must neither hold up the relay nor, should it fail, touch the client.
    """

    __slots__ = ("gw", "primary", "reader", "sent", "settled", "shadows")

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.sent = time.perf_counter()  # the primary is dispatched right after
        self.reader: _ResponseReader | None = _ResponseReader()
        self.shadows: list[_Shadow] = []
        self.settled = False
        self.primary: Reply | None = None

    def add(self, data: bytes, done: bool) -> None:
        """Response bytes just relayed to the client; `done`: they complete the response."""
        reader = self.reader
        if reader is not None:
            try:
                reader.feed(data)
            except httptools.HttpParserError:
                self.reader = reader = None  # the client got it anyway; it just cannot be compared
        if done:
            self.settle(
                reader.reply(time.perf_counter() - self.sent)
                if reader is not None and reader.complete
                else None
            )

    def settle(self, primary: Reply | None) -> None:
        if self.settled:
            return
        self.settled = True
        self.primary = primary
        self.reader = None
        call_soon = self.gw.loop.call_soon
        for shadow in self.shadows:
            if shadow.settled:
                call_soon(shadow.tally.record, primary, shadow.result)


class _Shadow:
    """One mirrored copy of a request, on its way to a shadow replica and counted in flight there."""

    __slots__ = ("body", "capture", "gw", "head", "result", "sent", "settled", "tally", "upstream")

    def __init__(
        self, gw: Gateway, capture: _Capture, tally: ShadowTally, upstream: Upstream, req: _Request
    ) -> None:
        self.gw = gw
        self.capture = capture
        self.tally = tally
        self.upstream = upstream
        self.head = req.head  # the exact upstream request: rewritten path, forwarded headers, body
        self.body = req.body
        self.sent = 0.0
        self.settled = False
        self.result: Reply | None = None

    def start(self) -> None:
        gw = self.gw
        self.sent = time.perf_counter()
        try:
            conn = gw.take_idle(gw.mirror_idle, self.upstream)
            if conn is not None:
                conn.send(self, reused=True)
            else:
                gw.spawn(self.connect())
        except Exception:
            log.warning("gateway: cannot mirror a request to %s", self.upstream, exc_info=True)
            self.finish(None)

    async def connect(self) -> None:
        gw = self.gw
        upstream = self.upstream
        try:
            async with asyncio.timeout(gw.connect_timeout):
                _, conn = await gw.loop.create_connection(
                    lambda: _MirrorConn(gw, upstream), upstream.host, upstream.port
                )
        except asyncio.CancelledError:  # the gateway is stopping
            self.finish(None)
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is a shadow error, never the client's
            log.debug("gateway: cannot connect to shadow %s: %r", upstream, exc)
            self.finish(None)
            return
        conn.send(self, reused=False)

    def finish(self, result: Reply | None) -> None:
        """The shadow answered (`result`) or failed (None): no longer in flight; compare when both are in."""
        if self.settled:
            return
        self.settled = True
        self.result = result
        gw = self.gw
        gw.mirrors_in_flight -= 1
        gw.table.end_mirror(self.upstream)
        capture = self.capture
        if capture.settled:
            gw.loop.call_soon(self.tally.record, capture.primary, result)


class _MirrorConn(asyncio.Protocol):
    """A keep-alive connection to a shadow replica; carries one mirrored request at a time.

    The answer is read and compared, never relayed: whatever goes wrong here ends as a shadow error and
    touches no client.
    """

    __slots__ = (
        "closed",
        "got_data",
        "gw",
        "last_active",
        "reader",
        "reused",
        "shadow",
        "transport",
        "upstream",
    )

    def __init__(self, gw: Gateway, upstream: Upstream) -> None:
        self.gw = gw
        self.upstream = upstream
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.shadow: _Shadow | None = None
        self.reader: _ResponseReader  # set by send(), which always follows the connect
        self.closed = False
        self.got_data = False
        self.reused = False
        self.last_active = gw.loop.time()

    def send(self, shadow: _Shadow, *, reused: bool) -> None:
        self.shadow = shadow
        self.reused = reused
        self.got_data = False
        self.reader = _ResponseReader()
        gw = self.gw
        self.last_active = gw.loop.time()
        gw.busy.add(self)
        self.transport.write(shadow.head)
        if shadow.body:
            self.transport.write(shadow.body)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        shadow = self.shadow
        if shadow is None:
            self.close()  # bytes while idle: don't reuse this socket
            return
        self.got_data = True
        self.last_active = self.gw.loop.time()
        reader = self.reader
        try:
            complete = reader.feed(data)
        except httptools.HttpParserError:
            log.debug("gateway: bad response from shadow %s", self.upstream)
            self.detach()
            self.transport.abort()
            shadow.finish(None)
            return
        if complete:
            self.detach()
            if reader.keep_alive:
                self.gw.put_idle(self.gw.mirror_idle, self)
            else:
                self.close()
            shadow.finish(reader.reply(time.perf_counter() - shadow.sent))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        shadow = self.shadow
        if shadow is None:
            conns = self.gw.mirror_idle.get(self.upstream)
            if conns and self in conns:
                conns.remove(self)
            return
        self.detach()
        if self.reused and not self.got_data and not self.gw.stopping:
            self.gw.spawn(shadow.connect())  # the keep-alive race: a new connection, as for the primary
        else:
            log.debug("gateway: shadow %s closed the connection before answering", self.upstream)
            shadow.finish(None)

    def time_out(self) -> None:
        shadow = self.shadow
        self.detach()
        self.transport.abort()
        if shadow is not None:
            log.debug(
                "gateway: shadow %s did not answer within %.1f s", self.upstream, self.gw.upstream_timeout
            )
            shadow.finish(None)

    def detach(self) -> None:
        self.shadow = None
        self.gw.busy.discard(self)

    def close(self) -> None:
        self.closed = True
        self.transport.close()


_Conn = TypeVar("_Conn", _UpstreamConn, _MirrorConn)
