"""Traffic mirroring through the gateway over real loopback sockets: a share of requests is copied to a
shadow whose answers are compared, never relayed.

Upstreams are small raw HTTP/1.1 servers on their own loop threads, so a test decides per request what a
replica does: answer (after a delay, chunked or not), answer 500, close the connection unanswered, or
never answer. The query string steers the shadow (`?i=3&shadow=differ`): the gateway forwards the same
path, query, headers and body to both sides, and the primary ignores it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools
import pytest

from cortex_flows.backends.local.routing import Mirror, RoutingTable, Upstream
from cortex_flows.rollout.shadow import ShadowReport
from tests.helpers import LoopServer, wait_for
from tests.integration.test_gateway import GatewayThread, read_all

pytestmark = pytest.mark.timeout(60)

CLOSE = "close"  # close the connection without answering
HANG = "hang"  # never answer
Action = tuple[float, bytes] | str  # (delay, response bytes), CLOSE or HANG


def http_response(status: int, body: bytes, *, chunked: bool = False) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n" % (
        status,
        HTTPStatus(status).phrase.encode(),
    )
    if not chunked:
        return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:half], body[half:]) if c)
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


class RawServer(LoopServer):
    """A keep-alive HTTP/1.1 server answering each request as `behave(url, body)` says; records requests."""

    def __init__(self, behave: Callable[[bytes, bytes], Action]) -> None:
        self.behave = behave
        self.seen: list[tuple[bytes, bytes]] = []  # (url, body) of every request, in arrival order
        self.connections = 0
        super().__init__()

    def _protocol(self) -> asyncio.Protocol:
        outer = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                outer.connections += 1
                self.transport: asyncio.Transport = transport  # type: ignore[assignment]
                self.parser = httptools.HttpRequestParser(self)
                self.url = self.body = b""

            def data_received(self, data: bytes) -> None:
                self.parser.feed_data(data)

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_body(self, body: bytes) -> None:
                self.body += body

            def on_message_complete(self) -> None:
                url, body = self.url, self.body
                self.url = self.body = b""
                outer.seen.append((url, body))
                action = outer.behave(url, body)
                if action == CLOSE:
                    self.transport.close()
                elif action != HANG:
                    delay, data = action  # type: ignore[misc]
                    outer.loop.call_later(delay, self.write, data)

            def write(self, data: bytes) -> None:
                if not self.transport.is_closing():
                    self.transport.write(data)

        return Proto()


def params(url: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url.decode()).query).items()}


def prediction(url: bytes, label: str = "a") -> bytes:
    return json.dumps({"prediction": label, "i": int(params(url).get("i", "0"))}).encode()


BIG = 1536 * 1024  # above the gateway's 1 MiB comparison limit


def primary_answer(url: bytes, body: bytes) -> Action:
    """The primary's response; the test computes the same to check what clients got, byte for byte."""
    p = params(url)
    if "big" in p:
        return 0.0, http_response(200, b'{"p": "%s"}' % (b"x" * BIG))
    return 0.0, http_response(200, prediction(url), chunked="chunked" in p)


def shadow_answer(url: bytes, body: bytes) -> Action:
    mode = params(url).get("shadow", "agree")
    if mode == "agree":  # the same JSON, always with Content-Length: chunked primaries still agree
        return (
            primary_answer(url, body) if "big" in params(url) else (0.0, http_response(200, prediction(url)))
        )
    if mode == "differ":
        return 0.0, http_response(200, prediction(url, "b"))
    if mode == "error":
        return 0.0, http_response(500, b'{"error": "boom"}')
    if mode == "slow":
        return 0.15, http_response(200, prediction(url))
    return {"close": CLOSE, "hang": HANG}[mode]


@pytest.fixture(scope="module")
def primary() -> Iterator[RawServer]:
    server = RawServer(primary_answer)
    yield server
    server.stop()


@pytest.fixture
def shadow() -> Iterator[RawServer]:
    server = RawServer(shadow_answer)
    yield server
    server.stop()


