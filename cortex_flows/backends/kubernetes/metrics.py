"""A version's canary metrics on Kubernetes, read from the replicas' own series (`cortex_flows.serving.metrics`)
as the cluster's Prometheus, or CloudWatch, holds them.

Pods come and go (scale-downs, restarts), so the live series alone would lose the traffic of pods that are
gone. Both readers therefore count over a window [started, at] that reaches back to the version's creation,
which is what `VersionMetrics` wants: counts that only grow, whose `since` is the traffic in between.

**Prometheus** (one instant query per series, at one evaluation time). A counter series that never reset
in the window is counted by its last value: exact, and it keeps pods that are gone (their last sample is
still in range) and the first value of a series born mid-window (a pod's first 5xx creates its
`status_code="500"` series with value 1, which `increase()` would read as 0). A series that did reset (its
container restarted) is counted by `increase()`, Prometheus' extrapolated estimate. So `started` must be no
later than the version's first replica: a series that began before the window is counted from its birth.
The numeric-prediction sum may decrease (negative predictions), so it and its count are both read by last
value only. The selector matches the `namespace` label the usual Kubernetes scrape configs attach.

**CloudWatch** (`GetMetricData`). Assumed scheme, which the CloudWatch agent's Prometheus scraping must be
configured to emit (its `metric_declaration`s): namespace `ContainerInsights/Prometheus`, metric names as
Prometheus exposes them, dimensions exactly `ClusterName, Namespace, api_name, revision` plus `status_code`
for `cortex_requests_total`, `prediction` for `cortex_predictions_total` and `le` for
`cortex_request_duration_seconds_bucket` (none more: a series with extra dimensions, such as a per-pod
declaration, is ignored so nothing is counted twice). The agent sends each counter (and a summary's `_sum`
and `_count`) as the delta since its previous scrape, so a Sum over the window is the window's count, pods
that are gone included. It drops Prometheus histograms, so the latency buckets are read when something
else forwards them the same way, and are otherwise empty (canary analysis then judges without latency).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError

from cortex_flows.aws.clients import is_transient_aws_error
from cortex_flows.backends.base import BackendError, VersionMetrics, server_errors

REQUESTS = "cortex_requests_total"
BUCKETS = "cortex_request_duration_seconds_bucket"
CLASSES = "cortex_predictions_total"
VALUE_COUNT = "cortex_prediction_value_count"
VALUE_SUM = "cortex_prediction_value_sum"
IN_FLIGHT = "cortex_in_flight_requests"  # one series per scraped replica: counts the replicas seen
SPLIT_BY = {REQUESTS: "status_code", BUCKETS: "le", CLASSES: "prediction", VALUE_COUNT: None, VALUE_SUM: None}

CLOUDWATCH_NAMESPACE = "ContainerInsights/Prometheus"
CLOUDWATCH_BATCH = 500  # GetMetricData's most queries per request
_TRANSIENT_PROMETHEUS_ERRORS = frozenset({"timeout", "canceled", "unavailable", "internal"})

Row = tuple[str, str | None, float]  # (metric, its split label's value, count over the window)


# -- Prometheus -----------------------------------------------------------------------------------------


def promql_queries(api: str, revision: int, namespace: str, window_seconds: int) -> dict[str, str]:
    """The instant queries (by metric) whose results `metrics_from_prometheus` reads."""
    selector = ",".join(
        f"{label}={_promql_string(value)}"
        for label, value in (("namespace", namespace), ("api_name", api), ("revision", str(revision)))
    )
    queries = {}
    for metric, label in SPLIT_BY.items():
        series = f"{metric}{{{selector}}}[{window_seconds}s]"
        if metric in (VALUE_COUNT, VALUE_SUM):
            total = f"last_over_time({series})"
        else:
            total = f"(last_over_time({series}) unless resets({series}) > 0) or increase({series})"
        queries[metric] = f"sum by ({label}) ({total})" if label else f"sum({total})"
    queries[IN_FLIGHT] = f"count({IN_FLIGHT}{{{selector}}})"
    return queries


async def prometheus_version_metrics(
    client: httpx.AsyncClient,
    base_url: str,
    api: str,
    revision: int,
    *,
    namespace: str,
    started: datetime,
) -> VersionMetrics:
    """The version's counts over [started, now] from Prometheus' HTTP API (`GET /api/v1/query`), all
    queries evaluated at the same instant. `started`: when the version was created (see the module doc).

    Raises BackendError naming the failed query: transient for HTTP 5xx, timeouts and unreachable servers,
    not for a refused query (HTTP 4xx).
    """
    at = datetime.now(UTC)
    window = max(1, math.ceil((at - started).total_seconds()))
    queries = promql_queries(api, revision, namespace, window)
    url = base_url.rstrip("/") + "/api/v1/query"
    tasks = [asyncio.ensure_future(_instant_query(client, url, query, at)) for query in queries.values()]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:  # one failed: stop the others before the caller closes the client under them
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return metrics_from_prometheus(dict(zip(queries, results, strict=True)), started=started, at=at)


async def _instant_query(
    client: httpx.AsyncClient, url: str, query: str, at: datetime
) -> list[dict[str, Any]]:
    try:
        response = await client.get(url, params={"query": query, "time": f"{at.timestamp():.3f}"})
    except httpx.TimeoutException as exc:
        raise BackendError(f"Prometheus timed out on query {query}", transient=True) from exc
    except httpx.TransportError as exc:
        raise BackendError(
            f"cannot reach Prometheus ({type(exc).__name__}) for query {query}", transient=True
        ) from exc
    return vector_result(response.status_code, response.content, query)


def vector_result(status: int, body: bytes, query: str) -> list[dict[str, Any]]:
    """The samples of an instant-query answer, or BackendError (transient for 5xx and Prometheus' own
    timeout/unavailable errors; a bad query is not)."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise BackendError(
            f"Prometheus answered HTTP {status} without a JSON body to query {query}",
            transient=status >= 500, status=status,
        )  # fmt: skip
    if status >= 400 or payload.get("status") != "success":
        kind = str(payload.get("errorType", "error"))
        error = str(payload.get("error", ""))[:300]
        raise BackendError(
            f"Prometheus query failed (HTTP {status}, {kind}: {error}): {query}",
            transient=status >= 500 or status == 429 or kind in _TRANSIENT_PROMETHEUS_ERRORS, status=status,
        )  # fmt: skip
    data = payload.get("data") or {}
    if data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise BackendError(f"Prometheus answered {data.get('resultType')!r}, not a vector, to query {query}")
    return data["result"]


