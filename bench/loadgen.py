"""A closed-loop HTTP/1.1 keep-alive load generator (asyncio + httptools), reused by the benchmarks.

Each of `connections` sockets sends one request, waits for the whole response, records its latency and sends
the next, until the request budget or the deadline runs out. The loop is driven from the protocol callbacks
(no task or future per request), so one Python process can saturate a Python server on a 2-core machine,
which an httpx client cannot.

    from loadgen import run_load
    result = await run_load("127.0.0.1", 8888, "/iris", b'{"x": 1}', connections=16, duration=5)
    print(result.throughput, result.p50_ms)

    python bench/loadgen.py --url http://127.0.0.1:8888/iris --body '{"x":1}' -c 16 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

DEFAULT_MAX_SECONDS = 60.0  # deadline when only a request count is given
_DRAIN_SECONDS = 5.0  # after the deadline, how long outstanding requests may still finish


@dataclass
class LoadResult:
    """What a run measured. Latencies cover completed responses of any status."""

    requests: int  # responses received (any status)
    errors: dict[str, int] = field(default_factory=dict)  # "503": n per non-2xx status; else "connect",
    # "reset" (closed mid-request), "timeout" (unanswered after the drain period), "bad-response"
    wall_seconds: float = 0.0
    throughput: float = 0.0  # responses per second over the wall time
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0

    @property
    def ok(self) -> int:
        """Responses with a 2xx status."""
        return self.requests - sum(n for k, n in self.errors.items() if k.isdigit())

    def summary(self) -> str:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"{self.requests} requests in {self.wall_seconds:.2f} s = {self.throughput:.0f} req/s; "
            f"latency p50 {self.p50_ms:.2f} ms, p90 {self.p90_ms:.2f} ms, p99 {self.p99_ms:.2f} ms; "
            f"errors: {errors}"
        )


class _Run:
    """Shared budget, deadline and results of one `run_load` call."""

    def __init__(
        self, host: str, port: int, request: bytes, head_only: bool, budget: int | None, deadline: float
    ) -> None:
        self.host = host
        self.port = port
        self.request = request
        self.head_only = head_only
        self.budget = budget
        self.deadline = deadline
        self.loop = asyncio.get_running_loop()
        self.issued = 0
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.conns: set[_Conn] = set()
        self.connecting = 0
        self.finished = self.loop.create_future()

    def may_send(self) -> bool:
        if self.budget is not None and self.issued >= self.budget:
            return False
        return time.monotonic() < self.deadline

    def open_connection(self) -> None:
        """One more connection; it starts sending as soon as it is connected."""
        self.connecting += 1
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError:
            self.errors["connect"] += 1
        finally:
            self.connecting -= 1
            self.check_finished()

    def check_finished(self) -> None:
        if not self.conns and not self.connecting and not self.finished.done():
            self.finished.set_result(None)


class _Conn(asyncio.Protocol):
    """One client socket running the closed loop from its callbacks."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.head_only = run.head_only
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.outstanding = False
        self.complete = False
        self.status = 0
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.run.conns.add(self)
        self.send_next()

    def send_next(self) -> None:
        run = self.run
        if not run.may_send():
            self.transport.close()  # type: ignore[union-attr]
            return
        run.issued += 1
        self.outstanding = True
        self.complete = False
        self.sent_at = time.perf_counter()
        self.transport.write(run.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.run.errors["bad-response"] += 1
            self.outstanding = False
            self.transport.close()  # type: ignore[union-attr]
            return
        if self.complete:
            run = self.run
            run.latencies.append(time.perf_counter() - self.sent_at)
            if not 200 <= self.status < 300:
                run.errors[str(self.status)] += 1
            self.outstanding = False
            if self.keep_alive:
                self.send_next()
            else:
                self.transport.close()  # type: ignore[union-attr]
                if run.may_send():
                    run.open_connection()  # the server closed: carry on with a new connection

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.head_only:
            self.on_message_complete()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_only:
            self.parser = httptools.HttpResponseParser(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.outstanding:
            self.outstanding = False
            self.run.errors["reset"] += 1
        self.run.conns.discard(self)
        self.run.check_finished()


async def run_load(
    host: str,
    port: int,
    path: str,
    body: bytes = b"",
    *,
    connections: int,
    duration: float | None = None,
    requests: int | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> LoadResult:
    """Drive `connections` keep-alive connections in a closed loop and measure.

    Stops after `requests` requests or `duration` seconds, whichever comes first (with only `requests`,
    the deadline is DEFAULT_MAX_SECONDS). Requests still outstanding at the deadline get _DRAIN_SECONDS
    to finish, then count as "timeout". `method` defaults to POST with a body, else GET.
    """
    if duration is None and requests is None:
        raise ValueError("give duration, requests, or both")
    method = method or ("POST" if body else "GET")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    if body and not any(k.lower() == "content-type" for k in headers or {}):
        lines.append("Content-Type: application/json")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    deadline = time.monotonic() + (duration if duration is not None else DEFAULT_MAX_SECONDS)
    run = _Run(host, port, request, method == "HEAD", requests, deadline)
    wall_start = time.perf_counter()
    for _ in range(connections):
        run.open_connection()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(run.finished), deadline - time.monotonic() + _DRAIN_SECONDS)
    wall = time.perf_counter() - wall_start
    for conn in list(run.conns):  # still waiting after the drain period
        if conn.outstanding:
            conn.outstanding = False
            run.errors["timeout"] += 1
        conn.transport.abort()  # type: ignore[union-attr]
    lat = sorted(run.latencies)
    n = len(lat)

    def quantile(q: float) -> float:
        return lat[min(n - 1, int(q * n))] * 1000 if n else 0.0

    return LoadResult(
        requests=n,
        errors=dict(run.errors),
        wall_seconds=wall,
        throughput=n / wall if wall > 0 else 0.0,
        p50_ms=quantile(0.50),
        p90_ms=quantile(0.90),
        p99_ms=quantile(0.99),
    )


def measure(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    connections: int,
    duration: float,
    requests: int | None = None,
    warmup: float = 0.0,
) -> LoadResult:
    """`warmup` seconds of the same load (discarded: it fills pools and caches), then one measured run.

    The one entry point the benchmarks use to load a server, so every server sees exactly the same client.
    """

    async def both() -> LoadResult:
        if warmup:
            warm = await run_load(host, port, path, body, connections=connections, duration=warmup)
            if warm.ok == 0:
                raise RuntimeError(f"warm-up on port {port} got no 2xx: {warm.summary()}")
        return await run_load(host, port, path, body, connections=connections, duration=duration, requests=requests)

    return asyncio.run(both())


def use_uvloop() -> None:
    """Install uvloop's event loop policy when available (it roughly doubles what one process can drive)."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="http://host:port/path (plain HTTP only)")
    ap.add_argument("--body", default="", help="request body; POST when given")
    ap.add_argument("--method", default=None)
    ap.add_argument("-c", "--connections", type=int, default=16)
    ap.add_argument("-d", "--duration", type=float, default=None, help="seconds")
    ap.add_argument("-n", "--requests", type=int, default=None, help="request budget")
    ap.add_argument("-H", "--header", action="append", default=[], help="'Name: value', repeatable")
    args = ap.parse_args()
    url = urlsplit(args.url)
    if url.scheme != "http" or not url.hostname:
        ap.error("--url must be http://host:port/path")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    headers = dict(h.split(":", 1) for h in args.header)
    duration = args.duration if args.duration is not None or args.requests is not None else 5.0
    use_uvloop()
    result = asyncio.run(
        run_load(
            url.hostname,
            url.port or 80,
            path,
            args.body.encode(),
            connections=args.connections,
            duration=duration,
            requests=args.requests,
            headers={k.strip(): v.strip() for k, v in headers.items()},
            method=args.method,
        )
    )
    print(result.summary())


if __name__ == "__main__":
    main()
