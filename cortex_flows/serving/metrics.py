"""Prometheus series a replica exports: the same names on every backend, so autoscaling and canary
analysis read one vocabulary whether a local agent or Prometheus on Kubernetes scrapes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
MAX_PREDICTION_CLASSES = 64  # bounds label cardinality if a handler returns free-form strings
OTHER_CLASS = "__other__"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class ReplicaMetrics:
    """Request, latency, in-flight and prediction-distribution series with `api_name`/`revision` bound.

    Children are bound once (per status code / class on first use) so the per-request cost is a dict
    lookup plus one increment; the in-flight gauge is read from admission control at scrape time.
    """

    def __init__(self, api_name: str, revision: int, in_flight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("api_name", "revision")
        values = (api_name, str(revision))
        self._requests = Counter(
            "cortex_requests", "API requests answered, by HTTP status code.",
            (*labels, "status_code"), registry=self.registry,
        )  # fmt: skip
        self._duration = Histogram(
            "cortex_request_duration_seconds", "Time from admission to response for admitted requests.",
            labels, buckets=DURATION_BUCKETS, registry=self.registry,
        ).labels(*values)  # fmt: skip
        Gauge(
            "cortex_in_flight_requests", "Requests running the handler or queued for it.",
            labels, registry=self.registry,
        ).labels(*values).set_function(in_flight)  # fmt: skip
        self._classes = Counter(
            "cortex_predictions", "Predicted classes (str, int or bool predictions).",
            (*labels, "prediction"), registry=self.registry,
        )  # fmt: skip
        self._values = Summary(
            "cortex_prediction_value", "Numeric (float) predictions: count and sum give their mean.",
            labels, registry=self.registry,
        ).labels(*values)  # fmt: skip
        self._values_bound = values
        self._by_status: dict[int, Any] = {}
        self._by_class: dict[str, Any] = {}

    def observe(self, status: int, seconds: float | None) -> None:
        """Count one API response; `seconds` is None for requests shed before admission."""
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._requests.labels(*self._values_bound, str(status))
        child.inc()
        if seconds is not None:
            self._duration.observe(seconds)

    def observe_result(self, result: object) -> None:
        """Record the prediction distribution from a `{"prediction": p}` / `{"predictions": [...]}` result,
        or from a bare prediction: a handler returning just the class (`"setosa"`, `2`, `True`), as
        Cortex's examples did, or just a float."""
        if type(result) is dict:
            if "prediction" in result:
                self._observe_prediction(result["prediction"])
            elif type(predictions := result.get("predictions")) is list:
                for prediction in predictions:
                    self._observe_prediction(prediction)
            return
        kind = type(result)  # exact types, so the request path pays a few identity checks
        if kind is str or kind is int or kind is bool:
            self._class_child(str(result)).inc()
        elif kind is float:
            self._values.observe(result)

    def _observe_prediction(self, prediction: object) -> None:
        if type(prediction) is float:
            self._values.observe(prediction)
        elif isinstance(prediction, str | int):  # bool is an int
            self._class_child(str(prediction)).inc()

    def _class_child(self, name: str) -> Any:
        child = self._by_class.get(name)
        if child is None:
            if len(self._by_class) >= MAX_PREDICTION_CLASSES:
                name = OTHER_CLASS
                if (child := self._by_class.get(name)) is not None:
                    return child
            child = self._by_class[name] = self._classes.labels(*self._values_bound, name)
        return child

    def render(self) -> bytes:
        """The Prometheus text exposition of this replica's registry."""
        return generate_latest(self.registry)