def metrics_from_prometheus(
    results: Mapping[str, list[dict[str, Any]]], *, started: datetime, at: datetime
) -> VersionMetrics:
    """VersionMetrics from the vectors answering `promql_queries` (keyed the same way)."""
    rows: list[Row] = []
    for metric, label in SPLIT_BY.items():
        for sample in results.get(metric, []):
            key = sample.get("metric", {}).get(label) if label else None
            if label is None or key is not None:
                rows.append((metric, key, float(sample["value"][1])))
    replicas = sum(_count(float(s["value"][1])) for s in results.get(IN_FLIGHT, []))
    return version_metrics_from_rows(rows, replicas=replicas, started=started, at=at)


def _promql_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON's escapes are valid in a PromQL string literal


# -- CloudWatch -----------------------------------------------------------------------------------------


def cloudwatch_version_metrics(
    client: BaseClient,
    api: str,
    revision: int,
    *,
    namespace: str,
    cluster: str,
    started: datetime,
    now: datetime,
) -> VersionMetrics:
    """The version's counts over [started, now] from CloudWatch (scheme in the module doc).

    The result's `started` is `started` rounded down to the minute, as CloudWatch aligns the query, and
    `at` is `now`. Two snapshots from the same `started` subtract (`since`) to the traffic between them,
    and a datapoint that reached CloudWatch late still counts, in whichever later window reads it; a
    snapshot from another `started` is a whole window of its own, as `since` treats a changed start.
    `replicas_seen` is 0: these series carry no per-replica dimension.
    """
    start = started.replace(second=0, microsecond=0)
    base = {"ClusterName": cluster, "Namespace": namespace, "api_name": api, "revision": str(revision)}
    what = f"API {api!r} revision {revision}"
    try:
        series = _list_series(client, base)
        totals = _window_sums(client, [metric for _, _, metric in series], start, now, what)
    except (ClientError, BotoCoreError) as exc:
        raise BackendError(
            f"CloudWatch metrics of {what} unavailable: {exc}", transient=is_transient_aws_error(exc)
        ) from exc
    rows = [(name, key, total) for (name, key, _), total in zip(series, totals, strict=True)]
    return version_metrics_from_rows(rows, replicas=0, started=start, at=now)


def cloudwatch_period(start: datetime, now: datetime) -> int:
    """One period covering [start, now], in the unit CloudWatch requires for data that old (60 s within
    15 days, 300 s within 63 days, else 3600 s)."""
    age = now - start
    unit = 60 if age <= timedelta(days=15) else 300 if age <= timedelta(days=63) else 3600
    return max(unit, math.ceil(age.total_seconds() / unit) * unit)


