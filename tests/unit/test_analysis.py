"""Canary analysis: the statistics against hand-computed and textbook values, and the verdicts on healthy,
broken and thinly sampled candidates."""

from __future__ import annotations

import bisect
import json
import math
import re

import numpy as np
import pytest
from scipy import stats

from cortex_flows.rollout.analysis import (
    ArmMetrics,
    ChiSquare,
    Decision,
    Status,
    Thresholds,
    Verdict,
    analyse,
    chi_square_test,
    cramers_v,
    error_increase_p,
    error_rate,
    histogram_quantile,
    ks_test,
    latency_quantile,
    markdown_table,
    psi,
    quantile,
)
from cortex_flows.rollout.canary import Verdict as CanaryVerdict
from cortex_flows.serving.metrics import DURATION_BUCKETS
from cortex_flows.spec.models import Canary

IRIS = ("setosa", "versicolor", "virginica")
DEFAULTS = Thresholds()


def to_buckets(samples, bounds=DURATION_BUCKETS) -> list[tuple[float, int]]:
    """Cumulative `(le, count)` buckets, as a replica's `cortex_request_duration_seconds` exports them."""
    ordered = np.sort(samples)
    return [(le, int(np.searchsorted(ordered, le, side="right"))) for le in bounds] + [
        (math.inf, len(samples))
    ]


def arm(
    rng: np.random.Generator,
    n: int,
    *,
    errors: float = 0.002,
    slower: float = 1.0,
    constant_class: str | None = None,
    values: bool = False,
    constant_value: float | None = None,
    buckets: bool = False,
) -> ArmMetrics:
    """An arm of `n` requests: lognormal latencies around 20 ms, iris-like classes for its 2xx answers."""
    failed = int(rng.binomial(n, errors))
    answered = n - failed
    latencies = rng.lognormal(math.log(0.02), 0.4, n) * slower
    if constant_class is not None:
        classes = {constant_class: answered}
    else:
        classes = dict(zip(IRIS, rng.multinomial(answered, [0.33, 0.33, 0.34]).tolist(), strict=True))
    numbers: tuple[float, ...] = ()
    if values:
        numbers = (
            tuple(rng.normal(2.0, 0.5, answered)) if constant_value is None else (constant_value,) * answered
        )
    return ArmMetrics(
        n,
        failed,
        latencies=() if buckets else tuple(latencies),
        latency_buckets=to_buckets(latencies) if buckets else (),
        classes=classes,
        values=numbers,
    )


def check(verdict: Verdict, name: str) -> Status:
    return next(c.status for c in verdict.checks if c.name == name)


# --- error rate ----------------------------------------------------------------------------------------


def test_error_rate():
    assert error_rate(ArmMetrics(200, 6)) == 0.03
    assert error_rate(ArmMetrics(0)) is None  # no rate rather than a flattering 0


def hypergeometric_tail(stable_errors, stable_n, candidate_errors, candidate_n) -> float:
    """P(the candidate gets >= its errors) when the arms' errors fall at random: Fisher's one-sided test."""
    errors, total = stable_errors + candidate_errors, stable_n + candidate_n
    hits = range(candidate_errors, min(errors, candidate_n) + 1)
    return sum(math.comb(errors, k) * math.comb(total - errors, candidate_n - k) for k in hits) / math.comb(
        total, candidate_n
    )


@pytest.mark.parametrize(
    "counts", [(10, 1000, 25, 1000), (0, 100, 2, 100), (4, 2000, 2, 100), (0, 500, 10, 500)]
)
def test_error_increase_p_is_fishers_exact_test(counts):
    s_errors, s_n, c_errors, c_n = counts
    p = error_increase_p(ArmMetrics(s_n, s_errors), ArmMetrics(c_n, c_errors))
    assert p == pytest.approx(hypergeometric_tail(*counts), rel=1e-9)


