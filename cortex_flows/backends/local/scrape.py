"""Per-version metrics on the local backend: scrape each replica's `/metrics` and sum them per version.

A replica's counters live in its process and vanish with it (scale-down, crash, restart), yet a version's
counts must only grow, or a canary window spanning a scale-down would see traffic disappear. So the
collector keeps, per version, the last values it saw of each replica *process* (keyed by replica id and
pid: a restarted replica is a new process with counters from zero) plus a carried total of processes that
are gone. A version's count is always carried + the sum of the last values of live processes; when a
process is no longer running its last values move into the carried total. Should a process's counters
ever go backwards (it restarted under the same key), its previous values are carried too.

What a process answered after its last scrape is lost when it goes, so departures are scraped:
- right before the supervisor stops a replica (scale-down, removal), after the gateway drained it, so
  graceful stops lose nothing (`before_stop`, the supervisor's hook);
- every `SCRAPE_INTERVAL` seconds by a light background task (`run`), which bounds what a crash (a
  SIGKILL, an OOM kill) can lose to the last couple of seconds of the dead process;
- and on every `version_metrics` request, which is answered from a fresh scrape of every live replica.

One lock per version serialises scrapes of it, so a slow scrape cannot overwrite a newer one.
Counting starts when the agent does (it reaps replicas a killed predecessor left, so nothing counted is
older) or when the version is created, whichever is later: `VersionMetrics.started`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cortex_flows.backends.base import VersionMetrics, server_errors
from cortex_flows.backends.local.supervisor import Replica, Supervisor

log = logging.getLogger("cortex_flows.agent")

SCRAPE_INTERVAL = 2.0
SCRAPE_TIMEOUT = 2.0
INTERVAL_ENV = "CORTEX_FLOWS_METRICS_INTERVAL"  # seconds between background scrapes; 0 turns them off

REQUESTS = "cortex_requests_total"
BUCKETS = "cortex_request_duration_seconds_bucket"
CLASSES = "cortex_predictions_total"
VALUE_COUNT = "cortex_prediction_value_count"
VALUE_SUM = "cortex_prediction_value_sum"


@dataclass
class Counts:
    """One replica process's counters (or a sum of several)."""

    by_status: dict[str, int] = field(default_factory=dict)
    buckets: dict[float, int] = field(default_factory=dict)  # cumulative, by upper bound
    classes: dict[str, int] = field(default_factory=dict)
    value_count: int = 0
    value_sum: float = 0.0

    def add(self, other: Counts) -> None:
        for mine, theirs in ((self.by_status, other.by_status), (self.classes, other.classes)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0) + n
        self.value_count += other.value_count
        self.value_sum += other.value_sum

    def went_back_from(self, earlier: Counts) -> bool:
        """True if any counter is below its earlier value: another process than the one seen before.
        (The sum of numeric predictions is no counter: negative predictions lower it.)"""
        return (
            self.value_count < earlier.value_count
            or any(self.by_status.get(k, 0) < n for k, n in earlier.by_status.items())
            or any(self.classes.get(k, 0) < n for k, n in earlier.classes.items())
            or any(self.buckets.get(k, 0) < n for k, n in earlier.buckets.items())
        )


def parse_counts(text: str, api: str, revision: int) -> Counts:
    """The version's series in one replica's Prometheus text exposition."""
    counts = Counts()
    rev = str(revision)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if labels.get("api_name") != api or labels.get("revision") != rev:
                continue
            if name == REQUESTS:
                code = labels.get("status_code", "")
                counts.by_status[code] = counts.by_status.get(code, 0) + round(sample.value)
            elif name == BUCKETS:
                le = float(labels["le"])  # "+Inf" parses to inf
                counts.buckets[le] = counts.buckets.get(le, 0) + round(sample.value)
            elif name == CLASSES:
                cls = labels.get("prediction", "")
                counts.classes[cls] = counts.classes.get(cls, 0) + round(sample.value)
            elif name == VALUE_COUNT:
                counts.value_count += round(sample.value)
            elif name == VALUE_SUM:
                counts.value_sum += sample.value
    return counts


@dataclass
class _Tally:
    """A version's counting state."""

    started: datetime
    carried: Counts = field(default_factory=Counts)
    last: dict[str, Counts] = field(default_factory=dict)  # by process key
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def seen(self, key: str, counts: Counts) -> None:
        previous = self.last.get(key)
        if previous is not None and counts.went_back_from(previous):
            self.carried.add(previous)
        self.last[key] = counts

    def gone(self, running: set[str]) -> None:
        for key in [k for k in self.last if k not in running]:
            self.carried.add(self.last.pop(key))

    def total(self) -> Counts:
        out = Counts()
        out.add(self.carried)
        for counts in self.last.values():
            out.add(counts)
        return out


