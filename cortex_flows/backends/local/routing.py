"""The gateway's routing table: which replicas serve which endpoint, with version weights and in-flight counts.

The agent owns one `RoutingTable` and rewrites an API's route whenever replicas become ready, leave, or
traffic weights change; the gateway reads it on every request. Everything here runs on the gateway's event
loop thread and does no I/O, so a lookup is a few dict operations.

In-flight counts live here rather than in the gateway because replica choice (least in-flight) needs them,
and because they must outlive route updates: a replica removed from the table keeps its count until its
last request finishes, which is exactly what the agent waits for when it drains a replica.

Two kinds of entries share the endpoints: an API's `Route` (version groups of replicas), and a traffic
splitter's `Split`, which picks one of its target APIs per request and lets that API's route pick the
replica. Either may carry a `Mirror`: a share of its requests is copied to a shadow whose answers the
gateway compares with the primary's into a `ShadowTally` kept here per name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

from cortex_flows.rollout.shadow import ShadowReport, ShadowTally
from cortex_flows.serving.metrics import DURATION_BUCKETS

_SHARE_UNIT = 1_000_000  # mirror shares are counted in millionths, so the mirrored fraction is exact


K = TypeVar("K")


class Upstream(NamedTuple):
    """One replica's HTTP server. A tuple, so hashing and equality are C-fast on the request path."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Mirror(NamedTuple):
    """Copy `share` (0 < share <= 1) of a route's requests to a shadow, whose answers are only compared.

    `target` is either the ready replicas of one version (a canary's shadow step), or the name of another
    API whose route picks the replica at request time (a traffic splitter's shadow).
    """

    share: float
    target: tuple[Upstream, ...] | str


class _Group:
    """One version of an API: its traffic weight and its ready replicas."""

    __slots__ = ("replicas", "rr", "weight")

    def __init__(self, weight: int, replicas: Sequence[Upstream]) -> None:
        self.weight = weight
        self.replicas = tuple(dict.fromkeys(replicas))  # de-duplicated, order kept
        self.rr = 0  # where the next tie-break scan starts, so ties rotate


class Route:
    """An API's endpoint and its version groups; picks a replica per request.

    Groups are chosen by smooth weighted round robin (nginx's algorithm): deterministic and exact over any
    window of `sum(weights)` picks, so an 80/20 canary really gets 80/20 even at low traffic. Groups without
    replicas or with weight 0 are left out, which hands their share to the others in proportion.
    """

    __slots__ = ("_current", "_eligible", "_weights", "api", "direct", "endpoint", "groups", "mirror")

    def __init__(self, api: str, endpoint: str, groups: list[_Group], mirror: MirrorState | None) -> None:
        self.api = api
        self.endpoint = endpoint
        self.groups = groups
        self.mirror = mirror
        self.direct = mirror is None  # the gateway's one check for its fast path: no mirror, no splitter
        self._eligible = [g for g in groups if g.weight > 0 and g.replicas]
        self._weights = [g.weight for g in self._eligible]
        self._current = [0] * len(self._eligible)

    def pick(self, in_flight: dict[Upstream, int]) -> Upstream | None:
        """The replica for the next request, or None when no version with weight has a ready replica."""
        eligible = self._eligible
        if len(eligible) == 1:
            group = eligible[0]
        elif not eligible:
            return None
        else:
            group = eligible[_smooth_pick(self._weights, self._current)]
        return _least_in_flight(group, in_flight)

    def pick_other(self, in_flight: dict[Upstream, int], exclude: Upstream) -> Upstream | None:
        """A failover replica: the least busy one of any weighted version, other than `exclude`."""
        best: Upstream | None = None
        best_n = 0
        for g in self._eligible:
            for u in g.replicas:
                if u != exclude and (best is None or in_flight.get(u, 0) < best_n):
                    best, best_n = u, in_flight.get(u, 0)
        return best

    def weights(self) -> list[int]:
        """Weights of the groups that take traffic, in order."""
        return self._weights

    def carry_position(self, old: Route) -> None:
        """Continue `old`'s weighted rotation, so frequent route updates keep the split exact."""
        self._current = old._current

    def upstreams(self) -> set[Upstream]:
        """Every replica the route may send to, its mirror's included (the gateway pools their sockets)."""
        own = {u for g in self.groups for u in g.replicas}
        return own | self.mirror.upstreams() if self.mirror is not None else own