def test_error_increase_p_edges():
    assert error_increase_p(ArmMetrics(1000, 10), ArmMetrics(1000, 25)) == pytest.approx(0.007875, abs=1e-6)
    assert error_increase_p(ArmMetrics(1000, 25), ArmMetrics(1000, 10)) > 0.99  # one-sided: only an increase
    assert error_increase_p(ArmMetrics(100, 0), ArmMetrics(100, 0)) == 1.0
    assert error_increase_p(ArmMetrics(100, 100), ArmMetrics(100, 100)) == 1.0
    with pytest.raises(ValueError):
        error_increase_p(ArmMetrics(0), ArmMetrics(100, 1))


# --- quantiles -----------------------------------------------------------------------------------------


def test_sample_quantile_interpolates_between_order_statistics():
    assert quantile([5, 1, 3, 2, 4], 0.5) == 3
    assert quantile([1, 2, 3, 4, 5], 0.95) == pytest.approx(4.8)  # position 0.95 * 4 = 3.8
    assert quantile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        quantile([], 0.5)
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.5, 0.15),  # rank 20: 10 of the 20 in (0.1, 0.2] -> halfway
        (0.25, 0.1),  # rank 10: the whole first bucket, which starts at 0
        (0.1, 0.04),  # rank 4 of 10 in (0, 0.1]
        (0.99, 0.488),  # rank 39.6: 9.6 of the 10 in (0.2, 0.5]
        (1.0, 0.5),
    ],
)
def test_histogram_quantile_known_values(q, expected):
    buckets = [(0.1, 10), (0.2, 30), (0.5, 40), (math.inf, 40)]
    assert histogram_quantile(buckets, q) == pytest.approx(expected)


def test_histogram_quantile_edges_follow_promql():
    assert histogram_quantile([(0.1, 5), (math.inf, 10)], 0.9) == 0.1  # rank in +Inf: largest finite bound
    assert histogram_quantile([(0.0, 5), (1.0, 10), (math.inf, 10)], 0.2) == 0.0  # first bound <= 0
    assert histogram_quantile([(math.inf, 20), (0.2, 9), (0.1, 10)], 0.5) == 0.1  # unsorted, non-monotonic
    empty_first = [(0.1, 0), (0.2, 0), (0.5, 4), (math.inf, 4)]
    assert histogram_quantile(empty_first, 0.0) == 0.2  # empty leading buckets are skipped
    with pytest.raises(ValueError, match="Inf"):
        histogram_quantile([(0.1, 5), (0.2, 10)], 0.5)
    with pytest.raises(ValueError, match="no observations"):
        histogram_quantile([(0.1, 0), (math.inf, 0)], 0.5)
    with pytest.raises(ValueError):
        histogram_quantile([(0.1, 1), (math.inf, 1)], -0.1)


@pytest.mark.parametrize("median", [0.004, 0.02, 0.3, 3.0])
@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_histogram_quantile_lands_in_the_bucket_of_the_sample_quantile(median, q):
    samples = np.random.default_rng(7).lognormal(math.log(median), 0.6, 5000)
    estimate = histogram_quantile(to_buckets(samples), q)
    exact = quantile(samples, q)
    if exact > DURATION_BUCKETS[-1]:  # beyond the last finite bound, PromQL answers that bound
        assert estimate == DURATION_BUCKETS[-1]
        return
    bounds = [0.0, *DURATION_BUCKETS]
    bucket = bisect.bisect_left(bounds, exact)
    assert bounds[bucket - 1] <= estimate <= bounds[bucket]


def test_latency_quantile_uses_samples_then_buckets():
    assert latency_quantile(ArmMetrics(3, latencies=[0.1, 0.2, 0.3]), 0.5) == 0.2
    assert latency_quantile(ArmMetrics(10, latency_buckets=[(0.1, 10), (math.inf, 10)]), 0.5) == 0.05
    assert latency_quantile(ArmMetrics(10), 0.5) is None