def _list_series(client: BaseClient, base: dict[str, str]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(metric name, split dimension's value, metric) of the version's series with exactly our dimensions."""
    found: dict[tuple[str, frozenset[tuple[str, str]]], tuple[str, str | None, dict[str, Any]]] = {}
    pages = client.get_paginator("list_metrics").paginate(
        Namespace=CLOUDWATCH_NAMESPACE, Dimensions=[{"Name": k, "Value": v} for k, v in base.items()]
    )
    for page in pages:
        for metric in page.get("Metrics", []):
            name = metric.get("MetricName", "")
            if name not in SPLIT_BY:
                continue
            dims = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            split = SPLIT_BY[name]
            if set(dims) != set(base) | ({split} if split else set()):
                continue
            if any(dims[k] != v for k, v in base.items()):
                continue
            found.setdefault(
                (name, frozenset(dims.items())), (name, dims.get(split) if split else None, metric)
            )
    return list(found.values())


def _window_sums(
    client: BaseClient, metrics: list[dict[str, Any]], start: datetime, end: datetime, what: str
) -> list[float]:
    """Each metric's Sum over [start, end] (one period; every datapoint added up), NextToken followed."""
    period = cloudwatch_period(start, end)
    totals = [0.0] * len(metrics)
    for first in range(0, len(metrics), CLOUDWATCH_BATCH):
        queries = [
            {
                "Id": f"m{first + i}",
                "MetricStat": {
                    "Metric": {k: metric[k] for k in ("Namespace", "MetricName", "Dimensions")},
                    "Period": period,
                    "Stat": "Sum",
                },
                "ReturnData": True,
            }
            for i, metric in enumerate(metrics[first : first + CLOUDWATCH_BATCH])
        ]
        token: str | None = None
        while True:
            args: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end}
            if token:
                args["NextToken"] = token
            answer = client.get_metric_data(**args)
            for result in answer.get("MetricDataResults", []):
                if result.get("StatusCode") in ("Forbidden", "InternalError"):
                    raise BackendError(
                        f"CloudWatch answered {result['StatusCode']} for {result.get('Label', '')} of {what}",
                        transient=result["StatusCode"] == "InternalError",
                    )
                totals[int(result["Id"][1:])] += sum(result.get("Values", []))
            token = answer.get("NextToken")
            if not token:
                break
    return totals


# -- Both -----------------------------------------------------------------------------------------------


def version_metrics_from_rows(
    rows: Iterable[Row], *, replicas: int, started: datetime, at: datetime
) -> VersionMetrics:
    """VersionMetrics from window counts: (metric, split value, count) rows, counts rounded (Prometheus'
    increase() extrapolates), latency buckets sorted by bound, kept cumulative and closed by +Inf."""
    by_status: dict[str, int] = {}
    classes: dict[str, int] = {}
    bounds: dict[float, int] = {}
    value_count, value_sum = 0, 0.0
    for metric, key, value in rows:
        if metric == REQUESTS and key is not None:
            by_status[key] = by_status.get(key, 0) + _count(value)
        elif metric == CLASSES and key is not None:
            classes[key] = classes.get(key, 0) + _count(value)
        elif metric == BUCKETS and key is not None:
            bound = float(key)  # "+Inf" included
            bounds[bound] = bounds.get(bound, 0) + _count(value)
        elif metric == VALUE_COUNT:
            value_count += _count(value)
        elif metric == VALUE_SUM and not math.isnan(value):
            value_sum += value
    buckets: list[tuple[float, int]] = []
    running = 0
    for bound, count in sorted(bounds.items()):
        running = max(running, count)  # a reset-estimated bucket may undershoot the one below it
        buckets.append((bound, running))
    if buckets and not math.isinf(buckets[-1][0]):
        buckets.append((math.inf, running))
    by_status = {code: n for code, n in sorted(by_status.items()) if n}
    return VersionMetrics(
        requests=sum(by_status.values()),
        errors=server_errors(by_status),
        by_status=by_status,
        latency_buckets=buckets,
        classes={name: n for name, n in sorted(classes.items()) if n},
        value_count=value_count,
        value_sum=value_sum if value_count else 0.0,
        replicas_seen=replicas,
        started=started,
        at=at,
    )


def _count(value: float) -> int:
    return 0 if math.isnan(value) or value <= 0 else round(value)
