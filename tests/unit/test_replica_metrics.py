"""The prediction series a replica records from its handler's results (`ReplicaMetrics.observe_result`)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cortex_flows.serving.metrics import MAX_PREDICTION_CLASSES, OTHER_CLASS, ReplicaMetrics


def samples(metrics: ReplicaMetrics) -> dict[tuple[str, str], float]:
    """(sample name, prediction label) -> value, for the prediction series."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name.startswith("cortex_prediction"):
                out[(s.name, s.labels.get("prediction", ""))] = s.value
    return out


def classes(metrics: ReplicaMetrics) -> dict[str, float]:
    return {label: v for (name, label), v in samples(metrics).items() if name == "cortex_predictions_total"}


@pytest.fixture
def metrics() -> ReplicaMetrics:
    return ReplicaMetrics("iris", 3, lambda: 0)


def test_a_bare_class_counts_like_a_prediction_field(metrics: ReplicaMetrics) -> None:
    for result in ("setosa", "setosa", {"prediction": "setosa"}, 2, True, {"predictions": ["virginica", 2]}):
        metrics.observe_result(result)
    assert classes(metrics) == {"setosa": 3, "2": 2, "True": 1, "virginica": 1}


def test_a_bare_float_is_a_numeric_prediction(metrics: ReplicaMetrics) -> None:
    for result in (1.5, {"prediction": 2.5}, {"predictions": [0.5, -1.0]}):
        metrics.observe_result(result)
    values = samples(metrics)
    assert values[("cortex_prediction_value_count", "")] == 4
    assert values[("cortex_prediction_value_sum", "")] == pytest.approx(3.5)
    assert classes(metrics) == {}


@pytest.mark.parametrize(
    "result", [None, b"setosa", ["setosa"], ("setosa",), {"label": "setosa"}, {"predictions": "setosa"}, 1j]
)
def test_other_results_record_no_prediction(metrics: ReplicaMetrics, result: object) -> None:
    metrics.observe_result(result)
    assert classes(metrics) == {}
    assert samples(metrics)[("cortex_prediction_value_count", "")] == 0


def test_bare_free_form_strings_are_bounded_like_prediction_fields(metrics: ReplicaMetrics) -> None:
    for i in range(MAX_PREDICTION_CLASSES + 10):
        metrics.observe_result(f"class-{i}")
    counted = classes(metrics)
    assert len(counted) == MAX_PREDICTION_CLASSES + 1
    assert counted[OTHER_CLASS] == 10