# --- chi-square ----------------------------------------------------------------------------------------


def test_chi_square_hand_computed():
    # totals a=80, b=120 of 200; expected 40/60 per arm; (10^2/40 + 10^2/60) * 2 = 8.333
    result = chi_square_test({"a": 50, "b": 50}, {"a": 30, "b": 70})
    assert result.statistic == pytest.approx(25 / 3)
    assert result.dof == 1
    assert result.p_value == pytest.approx(0.003892, abs=1e-6)
    assert 0.001 < result.p_value < 0.005  # table: 7.879 at p=0.005, 10.828 at p=0.001 (dof 1)


# upper critical values of chi-square from the textbook table: dof -> (p = 0.05, p = 0.01)
CRITICAL = {1: (3.841, 6.635), 2: (5.991, 9.210), 3: (7.815, 11.345)}


@pytest.mark.parametrize("dof", CRITICAL)
@pytest.mark.parametrize("moved", range(0, 31, 3))
def test_chi_square_p_values_agree_with_the_table(dof, moved):
    stable = {str(i): 100 for i in range(dof + 1)}
    candidate = {**stable, "0": 100 + moved, "1": 100 - moved}
    result = chi_square_test(stable, candidate)
    assert result.dof == dof
    for alpha, critical in zip((0.05, 0.01), CRITICAL[dof], strict=True):
        if abs(result.statistic - critical) > 0.01:
            assert (result.p_value < alpha) == (result.statistic > critical)


def test_chi_square_matches_scipy_contingency():
    rng = np.random.default_rng(3)
    stable = dict(zip("abcd", rng.multinomial(400, [0.4, 0.3, 0.2, 0.1]).tolist(), strict=True))
    candidate = dict(zip("abcd", rng.multinomial(300, [0.3, 0.3, 0.3, 0.1]).tolist(), strict=True))
    reference = stats.chi2_contingency([list(stable.values()), list(candidate.values())], correction=False)
    result = chi_square_test(stable, candidate)
    assert result.statistic == pytest.approx(reference.statistic)
    assert result.dof == reference.dof
    assert result.p_value == pytest.approx(reference.pvalue)


def test_chi_square_a_class_unseen_in_stable_needs_no_smoothing():
    # totals a=90, b=90, c=20; expected 45, 45, 10 per arm: (25/45) * 4 + (100/10) * 2 = 22.22
    result = chi_square_test({"a": 50, "b": 50}, {"a": 40, "b": 40, "c": 20})
    assert result.statistic == pytest.approx(200 / 9)
    assert result.dof == 2
    assert math.isfinite(result.p_value) and result.p_value < 1e-4


def test_chi_square_degenerate_tables():
    assert chi_square_test({"a": 10, "b": 20}, {"a": 10, "b": 20}) == ChiSquare(0.0, 1, 1.0)
    assert chi_square_test({"a": 10}, {"a": 30}) == ChiSquare(0.0, 0, 1.0)  # one class in all
    assert chi_square_test({"a": 5, "z": 0}, {"a": 5, "b": 5}).dof == 1  # an all-zero class adds nothing
    with pytest.raises(ValueError):
        chi_square_test({}, {"a": 3})


def test_cramers_v_runs_from_same_to_disjoint():
    assert cramers_v(chi_square_test({"a": 10, "b": 10}, {"a": 20, "b": 20}).statistic, 60) == 0.0
    disjoint = chi_square_test({"a": 100}, {"b": 100})
    assert disjoint.statistic == pytest.approx(200)
    assert cramers_v(disjoint.statistic, 200) == pytest.approx(1.0)
    assert cramers_v(0.0, 0) == 0.0


# --- PSI -----------------------------------------------------------------------------------------------


