"""Traffic splitters through the gateway over real loopback sockets: an endpoint that sends each request to
one of several APIs by weight (Cortex's TrafficSplitter), served as that API's own request."""

from __future__ import annotations

import http.client
import json
import math
from collections import Counter
from collections.abc import Iterator

import pytest

from cortex_flows.backends.local.routing import Mirror, RoutingTable, Upstream
from tests.helpers import wait_for
from tests.integration.test_gateway import ClosingServer, GatewayThread, request
from tests.integration.test_gateway_mirror import Action, RawServer, http_response, params

pytestmark = pytest.mark.timeout(60)


def api_server(name: str) -> RawServer:
    """An API's replica: answers which API it is and what it got, or with `?i=` a prediction."""

    def answer(url: bytes, body: bytes) -> Action:
        query = params(url)
        if "i" in query:  # for mirror comparisons: the shadow disagrees on every 5th
            i = int(query["i"])
            label = "b" if name == "shadow" and i % 5 == 0 else "a"
            return 0.0, http_response(200, json.dumps({"prediction": label, "i": i}).encode())
        reply = {"api": name, "url": url.decode(), "body": body.decode()}
        return 0.0, http_response(200, json.dumps(reply).encode())

    return RawServer(answer)


@pytest.fixture(scope="module")
def apis() -> Iterator[dict[str, RawServer]]:
    servers = {name: api_server(name) for name in ("a", "b", "c", "shadow")}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def gw(apis: dict[str, RawServer]) -> Iterator[GatewayThread]:
    """A gateway with APIs a, b, c (one replica each) and a splitter `s` at /split sending 50/30/20."""
    with GatewayThread(RoutingTable()) as g:

        def setup() -> None:
            for name in ("a", "b", "c"):
                g.table.set_route(name, f"/{name}", [(100, [apis[name].upstream])])
            g.table.set_split("s", "/split", [(50, "a"), (30, "b"), (20, "c")])

        g.call(setup)
        yield g


def post(conn: http.client.HTTPConnection, path: str, body: bytes = b"{}") -> tuple[int, dict]:
    conn.request("POST", path, body=body)
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def test_split_shares_are_exact_and_within_binomial_tolerance(gw: GatewayThread) -> None:
    n = 2000
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    seen: Counter[str] = Counter()
    for _ in range(n):
        status, got = post(conn, "/split")
        assert status == 200
        seen[got["api"]] += 1
    conn.close()
    for api, p in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(seen[api] - p * n) <= 4 * math.sqrt(n * p * (1 - p)), seen
    assert seen == {"a": 1000, "b": 600, "c": 400}  # smooth weighted round robin: exact over every 10
    gateway = gw.gateway
    assert [gateway.api_requests(x) for x in ("s", "a", "b", "c")] == [n, 1000, 600, 400]
    assert gateway.api_in_flight("a") == 0 and gateway.api_in_flight("s") == 0