def _key(replica: Replica) -> str | None:
    """The replica's running process as a key, or None when no process of it runs."""
    proc = replica.proc
    if proc is None or proc.returncode is not None or not replica.port:
        return None
    return f"{replica.id}/{proc.pid}"


def interval_from_env(default: float = SCRAPE_INTERVAL) -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, default)))
    except ValueError:
        return default


class MetricsCollector:
    """Per-version cumulative metrics over the supervisor's replicas (see the module docstring).

    `started_of(api, revision)` is when counting of a deployed version starts, None if it is not deployed.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        started_of: Callable[[str, int], datetime | None],
        interval: float = SCRAPE_INTERVAL,
        timeout: float = SCRAPE_TIMEOUT,
    ) -> None:
        self.supervisor = supervisor
        self.started_of = started_of
        self.interval = interval
        self._tallies: dict[tuple[str, int], _Tally] = {}
        self._http = httpx.AsyncClient(timeout=timeout)
        self._closed = False

    def _tally(self, api: str, revision: int) -> _Tally | None:
        started = self.started_of(api, revision)
        if started is None:
            return None
        tally = self._tallies.get((api, revision))
        if tally is None or tally.started != started:  # a new version under a reused revision number
            tally = self._tallies[(api, revision)] = _Tally(started)
        return tally

    async def _scrape(self, replica: Replica, key: str) -> Counts | None:
        try:
            resp = await self._http.get(f"http://127.0.0.1:{replica.port}/metrics")
            resp.raise_for_status()
            return parse_counts(resp.text, replica.api, replica.revision)
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("cannot scrape %s (%s): %r", replica.id, key, exc)
            return None

    async def _refresh(self, api: str, revision: int, tally: _Tally) -> int:
        """Scrape every running replica of the version; returns how many answered."""
        async with tally.lock:
            targets = [(r, k) for r in list(self.supervisor.of(api, revision)) if (k := _key(r)) is not None]
            results = await asyncio.gather(*(self._scrape(r, k) for r, k in targets))
            answered = 0
            for (_, key), counts in zip(targets, results, strict=True):
                if counts is not None:
                    tally.seen(key, counts)
                    answered += 1
            # After the scrapes: a process that died meanwhile keeps the values just read.
            tally.gone({k for r in self.supervisor.of(api, revision) if (k := _key(r)) is not None})
            return answered

    async def version_metrics(self, api: str, revision: int) -> VersionMetrics | None:
        """The version's cumulative metrics from a fresh scrape; None if it is not deployed."""
        tally = self._tally(api, revision)
        if tally is None:
            return None
        answered = await self._refresh(api, revision, tally)
        return _as_metrics(tally.total(), answered, tally.started)

    async def before_stop(self, replica: Replica) -> None:
        """The supervisor's hook: a drained replica is about to get SIGTERM; keep its final counts."""
        if self._closed:
            return
        key = _key(replica)
        tally = self._tally(replica.api, replica.revision)
        if key is None or tally is None:
            return
        async with tally.lock:
            counts = await self._scrape(replica, key)
            if counts is not None:
                tally.seen(key, counts)

    def forget(self, api: str, revision: int | None = None) -> None:
        """Drop the counts of a removed version (or of every version of a deleted API)."""
        for key in [k for k in self._tallies if k[0] == api and revision in (None, k[1])]:
            del self._tallies[key]

    async def refresh_all(self, versions: Iterable[tuple[str, int]]) -> None:
        tallies = [(api, rev, t) for api, rev in versions if (t := self._tally(api, rev)) is not None]
        await asyncio.gather(*(self._refresh(api, rev, t) for api, rev, t in tallies))

    async def run(self, versions: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Scrape every version every `interval` seconds (a no-op loop when the interval is 0)."""
        if self.interval <= 0:
            return
        while not self._closed:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh_all(list(versions()))
            except Exception:  # never let a scrape bug stop the agent's other work
                log.exception("metrics scrape failed")

    async def aclose(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            await self._http.aclose()


def _as_metrics(counts: Counts, replicas: int, started: datetime) -> VersionMetrics:
    buckets = sorted(counts.buckets.items())
    if buckets and not math.isinf(buckets[-1][0]):
        buckets.append((math.inf, buckets[-1][1]))
    return VersionMetrics(
        requests=sum(counts.by_status.values()),
        errors=server_errors(counts.by_status),
        by_status=dict(sorted(counts.by_status.items())),
        latency_buckets=buckets,
        classes=dict(sorted(counts.classes.items())),
        value_count=counts.value_count,
        value_sum=counts.value_sum,
        replicas_seen=replicas,
        started=started,
        at=datetime.now(UTC),
    )