def test_psi_of_identical_distributions_is_zero():
    assert psi({"a": 10, "b": 30}, {"a": 10, "b": 30}) == 0.0
    assert psi({"a": 10, "b": 30}, {"a": 20, "b": 60}) == 0.0  # same shares, other sample size
    values = np.random.default_rng(1).normal(size=500)
    assert psi(values, values) == 0.0


def test_psi_hand_computed_and_symmetric():
    # (0.3 - 0.5) ln(0.3/0.5) + (0.7 - 0.5) ln(0.7/0.5)
    expected = -0.2 * math.log(0.6) + 0.2 * math.log(1.4)
    assert psi({"a": 50, "b": 50}, {"a": 30, "b": 70}) == pytest.approx(expected)
    assert expected == pytest.approx(0.16946, abs=1e-5)
    assert psi({"a": 30, "b": 70}, {"a": 50, "b": 50}) == pytest.approx(expected)


def test_psi_smooths_a_class_seen_in_one_arm_only():
    # 0.5 added to every bin of both arms: stable (100.5, 0.5)/101, candidate (50.5, 50.5)/101
    s, c = np.array([100.5, 0.5]) / 101, np.array([50.5, 50.5]) / 101
    expected = float(((c - s) * np.log(c / s)).sum())
    assert psi({"a": 100}, {"a": 50, "b": 50}) == pytest.approx(expected)
    assert math.isfinite(expected) and expected > 0.25


def test_psi_on_values_bins_on_stable_deciles():
    rng = np.random.default_rng(2)
    stable = rng.normal(0, 1, 5000)
    assert psi(stable, rng.normal(0, 1, 5000)) < 0.02  # same distribution, other draw
    assert psi(stable, rng.normal(1, 1, 5000)) > 0.25  # a one-sigma shift is a major one
    assert math.isfinite(psi(stable, np.full(100, 50.0)))  # beyond stable's range: the open top bin
    assert psi([1.0] * 50, [1.0] * 30) == 0.0  # constant stable: ties collapse the bins
    assert psi([1.0] * 50, [2.0] * 30) > 1


def test_psi_rejects_mixed_or_empty_inputs():
    with pytest.raises(TypeError):
        psi({"a": 1}, [1.0])
    with pytest.raises(ValueError):
        psi([], [1.0])
    with pytest.raises(ValueError):
        psi({"a": 0}, {"a": 3})


# --- KS ------------------------------------------------------------------------------------------------


def test_ks_identical_disjoint_and_hand_computed():
    values = np.random.default_rng(4).normal(size=300)
    same = ks_test(values, values)
    assert same.statistic == 0.0 and same.p_value == pytest.approx(1.0)
    disjoint = ks_test([1.0, 2.0, 3.0] * 50, [10.0, 11.0] * 50)
    assert disjoint.statistic == 1.0 and disjoint.p_value < 1e-20
    assert ks_test([1, 2, 3, 4], [3, 4, 5, 6]).statistic == 0.5  # at x=2: F_stable 0.5, F_candidate 0
    with pytest.raises(ValueError):
        ks_test([], [1.0])


# --- inputs --------------------------------------------------------------------------------------------


def test_arm_metrics_validate_and_normalise():
    with pytest.raises(ValueError):
        ArmMetrics(10, 11)
    with pytest.raises(ValueError):
        ArmMetrics(-1)
    with pytest.raises(ValueError):
        ArmMetrics(10, classes={"a": -1})
    metrics = ArmMetrics(
        3, latencies=[0.1], classes={"a": 2, "b": 0}, latency_buckets=[(0.1, 2), (math.inf, 3)]
    )
    assert metrics.latencies == (0.1,) and metrics.classes == {"a": 2}
    assert ArmMetrics(3, latency_buckets=[(0.1, 2), (math.inf, 3)]).latency_count == 3