def test_split_rewrites_the_path_as_for_apis(gw: GatewayThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    urls = {post(conn, "/split/predict?x=1&y=a%20b", b'{"k": 1}')[1]["url"] for _ in range(10)}
    assert urls == {"/predict?x=1&y=a%20b"}
    assert post(conn, "/split")[1]["url"] == "/"
    assert post(conn, "/a/x")[1] == {"api": "a", "url": "/x", "body": "{}"}  # APIs unchanged
    conn.close()


def test_missing_target_is_503_naming_splitter_and_api(gw: GatewayThread) -> None:
    gw.call(gw.table.remove_route, "c")
    outcomes: Counter[object] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    for _ in range(10):
        conn.request("POST", "/split", body=b"{}")
        resp = conn.getresponse()
        got = json.loads(resp.read())
        if resp.status == 503:
            assert resp.getheader("Retry-After") == "1"
            outcomes[got["error"]] += 1
        else:
            outcomes[got["api"]] += 1
    conn.close()
    assert outcomes == {"a": 5, "b": 3, "API c of traffic splitter s is not deployed": 2}

    gw.call(gw.table.remove_route, "s")  # splitters are removed like APIs
    assert request(gw.port, "POST", "/split", b"{}")[0] == 404


def test_split_validation() -> None:
    table = RoutingTable()
    up = Upstream("127.0.0.1", 9)
    table.set_route("a", "/a", [(100, [up])])
    with pytest.raises(ValueError, match="sum to 100"):
        table.set_split("s", "/s", [(50, "a"), (40, "b")])
    with pytest.raises(ValueError, match=r"0\.\.100"):
        table.set_split("s", "/s", [(150, "a"), (-50, "b")])
    with pytest.raises(ValueError, match="already used by a"):
        table.set_split("s", "/a", [(100, "a")])
    with pytest.raises(ValueError, match="is an API"):
        table.set_split("a", "/s", [(100, "a")])
    table.set_split("s", "/s", [(100, "a"), (0, "b")])
    with pytest.raises(ValueError, match="is a traffic splitter"):
        table.set_route("s", "/other", [(100, [up])])
    with pytest.raises(ValueError, match="already used by s"):
        table.set_route("b", "/s", [(100, [up])])
    split = table.split("s")
    assert split is not None and {split.pick() for _ in range(10)} == {"a"}  # weight 0 gets nothing
    table.set_split("s", "/s2", [(100, "a")])  # endpoint moved
    hit = table.resolve(b"/s2/x")
    assert table.resolve(b"/s/x") is None and hit is not None and (hit[0].api, hit[1]) == ("s", b"/x")


def test_split_request_is_the_targets_for_failover_and_waking(apis: dict[str, RawServer]) -> None:
    """Once a target is picked, in-flight counts, failover and scale-from-zero all use the target API."""
    woken: list[str] = []

    class Waking(RoutingTable):
        async def wait_for_upstream(self, api: str, timeout: float) -> Upstream | None:
            woken.append(api)
            return apis["b"].upstream

    closing = ClosingServer()
    try:
        with GatewayThread(Waking()) as gw:

            def setup() -> None:
                gw.table.set_route("a", "/a", [(100, [closing.upstream, apis["a"].upstream])])
                gw.table.set_route("b", "/b", [(100, [])])  # scaled to zero
                gw.table.set_split("s", "/split", [(50, "a"), (50, "b")])

            gw.call(setup)
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            got = Counter(post(conn, "/split")[1]["api"] for _ in range(10))
            conn.close()
            assert got == {"a": 5, "b": 5}  # a's closing replica failed over to a's other one
            assert woken == ["b"] * 5
            assert closing.requests >= 1
    finally:
        closing.stop()


def test_split_with_a_mirror_to_an_api_records_a_shadow_report(gw: GatewayThread, apis: dict) -> None:
    n = 50

    def setup() -> None:
        gw.table.set_route("shadow", "/shadow", [(100, [apis["shadow"].upstream])])
        gw.table.set_split("s", "/split", [(100, "a")], mirror=Mirror(1.0, "shadow"))

    gw.call(setup)
    shadow_seen = len(apis["shadow"].seen)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    for i in range(n):
        assert post(conn, f"/split/predict?i={i}") == (200, {"prediction": "a", "i": i})
    conn.close()
    report = wait_for(
        lambda: (r := gw.call(gw.table.shadow_report, "s")) is not None and r.finished == n and r,
        timeout=15,
        what="the mirrored requests to finish",
    )
    assert (report.mirrored, report.compared, report.agreed, report.shadow_errors) == (n, n, 40, 0)
    assert report.agreement_rate == 0.8
    diff = 'primary 200 {"prediction": "a", "i": %d} vs shadow 200 {"prediction": "b", "i": %d}'
    assert len(report.examples) == 5 and set(report.examples) <= {diff % (i, i) for i in range(0, n, 5)}
    copies = sorted(url for url, _ in apis["shadow"].seen[shadow_seen:])  # copies race each other: any order
    assert copies == sorted(b"/predict?i=%d" % i for i in range(n))
    assert gw.call(gw.table.shadow_report, "a") is None  # the target API itself mirrors nothing
    assert [gw.gateway.api_requests(x) for x in ("s", "a", "shadow")] == [n, n, 0]  # copies are no requests
