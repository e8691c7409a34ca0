"""The gateway's routing table: which replicas serve which endpoint, with version weights and in-flight counts.

The agent owns one `RoutingTable` and rewrites an API's route whenever replicas become ready, leave, or
traffic weights change; the gateway reads it on every request. Everything here runs on the gateway's event
loop thread and does no I/O, so a lookup is a few dict operations.

In-flight counts live here rather than in the gateway because replica choice (least in-flight) needs them,
and because they must outlive route updates: a replica removed from the table keeps its count until its
last request finishes, which is exactly what the agent waits for when it drains a replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple


class Upstream(NamedTuple):
    """One replica's HTTP server. A tuple, so hashing and equality are C-fast on the request path."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


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

    __slots__ = ("_current", "_eligible", "api", "endpoint", "groups")

    def __init__(self, api: str, endpoint: str, groups: list[_Group]) -> None:
        self.api = api
        self.endpoint = endpoint
        self.groups = groups
        self._eligible = [g for g in groups if g.weight > 0 and g.replicas]
        self._current = [0] * len(self._eligible)

    def pick(self, in_flight: dict[Upstream, int]) -> Upstream | None:
        """The replica for the next request, or None when no version with weight has a ready replica."""
        eligible = self._eligible
        if len(eligible) == 1:
            group = eligible[0]
        elif not eligible:
            return None
        else:
            current = self._current
            total = 0
            best = 0
            for i, g in enumerate(eligible):
                current[i] += g.weight
                total += g.weight
                if current[i] > current[best]:
                    best = i
            current[best] -= total
            group = eligible[best]
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
        return [g.weight for g in self._eligible]

    def carry_position(self, old: Route) -> None:
        """Continue `old`'s weighted rotation, so frequent route updates keep the split exact."""
        self._current = old._current

    def upstreams(self) -> set[Upstream]:
        return {u for g in self.groups for u in g.replicas}


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


def normalize_endpoint(endpoint: str) -> str:
    """`iris`, `/iris/` -> `/iris`; `/` stays `/` (one API answering every path)."""
    stripped = endpoint.strip().strip("/")
    return "/" + stripped


class RoutingTable:
    """Routes by endpoint, plus the in-flight counts the gateway keeps per replica and per API."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}  # by API name
        self._by_endpoint: dict[bytes, Route] = {}
        self._refs: dict[Upstream, int] = {}  # how many routes list each upstream
        self.upstream_in_flight: dict[Upstream, int] = {}
        self.api_in_flight: dict[str, int] = {}
        self._removal_listeners: list[Callable[[set[Upstream]], None]] = []

    # --- what the agent calls -------------------------------------------------------------------------

    def set_route(self, api: str, endpoint: str, groups: Iterable[tuple[int, Sequence[Upstream]]]) -> None:
        """Create or replace the route of `api`: one `(weight 0..100, ready replicas)` group per version."""
        built = []
        for weight, replicas in groups:
            if not 0 <= weight <= 100:
                raise ValueError(f"weight must be within 0..100, got {weight}")
            built.append(_Group(weight, replicas))
        path = normalize_endpoint(endpoint)
        key = path.encode()
        other = self._by_endpoint.get(key)
        if other is not None and other.api != api:
            raise ValueError(f"endpoint {path} is already used by API {other.api}")
        route = Route(api, path, built)
        old = self._routes.get(api)
        if old is not None and route.weights() == old.weights():
            route.carry_position(old)  # replica churn must not restart the rotation (it favours the heaviest)
        if old is not None and old.endpoint != path:
            del self._by_endpoint[old.endpoint.encode()]
        self._routes[api] = route
        self._by_endpoint[key] = route
        self._swap_refs(old, route)

    def remove_route(self, api: str) -> None:
        """Forget `api`; requests already forwarded finish normally, new ones get 404."""
        old = self._routes.pop(api, None)
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

    def resolve(self, path: bytes) -> tuple[Route, bytes] | None:
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
        counts = self.upstream_in_flight
        counts[upstream] = counts.get(upstream, 0) + 1
        apis = self.api_in_flight
        apis[api] = apis.get(api, 0) + 1

    def end(self, api: str, upstream: Upstream) -> None:
        """That request finished, failed or was abandoned. Zero counts are dropped so the dicts stay small."""
        counts = self.upstream_in_flight
        n = counts[upstream] - 1
        if n:
            counts[upstream] = n
        else:
            del counts[upstream]
        apis = self.api_in_flight
        n = apis[api] - 1
        if n:
            apis[api] = n
        else:
            del apis[api]

    def _swap_refs(self, old: Route | None, new: Route | None) -> None:
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