def test_thresholds_validate():
    assert Thresholds(inconclusive="hold").inconclusive is Decision.HOLD
    for bad in (
        {"inconclusive": "promote"},
        {"class_drift": "ks"},
        {"value_drift": "chi2"},
        {"min_samples": 0},
        {"alpha": 1.0},
        {"psi_bins": 1},
    ):
        with pytest.raises(ValueError):
            Thresholds(**bad)


# --- verdicts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_a_healthy_candidate_continues_then_promotes(seed):
    rng = np.random.default_rng(seed)
    stable, candidate = arm(rng, 2000, values=True), arm(rng, 1000, values=True)
    verdict = analyse(stable, candidate, DEFAULTS, final_step=False)
    assert verdict.decision is Decision.CONTINUE, verdict.reasons
    assert {c.status for c in verdict.checks} == {Status.PASS}
    assert analyse(stable, candidate, DEFAULTS, final_step=True).decision is Decision.PROMOTE


def test_a_healthy_candidate_with_histogram_latency_passes():
    rng = np.random.default_rng(11)
    verdict = analyse(arm(rng, 2000, buckets=True), arm(rng, 500, buckets=True), DEFAULTS, final_step=False)
    assert verdict.decision is Decision.CONTINUE, verdict.reasons
    assert 0.7 < verdict.stats["p95_ratio"] < 1.4