class Split:
    """A traffic splitter's endpoint (Cortex's TrafficSplitter): each request goes to one target API.

    Targets are chosen by the same smooth weighted round robin as a route's versions, so a 50/30/20 split
    is exact over every 10 requests; the gateway then serves the request as the chosen API's own.
    """

    __slots__ = ("_current", "_names", "_weights", "api", "direct", "endpoint", "mirror", "targets")

    def __init__(
        self, name: str, endpoint: str, targets: list[tuple[int, str]], mirror: MirrorState | None
    ) -> None:
        self.api = name  # the attribute name routes use: the gateway counts requests by it
        self.endpoint = endpoint
        self.targets = targets
        self.mirror = mirror
        self.direct = False
        self._weights = [w for w, _ in targets if w > 0]
        self._names = [t for w, t in targets if w > 0]
        self._current = [0] * len(self._names)

    def pick(self) -> str:
        """The target API of the next request."""
        if len(self._names) == 1:
            return self._names[0]
        return self._names[_smooth_pick(self._weights, self._current)]

    def carry_position(self, old: Split) -> None:
        """Continue `old`'s rotation, so changing the mirror keeps the split exact."""
        self._current = old._current

    def upstreams(self) -> set[Upstream]:
        return self.mirror.upstreams() if self.mirror is not None else set()


class MirrorState:
    """A route's `Mirror` with its running share count and the tally of its comparisons."""

    __slots__ = ("_api", "_group", "_owed", "_share", "mirror", "tally")

    def __init__(self, mirror: Mirror, tally: ShadowTally, old: MirrorState | None) -> None:
        self.mirror = mirror
        self.tally = tally
        self._share = max(1, round(mirror.share * _SHARE_UNIT))
        self._owed = old._owed if old is not None else 0  # route updates must not restart the count
        target = mirror.target
        self._group = _Group(100, target) if isinstance(target, tuple) else None
        self._api = target if isinstance(target, str) else None

    def take(self) -> bool:
        """Whether to mirror this request: exactly `share` of the requests, evenly spread."""
        owed = self._owed + self._share
        if owed >= _SHARE_UNIT:
            self._owed = owed - _SHARE_UNIT
            return True
        self._owed = owed
        return False

    def pick(self, table: RoutingTable) -> Upstream | None:
        """The shadow replica for a mirrored request: the least busy of the version's, or the target API's
        own pick; None when there is none ready."""
        group = self._group
        if group is not None:
            return _least_in_flight(group, table.upstream_in_flight) if group.replicas else None
        route = table.route(self._api) if self._api is not None else None
        return route.pick(table.upstream_in_flight) if route is not None else None

    def upstreams(self) -> set[Upstream]:
        return set(self._group.replicas) if self._group is not None else set()


def _smooth_pick(weights: list[int], current: list[int]) -> int:
    """nginx's smooth weighted round robin: the index of the next pick, advancing `current` in place."""
    total = 0
    best = 0
    for i, w in enumerate(weights):
        current[i] += w
        total += w
        if current[i] > current[best]:
            best = i
    current[best] -= total
    return best


def _least_in_flight(group: _Group, in_flight: dict[Upstream, int]) -> Upstream:
    replicas = group.replicas
    n = len(replicas)
    if n == 1:
        return replicas[0]
    start = group.rr
    group.rr = start + 1 if start + 1 < n else 0
    best = replicas[start]
    best_n = in_flight.get(best, 0)
    if best_n:
        for k in range(1, n):
            u = replicas[(start + k) % n]
            c = in_flight.get(u, 0)
            if c < best_n:
                best, best_n = u, c
                if not c:
                    break
    return best