@contextlib.contextmanager
def mirrored_gateway(
    primary: RawServer, shadow: RawServer, share: float, **options: Any
) -> Iterator[GatewayThread]:
    """A gateway whose API `iris` mirrors `share` of its requests to `shadow`."""
    with GatewayThread(RoutingTable(), **options) as gw:
        mirror = Mirror(share, (shadow.upstream,))
        gw.call(lambda: gw.table.set_route("iris", "/iris", [(100, [primary.upstream])], mirror=mirror))
        yield gw


def send(port: int, i: int, query: str = "", body: bytes = b'{"features": [1, 2]}') -> tuple[bytes, float]:
    """One request on its own connection; the raw response bytes, and how long they took."""
    url = f"/iris/predict?i={i}{query}"
    data = (
        f"POST {url} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        raw = read_all(s)
    return raw, time.perf_counter() - started


def expected(i: int, query: str = "") -> bytes:
    """What the primary itself sends for request `i`: clients must get exactly this."""
    _, data = primary_answer(f"/predict?i={i}{query}".encode(), b"")  # type: ignore[misc]
    return data


def report(gw: GatewayThread, name: str = "iris") -> ShadowReport:
    got = gw.call(gw.table.shadow_report, name)
    assert got is not None
    return got


def settled(gw: GatewayThread, n: int, name: str = "iris") -> ShadowReport:
    """The report once `n` mirrored requests have finished (their shadows answered or failed)."""
    return wait_for(
        lambda: (r := report(gw, name)).finished >= n and r,
        timeout=15,
        what=f"{n} mirrored requests to finish",
    )


# --- share, comparison, errors ---------------------------------------------------------------------------


MODES = ("agree", "differ", "error", "close")


def test_full_mirror_compares_every_request_and_never_changes_responses(
    primary: RawServer, shadow: RawServer
) -> None:
    n = 40
    with mirrored_gateway(primary, shadow, 1.0) as gw:
        for i in range(n):
            query = f"&shadow={MODES[i % 4]}" + ("&chunked=1" if i % 8 == 0 else "")
            raw, _ = send(gw.port, i, query)
            assert raw == expected(i, query), i  # byte for byte the primary's, whatever the shadow did
        r = settled(gw, n)
        assert (r.mirrored, r.skipped, r.finished) == (n, 0, n)
        assert (r.compared, r.agreed, r.shadow_errors, r.uncompared) == (n // 2, n // 4, n // 2, 0)
        assert r.agreement_rate == 0.5
        diff = 'primary 200 {"prediction": "a", "i": %d} vs shadow 200 {"prediction": "b", "i": %d}'
        assert len(r.examples) == 5 and set(r.examples) <= {diff % (i, i) for i in range(1, n, 4)}
        assert r.primary_latency_buckets[-1][1] == r.shadow_latency_buckets[-1][1] == n // 2
        # The shadow got the very request the primary got: rewritten path, query, body.
        mirrored = {url: body for url, body in shadow.seen}
        assert [(url, mirrored[url]) for url, _ in primary.seen[-n:]] == primary.seen[-n:]
        assert gw.gateway.mirrors_in_flight == 0 and gw.gateway.in_flight(shadow.upstream) == 0
        assert gw.gateway.api_requests("iris") == n


def test_half_mirror_is_exactly_half_and_survives_route_updates(
    primary: RawServer, shadow: RawServer
) -> None:
    n = 40
    mirror = Mirror(0.5, (shadow.upstream,))
    with mirrored_gateway(primary, shadow, 0.5) as gw:
        for i in range(n):
            if i == n // 2 + 1:  # replica churn mid-way: the running share and the report carry on
                gw.call(
                    lambda: gw.table.set_route("iris", "/iris", [(100, [primary.upstream])], mirror=mirror)
                )
            assert send(gw.port, i)[0] == expected(i)
        r = settled(gw, n // 2)
        assert (r.mirrored, r.compared, r.agreed) == (n // 2, n // 2, n // 2)
        assert sorted(int(params(url)["i"]) for url, _ in shadow.seen) == list(range(1, n, 2))
        assert shadow.connections <= n // 4  # shadow connections are kept alive and reused

        gw.call(lambda: gw.table.set_route("iris", "/iris", [(100, [primary.upstream])]))  # mirror off
        send(gw.port, n)
        assert report(gw).mirrored == n // 2  # the report stays, counting since the mirror was first set
        assert len(shadow.seen) == n // 2


def test_mirror_share_is_exact_for_any_fraction() -> None:
    table = RoutingTable()
    up = Upstream("127.0.0.1", 9)
    table.set_route("api", "/api", [(100, [up])], mirror=Mirror(0.3, (up,)))
    route = table.route("api")
    assert route is not None and route.mirror is not None
    taken = [route.mirror.take() for _ in range(1000)]
    assert sum(taken) == 300
    assert all(sum(taken[k : k + 10]) == 3 for k in range(0, 1000, 10))  # evenly spread
    for share in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="mirror share"):
            table.set_route("api", "/api", [(100, [up])], mirror=Mirror(share, (up,)))
    assert table.shadow_report("never") is None
    table.remove_route("api")
    assert table.shadow_report("api") is None  # a removed route's report goes with it


def test_slow_shadow_latency_is_measured(primary: RawServer, shadow: RawServer) -> None:
    n = 10
    with mirrored_gateway(primary, shadow, 1.0) as gw:
        for i in range(n):
            assert send(gw.port, i, "&shadow=slow")[0] == expected(i, "&shadow=slow")
        r = settled(gw, n)
        assert (r.compared, r.agreed) == (n, n)
        shadow_p50, primary_p50 = r.latency_quantile("shadow", 0.5), r.latency_quantile("primary", 0.5)
        assert shadow_p50 is not None and primary_p50 is not None
        assert 0.1 <= shadow_p50 <= 0.25 and primary_p50 < 0.05


def test_large_responses_are_relayed_but_not_compared(primary: RawServer, shadow: RawServer) -> None:
    with mirrored_gateway(primary, shadow, 1.0) as gw:
        raw, _ = send(gw.port, 0, "&big=1")
        assert raw == expected(0, "&big=1")
        r = settled(gw, 1)
        assert (r.uncompared, r.compared, r.shadow_errors) == (1, 0, 0)


# --- a shadow that hangs ---------------------------------------------------------------------------------


def test_hanging_shadow_delays_no_client_and_counts_in_flight_until_timeout(
    primary: RawServer, shadow: RawServer
) -> None:
    n = 20
    with mirrored_gateway(primary, shadow, 1.0, upstream_timeout=2.0) as gw:
        baseline = [send(gw.port, i)[1] for i in range(n)]  # the shadow answers these at once
        settled(gw, n)
        hung = []
        for i in range(n):
            raw, seconds = send(gw.port, i, "&shadow=hang")
            assert raw == expected(i, "&shadow=hang")
            hung.append(seconds)
        assert max(hung) < 0.5, hung  # never anywhere near the shadow's 2 s timeout
        assert statistics.median(hung) < statistics.median(baseline) + 0.02, (hung, baseline)
        # Held copies count on the shadow replica (a drain waits for them), never as requests of the API.
        assert gw.call(lambda: gw.gateway.in_flight(shadow.upstream)) == n
        assert gw.call(lambda: (gw.gateway.mirrors_in_flight, gw.gateway.api_in_flight("iris"))) == (n, 0)
        r = settled(gw, 2 * n)  # they time out after upstream_timeout
        assert (r.shadow_errors, r.compared) == (n, n)
        assert gw.call(lambda: (gw.gateway.in_flight(shadow.upstream), gw.gateway.mirrors_in_flight)) == (
            0,
            0,
        )


def test_mirrors_in_flight_are_bounded(primary: RawServer, shadow: RawServer) -> None:
    with mirrored_gateway(primary, shadow, 1.0, max_mirrors_in_flight=5) as gw:
        for i in range(12):
            assert send(gw.port, i, "&shadow=hang")[0] == expected(i, "&shadow=hang")
        r = report(gw)
        assert (r.mirrored, r.skipped) == (5, 7)
        wait_for(lambda: len(shadow.seen) == 5, timeout=5, what="the shadow to receive its 5 copies")
