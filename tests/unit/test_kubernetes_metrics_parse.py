"""Kubernetes canary metrics, the pure parts: the PromQL sent, Prometheus answers and window counts turned
into VersionMetrics, error classification, and CloudWatch's query period."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from cortex_flows.backends.base import BackendError
from cortex_flows.backends.kubernetes.metrics import (
    BUCKETS,
    CLASSES,
    IN_FLIGHT,
    REQUESTS,
    VALUE_COUNT,
    VALUE_SUM,
    cloudwatch_period,
    metrics_from_prometheus,
    promql_queries,
    vector_result,
    version_metrics_from_rows,
)

STARTED = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
AT = STARTED + timedelta(minutes=10)
SELECTOR = '{namespace="models",api_name="iris",revision="2"}'


def vector(*samples: tuple[dict[str, str], str]) -> list[dict]:
    return [{"metric": labels, "value": [AT.timestamp(), value]} for labels, value in samples]


def test_queries_count_each_series_over_the_window_in_the_versions_namespace() -> None:
    queries = promql_queries("iris", 2, "models", 600)

    series = f"cortex_requests_total{SELECTOR}[600s]"
    assert queries[REQUESTS] == (
        f"sum by (status_code) ((last_over_time({series}) unless resets({series}) > 0) or increase({series}))"
    )
    assert queries[BUCKETS].startswith("sum by (le) ((last_over_time(cortex_request_duration_seconds_bucket{")
    assert queries[CLASSES].startswith("sum by (prediction) (")
    assert queries[VALUE_COUNT] == f"sum(last_over_time(cortex_prediction_value_count{SELECTOR}[600s]))"
    assert queries[VALUE_SUM] == f"sum(last_over_time(cortex_prediction_value_sum{SELECTOR}[600s]))"
    assert queries[IN_FLIGHT] == f"count(cortex_in_flight_requests{SELECTOR})"


def test_label_values_are_quoted_as_promql_strings() -> None:
    query = promql_queries('odd"name\\', 1, "ns", 60)[IN_FLIGHT]
    assert query == 'count(cortex_in_flight_requests{namespace="ns",api_name="odd\\"name\\\\",revision="1"})'


def test_prometheus_vectors_become_cumulative_version_metrics() -> None:
    results = {
        REQUESTS: vector(
            ({"status_code": "200"}, "89.6"),  # increase() extrapolates: rounded
            ({"status_code": "404"}, "3"),
            ({"status_code": "500"}, "5"),
            ({"status_code": "503"}, "2"),
            ({"status_code": "204"}, "0"),  # nothing in the window: left out
            ({}, "7"),  # no status label: not a version's series
        ),
        BUCKETS: vector(
            ({"le": "+Inf"}, "90"),
            ({"le": "0.1"}, "61"),
            ({"le": "0.005"}, "10"),
            ({"le": "1"}, "58"),  # estimated below its lower neighbour: kept cumulative
        ),
        CLASSES: vector(({"prediction": "setosa"}, "40"), ({"prediction": "virginica"}, "NaN")),
        VALUE_COUNT: vector(({}, "12")),
        VALUE_SUM: vector(({}, "-3.5")),
        IN_FLIGHT: vector(({}, "3")),
    }
    m = metrics_from_prometheus(results, started=STARTED, at=AT)

    assert m.by_status == {"200": 90, "404": 3, "500": 5, "503": 2}
    assert (m.requests, m.errors) == (100, 7)
    assert m.latency_buckets == [(0.005, 10), (0.1, 61), (1.0, 61), (math.inf, 90)]
    assert m.classes == {"setosa": 40}
    assert (m.value_count, m.value_sum, m.value_mean) == (12, -3.5, -3.5 / 12)
    assert (m.replicas_seen, m.started, m.at) == (3, STARTED, AT)
    assert m.as_arm().requests == 100


def test_no_series_is_an_empty_version() -> None:
    m = metrics_from_prometheus({}, started=STARTED, at=AT)
    assert (m.requests, m.errors, m.latency_buckets, m.classes, m.value_count, m.replicas_seen) == (
        0,
        0,
        [],
        {},
        0,
        0,
    )


def test_buckets_without_inf_are_closed_and_a_sum_without_a_count_is_dropped() -> None:
    rows = [(BUCKETS, "0.5", 4.0), (BUCKETS, "0.1", 3.0), (VALUE_SUM, None, 2.5)]
    m = version_metrics_from_rows(rows, replicas=0, started=STARTED, at=AT)
    assert m.latency_buckets == [(0.1, 3), (0.5, 4), (math.inf, 4)]
    assert (m.value_count, m.value_sum) == (0, 0.0)


def test_snapshots_from_one_start_subtract_to_the_window_between() -> None:
    first = version_metrics_from_rows(
        [(REQUESTS, "200", 10), (BUCKETS, "0.1", 8), (BUCKETS, "+Inf", 10)],
        replicas=1,
        started=STARTED,
        at=AT,
    )
    later = AT + timedelta(minutes=5)
    second = version_metrics_from_rows(
        [(REQUESTS, "200", 25), (REQUESTS, "500", 5), (BUCKETS, "0.1", 20), (BUCKETS, "+Inf", 30)],
        replicas=2, started=STARTED, at=later,
    )  # fmt: skip
    window = second.since(first)
    assert (window.requests, window.errors, window.by_status) == (20, 5, {"200": 15, "500": 5})
    assert window.latency_buckets == [(0.1, 12), (math.inf, 20)]
    assert (window.started, window.at) == (AT, later)


@pytest.mark.parametrize(
    ("status", "body", "transient"),
    [
        (400, {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"}, False),
        (422, {"status": "error", "errorType": "execution", "error": "many-to-many matching"}, False),
        (503, {"status": "error", "errorType": "timeout", "error": "query timed out"}, True),
        (500, b"<html>proxy error</html>", True),
        (404, b"not found", False),
        (200, {"status": "error", "errorType": "unavailable", "error": "shutting down"}, True),
    ],
)
def test_prometheus_errors_name_the_query_and_say_if_a_retry_may_help(
    status: int, body: dict | bytes, transient: bool
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(BackendError) as caught:
        vector_result(status, raw, "sum(cortex_requests_total)")
    assert caught.value.transient is transient
    assert caught.value.status == status
    assert "sum(cortex_requests_total)" in str(caught.value)
    if isinstance(body, dict):
        assert body["error"] in str(caught.value)


def test_a_non_vector_answer_is_refused() -> None:
    body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode()
    with pytest.raises(BackendError, match="'matrix', not a vector") as caught:
        vector_result(200, body, "q")
    assert not caught.value.transient


@pytest.mark.parametrize(
    ("age", "period"),
    [
        (timedelta(seconds=20), 60),
        (timedelta(minutes=10, seconds=1), 660),
        (timedelta(days=20, seconds=1), 20 * 86400 + 300),
        (timedelta(days=100), 100 * 86400),
    ],
)
def test_cloudwatch_period_covers_the_window_in_the_unit_its_age_requires(
    age: timedelta, period: int
) -> None:
    assert cloudwatch_period(AT - age, AT) == period