def _check_weight(weight: int) -> None:
    if not 0 <= weight <= 100:
        raise ValueError(f"weight must be within 0..100, got {weight}")


def normalize_endpoint(endpoint: str) -> str:
    """`iris`, `/iris/` -> `/iris`; `/` stays `/` (one API answering every path)."""
    stripped = endpoint.strip().strip("/")
    return "/" + stripped


class RoutingTable:
    """Routes and splitters by endpoint, plus the in-flight counts the gateway keeps per replica and per API."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}  # by API name
        self._splits: dict[str, Split] = {}  # by traffic splitter name
        self._by_endpoint: dict[bytes, Route | Split] = {}
        self._refs: dict[Upstream, int] = {}  # how many routes list each upstream
        self._tallies: dict[str, ShadowTally] = {}  # by API or splitter name, from its first mirror on
        self.upstream_in_flight: dict[Upstream, int] = {}
        self.api_in_flight: dict[str, int] = {}
        self._removal_listeners: list[Callable[[set[Upstream]], None]] = []

    # --- what the agent calls -------------------------------------------------------------------------

    def set_route(
        self,
        api: str,
        endpoint: str,
        groups: Iterable[tuple[int, Sequence[Upstream]]],
        *,
        mirror: Mirror | None = None,
    ) -> None:
        """Create or replace the route of `api`: one `(weight 0..100, ready replicas)` group per version,
        and optionally a mirror of a share of its requests."""
        built = []
        for weight, replicas in groups:
            _check_weight(weight)
            built.append(_Group(weight, replicas))
        if api in self._splits:
            raise ValueError(f"{api} is a traffic splitter, not an API")
        path = self._free_endpoint(api, endpoint)
        old = self._routes.get(api)
        route = Route(api, path, built, self._mirror_state(api, mirror, old))
        if old is not None and route.weights() == old.weights():
            route.carry_position(old)  # replica churn must not restart the rotation (it favours the heaviest)
        self._routes[api] = route
        self._place(route, old)

    def set_split(
        self, name: str, endpoint: str, targets: Sequence[tuple[int, str]], *, mirror: Mirror | None = None
    ) -> None:
        """Create or replace traffic splitter `name`: `(weight 0..100, API name)` targets summing to 100.

        Targets are looked up by name per request, so they may be deployed, updated or removed at any time
        (a request for a target without a route gets 503).
        """
        targets = list(targets)
        for weight, _ in targets:
            _check_weight(weight)
        if sum(w for w, _ in targets) != 100:
            raise ValueError(f"traffic splitter weights must sum to 100, got {[w for w, _ in targets]}")
        if name in self._routes:
            raise ValueError(f"{name} is an API, not a traffic splitter")
        path = self._free_endpoint(name, endpoint)
        old = self._splits.get(name)
        split = Split(name, path, targets, self._mirror_state(name, mirror, old))
        if old is not None and old.targets == split.targets:
            split.carry_position(old)
        self._splits[name] = split
        self._place(split, old)

    def remove_route(self, name: str) -> None:
        """Forget API or traffic splitter `name` (and its shadow report); requests already forwarded finish
        normally, new ones get 404."""
        old = self._routes.pop(name, None) or self._splits.pop(name, None)
        self._tallies.pop(name, None)
        if old is not None:
            del self._by_endpoint[old.endpoint.encode()]
            self._swap_refs(old, None)

    def add_removal_listener(self, callback: Callable[[set[Upstream]], None]) -> None:
        """Call `callback(upstreams)` when upstreams leave the table (the gateway closes their idle sockets)."""
        self._removal_listeners.append(callback)

    async def wait_for_upstream(self, api: str, timeout: float) -> Upstream | None:
        """Hook for a request whose API has no ready replica: return one to forward to, or None for 503.

        The default answers at once. Scale-from-zero overrides it to ask for a replica and hold the request
        until one is ready (at most `timeout` seconds).
        """
        return None

    # --- what the gateway and the agent read ------------------------------------------------------------

    def route(self, api: str) -> Route | None:
        return self._routes.get(api)

    def split(self, name: str) -> Split | None:
        return self._splits.get(name)

    def shadow_report(self, name: str) -> ShadowReport | None:
        """Comparison counts of `name`'s mirrored requests since its mirror was first set; None if never."""
        tally = self._tallies.get(name)
        return tally.report(datetime.now(UTC)) if tally is not None else None

    def resolve(self, path: bytes) -> tuple[Route | Split, bytes] | None:
        """The route for a request path and the path to forward: `/iris` -> `/`, `/iris/a` -> `/a`.

        Longest endpoint wins; each candidate is one dict lookup, cut at the path's slashes.
        """
        by_endpoint = self._by_endpoint
        route = by_endpoint.get(path)
        if route is not None:
            return route, b"/"
        end = len(path)
        while True:
            end = path.rfind(b"/", 0, end)
            if end <= 0:
                break
            route = by_endpoint.get(path[:end])
            if route is not None:
                return route, path[end:]
        route = by_endpoint.get(b"/")
        return (route, path) if route is not None else None

    def has_upstream(self, upstream: Upstream) -> bool:
        return upstream in self._refs

    def in_flight(self, upstream: Upstream) -> int:
        return self.upstream_in_flight.get(upstream, 0)

    # --- bookkeeping (gateway) -------------------------------------------------------------------------

    def begin(self, api: str, upstream: Upstream) -> None:
        """A request to `api` was handed to `upstream`."""
        self.begin_mirror(upstream)
        apis = self.api_in_flight
        apis[api] = apis.get(api, 0) + 1

    def begin_mirror(self, upstream: Upstream) -> None:
        """A mirrored copy went to `upstream`: counted for its drain, but not as a request of any API."""
        counts = self.upstream_in_flight
        counts[upstream] = counts.get(upstream, 0) + 1

    def end_mirror(self, upstream: Upstream) -> None:
        _decrement(self.upstream_in_flight, upstream)

    def end(self, api: str, upstream: Upstream) -> None:
        """That request finished, failed or was abandoned. Zero counts are dropped so the dicts stay small."""
        _decrement(self.upstream_in_flight, upstream)
        _decrement(self.api_in_flight, api)

    def _free_endpoint(self, name: str, endpoint: str) -> str:
        """`endpoint` normalized, or ValueError when another API or splitter serves it."""
        path = normalize_endpoint(endpoint)
        other = self._by_endpoint.get(path.encode())
        if other is not None and other.api != name:
            raise ValueError(f"endpoint {path} is already used by {other.api}")
        return path

    def _mirror_state(
        self, name: str, mirror: Mirror | None, old: Route | Split | None
    ) -> MirrorState | None:
        if mirror is None:
            return None
        if not 0 < mirror.share <= 1:
            raise ValueError(f"mirror share must be within (0, 1], got {mirror.share}")
        tally = self._tallies.get(name)
        if tally is None:
            tally = self._tallies[name] = ShadowTally(DURATION_BUCKETS, datetime.now(UTC))
        return MirrorState(mirror, tally, old.mirror if old is not None else None)

    def _place(self, entry: Route | Split, old: Route | Split | None) -> None:
        if old is not None and old.endpoint != entry.endpoint:
            del self._by_endpoint[old.endpoint.encode()]
        self._by_endpoint[entry.endpoint.encode()] = entry
        self._swap_refs(old, entry)

    def _swap_refs(self, old: Route | Split | None, new: Route | Split | None) -> None:
        refs = self._refs
        if new is not None:
            for u in new.upstreams():
                refs[u] = refs.get(u, 0) + 1
        gone: set[Upstream] = set()
        if old is not None:
            for u in old.upstreams():
                n = refs[u] - 1
                if n:
                    refs[u] = n
                else:
                    del refs[u]
                    gone.add(u)
        if gone:
            for callback in self._removal_listeners:
                callback(gone)


def _decrement(counts: dict[K, int], key: K) -> None:
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]