BROKEN = {
    "30% errors": ({"errors": 0.3}, "error_rate", "> 1.0%"),
    "5x slower": ({"slower": 5.0}, "p95", "> x1.5"),
    "5x slower (buckets)": ({"slower": 5.0, "buckets": True}, "p95", "> x1.5"),
    # errors 0: one 5xx would leave 99 predictions at the 100-request step, which is still too few
    "always one class": ({"constant_class": "setosa", "errors": 0.0}, "class_drift", "'setosa'"),
    "always one value": ({"values": True, "constant_value": 2.0, "errors": 0.0}, "value_drift", "KS D="),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_candidate_is_rolled_back_at_the_first_step_with_enough_samples(case):
    kwargs, failing, words = BROKEN[case]
    rng = np.random.default_rng(5)
    same_shape = {k: v for k, v in kwargs.items() if k in ("buckets", "values")}
    decisions = []
    for step, candidate_requests in enumerate((20, 50, 99, 100, 400)):
        stable = arm(rng, 20 * candidate_requests, **same_shape)
        verdict = analyse(stable, arm(rng, candidate_requests, **kwargs), DEFAULTS, final_step=step == 4)
        decisions.append(verdict.decision)
        if verdict.decision is Decision.ROLLBACK:
            break
    assert decisions == [Decision.EXTEND] * 3 + [Decision.ROLLBACK]
    assert check(verdict, failing) is Status.FAIL
    assert any(reason.startswith(failing) and words in reason for reason in verdict.reasons), verdict.reasons
    assert not verdict.inconclusive


def test_the_constant_class_candidate_reports_its_shift():
    rng = np.random.default_rng(6)
    verdict = analyse(arm(rng, 1000), arm(rng, 200, constant_class="setosa"), DEFAULTS, final_step=False)
    reason = verdict.reasons[0]
    assert "-> 100.0%" in reason
    assert verdict.stats["class_effect"] > 0.4
    assert verdict.stats["class_p"] < 1e-10


@pytest.mark.parametrize("policy", ["extend", "hold", "rollback"])
@pytest.mark.parametrize("final_step", [False, True])
def test_thin_data_applies_and_records_the_inconclusive_policy(policy, final_step):
    rng = np.random.default_rng(8)
    thresholds = Thresholds(inconclusive=policy)
    verdict = analyse(arm(rng, 5000), arm(rng, 40), thresholds, final_step=final_step)
    assert verdict.decision == policy
    assert verdict.inconclusive
    assert f"inconclusive (fewer than 100 samples per arm): {policy}" in verdict.reasons
    assert "error_rate, error_increase: requests: candidate 40 < 100" in verdict.reasons
    assert verdict.snapshot()["inconclusive"] is True
    assert verdict.snapshot()["check_error_rate"] == "thin"
    assert verdict.stats["candidate_requests"] == 40  # the numbers are recorded even when not judged


def test_a_failure_with_enough_samples_beats_thin_data_elsewhere():
    rng = np.random.default_rng(9)
    candidate = ArmMetrics(300, 90, latencies=tuple(rng.lognormal(-4, 0.4, 300)), classes={"setosa": 30})
    verdict = analyse(arm(rng, 3000), candidate, Thresholds(inconclusive="hold"), final_step=False)
    assert verdict.decision is Decision.ROLLBACK
    assert check(verdict, "error_rate") is Status.FAIL
    assert check(verdict, "class_drift") is Status.THIN
    assert not verdict.inconclusive


def test_zero_requests_are_inconclusive_not_an_error():
    verdict = analyse(ArmMetrics(0), ArmMetrics(0), DEFAULTS, final_step=False)
    assert verdict.decision is Decision.EXTEND
    assert verdict.stats["stable_error_rate"] is None and verdict.stats["error_increase_p"] is None
    assert check(verdict, "p95") is Status.SKIPPED and check(verdict, "class_drift") is Status.SKIPPED
    verdict = analyse(arm(np.random.default_rng(1), 500), ArmMetrics(0), DEFAULTS, final_step=True)
    assert verdict.decision is Decision.EXTEND
    assert "requests: candidate 0 < 100" in verdict.reasons[0]


def test_all_errors_on_stable_do_not_fail_a_healthy_candidate():
    rng = np.random.default_rng(10)
    stable = ArmMetrics(500, 500, latencies=tuple(rng.lognormal(math.log(0.02), 0.4, 500)))
    verdict = analyse(stable, arm(rng, 500), DEFAULTS, final_step=False)
    assert verdict.decision is Decision.CONTINUE
    assert verdict.stats["error_increase"] < 0
    assert check(verdict, "class_drift") is Status.SKIPPED
    assert "class_drift skipped: stable recorded no class predictions" in verdict.reasons


def test_empty_predictions_skip_the_drift_checks_and_say_so():
    rng = np.random.default_rng(12)
    lat = tuple(rng.lognormal(math.log(0.02), 0.4, 300))
    verdict = analyse(
        ArmMetrics(300, latencies=lat), ArmMetrics(300, latencies=lat), DEFAULTS, final_step=True
    )
    assert verdict.decision is Decision.PROMOTE
    assert verdict.reasons == (
        "all checks passed",
        "class_drift skipped: no class predictions recorded",
        "value_drift skipped: no value predictions recorded",
    )
    assert verdict.snapshot()["check_class_drift"] == "skipped"
    assert verdict.stats["class_test"] is None


def test_a_candidate_that_stops_recording_predictions_is_rolled_back():
    rng = np.random.default_rng(13)
    candidate = ArmMetrics(300, latencies=tuple(rng.lognormal(math.log(0.02), 0.4, 300)))
    stable = arm(rng, 1000)
    verdict = analyse(stable, candidate, DEFAULTS, final_step=False)
    assert verdict.decision is Decision.ROLLBACK
    answered = sum(stable.classes.values())
    assert verdict.reasons[0] == (
        f"class_drift: candidate recorded no class predictions in 300 answers (stable: {answered})"
    )
    few = ArmMetrics(150, 110, latencies=candidate.latencies[:150])  # 40 answers: too few to judge
    verdict = analyse(stable, few, Thresholds(max_error_rate=None, max_error_increase=None), final_step=False)
    assert verdict.decision is Decision.EXTEND
    assert (
        f"class_drift: candidate recorded no class predictions in 40 answers (stable: {answered})"
        in (verdict.reasons[0])
    )


def test_a_class_unseen_in_stable():
    rng = np.random.default_rng(14)
    stable = arm(rng, 2000)
    common = dict(zip(IRIS, rng.multinomial(999, [0.33, 0.33, 0.34]).tolist(), strict=True))
    rare = ArmMetrics(1000, classes={**common, "unknown": 1}, latencies=stable.latencies[:1000])
    assert analyse(stable, rare, DEFAULTS, final_step=False).decision is Decision.CONTINUE  # one stray
    frequent = ArmMetrics(1000, classes={"setosa": 300, "versicolor": 300, "unknown": 400})
    verdict = analyse(stable, frequent, DEFAULTS, final_step=False)
    assert verdict.decision is Decision.ROLLBACK
    assert "largest shift 'unknown': 0.0% -> 40.0%" in verdict.reasons[0]


def test_a_trivial_shift_at_high_traffic_is_significant_but_too_small_to_fail():
    stable = ArmMetrics(200_000, classes={"a": 100_000, "b": 100_000})
    candidate = ArmMetrics(200_000, classes={"a": 102_000, "b": 98_000})
    verdict = analyse(stable, candidate, DEFAULTS, final_step=False)
    assert verdict.stats["class_p"] < 1e-6 and verdict.stats["class_effect"] < 0.02
    assert check(verdict, "class_drift") is Status.PASS


@pytest.mark.parametrize(
    ("stable", "candidate", "expected"),
    [
        ({"a": 500, "b": 500}, {"a": 500, "b": 500}, Status.PASS),
        ({"a": 500, "b": 500}, {"a": 300, "b": 700}, Status.PASS),  # PSI 0.17: moderate
        ({"a": 500, "b": 500}, {"a": 900, "b": 100}, Status.FAIL),
    ],
)
def test_psi_can_judge_classes(stable, candidate, expected):
    thresholds = Thresholds(class_drift="psi")
    verdict = analyse(
        ArmMetrics(1000, classes=stable), ArmMetrics(1000, classes=candidate), thresholds, final_step=False
    )
    assert check(verdict, "class_drift") is expected
    assert verdict.stats["class_test"] == "psi" and verdict.stats["class_p"] is None


def test_psi_can_judge_values():
    rng = np.random.default_rng(15)
    thresholds = Thresholds(value_drift="psi")
    stable = arm(rng, 2000, values=True)
    assert (
        check(analyse(stable, arm(rng, 500, values=True), thresholds, final_step=False), "value_drift")
        is Status.PASS
    )
    shifted = ArmMetrics(500, classes=arm(rng, 500).classes, values=tuple(rng.normal(3.0, 0.5, 500)))
    verdict = analyse(stable, shifted, thresholds, final_step=False)
    assert check(verdict, "value_drift") is Status.FAIL
    assert re.fullmatch(
        r"value_drift: PSI [\d.]+; mean 1\.9\d* -> 3\.0\d* \(fails above 0\.2\)", verdict.reasons[0]
    )


def test_error_increase_needs_significance():
    off = Thresholds(max_error_rate=None)
    noisy = analyse(ArmMetrics(100, 0), ArmMetrics(100, 2), off, final_step=False)  # +2 points, p = 0.249
    assert check(noisy, "error_increase") is Status.PASS
    assert noisy.stats["error_increase_p"] == pytest.approx(0.2487, abs=1e-4)
    worse = analyse(ArmMetrics(500, 0), ArmMetrics(500, 10), off, final_step=False)
    assert worse.decision is Decision.ROLLBACK
    assert worse.reasons[0].startswith("error_increase: candidate 2.0% vs stable 0.0%: +2.0%")
    assert [c.name for c in noisy.checks] == ["error_increase", "p95", "p99", "class_drift", "value_drift"]
    assert [c.status for c in noisy.checks][1:] == [Status.SKIPPED] * 4  # no data: skipped, not passed


def test_latency_below_the_noise_floor_does_not_fail():
    fast = ArmMetrics(200, latencies=(0.0002,) * 200)
    triple = ArmMetrics(200, latencies=(0.0006,) * 200)
    verdict = analyse(fast, triple, DEFAULTS, final_step=False)
    assert verdict.stats["p95_ratio"] == pytest.approx(3.0)
    assert check(verdict, "p95") is Status.PASS


def test_absolute_p99_cap():
    rng = np.random.default_rng(16)
    stable, candidate = arm(rng, 1000), arm(rng, 500)
    verdict = analyse(stable, candidate, Thresholds(max_p99_seconds=0.01), final_step=False)
    assert verdict.decision is Decision.ROLLBACK
    assert verdict.reasons[0].startswith("p99: ") and "> 10 ms" in verdict.reasons[0]


def test_thin_latency_histogram():
    buckets = [(0.1, 50), (math.inf, 50)]
    stable = ArmMetrics(200, latency_buckets=[(0.1, 200), (math.inf, 200)])
    verdict = analyse(stable, ArmMetrics(200, latency_buckets=buckets), DEFAULTS, final_step=False)
    assert verdict.decision is Decision.EXTEND
    assert "p95, p99: latency samples: candidate 50 < 100" in verdict.reasons


def test_ledger_row_snapshot_and_table():
    rng = np.random.default_rng(17)
    verdict = analyse(
        arm(rng, 1000, values=True), arm(rng, 300, errors=0.3, values=True), DEFAULTS, final_step=False
    )
    snapshot = verdict.snapshot()
    assert all(not isinstance(v, dict | list | tuple) for v in snapshot.values())  # flat
    json.dumps(snapshot)
    for key in (
        "class_statistic",
        "class_dof",
        "class_p",
        "value_statistic",
        "value_p",
        "p95_ratio",
        "p99_ratio",
    ):
        assert snapshot[key] is not None
    row = verdict.as_row(step=2, weight="10%")
    assert list(row)[:3] == ["step", "weight", "decision"]
    assert row["decision"] == "rollback" and row["requests"] == "1000 / 300"
    assert row["drift"].startswith("chi2 ") and "; ks " in row["drift"]
    table = markdown_table([row, {**row, "reasons": "a | b"}])
    lines = table.splitlines()
    assert lines[0].startswith("| step | weight | decision |") and lines[1].startswith("|---|")
    assert len(lines) == 4 and "a \\| b" in lines[3]
    assert markdown_table([]) == ""


# --- the spec and the canary state machine -------------------------------------------------------------


def test_thresholds_from_the_canary_spec():
    assert Thresholds.from_canary(Canary()) == Thresholds(max_p99_ratio=1.5)  # spec: p99 ratio 1.5
    spec = Canary(min_samples=50, inconclusive="hold", max_error_rate_increase=0.02, drift_test="ks")
    assert Thresholds.from_canary(spec) == Thresholds(
        min_samples=50, inconclusive="hold", max_error_increase=0.02, max_p99_ratio=1.5
    )
    by_psi = Thresholds.from_canary(Canary(drift_test="psi", drift_threshold=0.3))
    assert (by_psi.class_drift, by_psi.value_drift, by_psi.max_psi, by_psi.alpha) == ("psi", "psi", 0.3, 0.01)
    assert Thresholds.from_canary(Canary(drift_test="chi2", drift_threshold=0.05)).alpha == 0.05


def test_outcome_is_what_the_canary_state_machine_takes():
    rng = np.random.default_rng(18)
    stable = arm(rng, 1000)
    verdicts = {
        "pass": analyse(stable, arm(rng, 500), DEFAULTS, final_step=True),
        "fail": analyse(stable, arm(rng, 500, errors=0.3), DEFAULTS, final_step=False),
        "inconclusive": analyse(stable, arm(rng, 50), Thresholds(inconclusive="rollback"), final_step=False),
    }
    for expected, verdict in verdicts.items():
        assert verdict.outcome == expected
        assert CanaryVerdict(verdict.outcome) == expected
