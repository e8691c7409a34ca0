"""Shadow comparison (pure): response agreement, the tally and its reports, windows, quantiles, verdicts."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from cortex_flows.rollout.analysis import histogram_quantile
from cortex_flows.rollout.shadow import (
    MAX_EXAMPLES,
    Reply,
    ShadowReport,
    ShadowTally,
    judge_shadow,
    responses_agree,
)
from cortex_flows.serving.metrics import DURATION_BUCKETS

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
INF = math.inf
OK = b'{"prediction": "setosa"}'


# --- responses_agree ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("primary", "shadow"),
    [
        (OK, OK),
        (b'{"a": 1, "b": [1, 2]}', b'{"b":[1,2],"a":1}'),  # key order and whitespace
        (b'{"p": 0.1234567}', b'{"p": 0.12345670001}'),  # float noise within rel_tol 1e-6
        (b'{"p": 1e-12}', b'{"p": 0}'),  # within abs_tol 1e-9
        (b'{"p": 1}', b'{"p": 1.0}'),  # int and float are both numbers
        (b'[{"x": [1.0, 2.0]}, null, "s", true]', b'[{"x": [1.0000000001, 2]}, null, "s", true]'),
        (b'{"p": NaN}', b'{"p": NaN}'),  # two models both answering NaN
        (b"plain text", b"plain text"),
        (b"", b""),
    ],
)
def test_responses_agree(primary: bytes, shadow: bytes) -> None:
    assert responses_agree(200, primary, 200, shadow)


@pytest.mark.parametrize(
    ("primary", "shadow"),
    [
        (OK, b'{"prediction": "virginica"}'),
        (b'{"p": 0.1234}', b'{"p": 0.1235}'),  # beyond tolerance
        (b'{"p": true}', b'{"p": 1}'),  # bool is not a number
        (b'{"p": 0}', b'{"p": false}'),
        (b'{"p": "1"}', b'{"p": 1}'),
        (b'{"p": NaN}', b'{"p": 1}'),
        (b'{"a": 1}', b'{"a": 1, "b": 2}'),  # keys differ
        (b"[1, 2]", b"[1, 2, 3]"),  # lengths differ
        (b'{"a": [1]}', b'{"a": {"0": 1}}'),  # list vs dict
        (b"plain text", b"plain  text"),  # not JSON: bytes must match
        (OK, b"not json"),  # one side is not JSON
        (b"\xff\xfe", b"\xff\xfd"),  # not even text
        (b"[12345678901234567]", b"[12345678901234568]"),  # ints are exact, even beyond float precision
        (b"[1%s]" % (b"0" * 400), b"[1.0]"),  # an int no float can hold
        (b"[" * 100_000, b"[" * 100_001),  # too deep to parse
    ],
)
def test_responses_disagree(primary: bytes, shadow: bytes) -> None:
    assert not responses_agree(200, primary, 200, shadow)


def test_statuses_must_match_even_with_equal_bodies() -> None:
    assert not responses_agree(200, OK, 201, OK)
    assert responses_agree(400, b'{"error": "bad"}', 400, b'{"error":"bad"}')


# --- the tally -------------------------------------------------------------------------------------------


def reply(body: bytes | None = OK, latency: float = 0.003, status: int = 200) -> Reply:
    return Reply(status, body, latency)


def test_tally_classifies_each_finished_request_once() -> None:
    tally = ShadowTally(DURATION_BUCKETS, T0)
    tally.record(reply(), reply())  # agreed
    tally.record(reply(), reply(b'{"prediction": "virginica"}'))  # compared, disagreed
    tally.record(reply(), None)  # shadow failed: connect, timeout, reset
    tally.record(None, reply(status=503))  # a 5xx is a shadow error, whatever the primary did
    tally.record(None, reply())  # primary cut: nothing to compare
    tally.record(reply(body=None), reply())  # primary too large to keep
    tally.record(reply(), reply(body=None))  # shadow too large to keep
    tally.record(reply(status=500), reply(status=500))  # both fail: still the shadow's error
    r = tally.report(T0 + timedelta(seconds=5))
    assert (r.compared, r.agreed, r.shadow_errors, r.uncompared) == (2, 1, 3, 3)
    assert r.finished == 8
    assert r.agreement_rate == 0.5
    assert r.error_rate == 3 / 8
    assert r.examples == ['primary 200 {"prediction": "setosa"} vs shadow 200 {"prediction": "virginica"}']
    assert (r.started, r.at) == (T0, T0 + timedelta(seconds=5))


def test_tally_buckets_latencies_of_compared_pairs_only() -> None:
    tally = ShadowTally([0.01, 0.1], T0)
    tally.record(reply(latency=0.01), reply(latency=0.05))  # a bound is inclusive (le)
    tally.record(reply(latency=0.002), reply(latency=3.0))
    tally.record(reply(latency=0.002), None)  # an error has no shadow latency; its primary is not counted
    r = tally.report(T0)
    assert r.primary_latency_buckets == [(0.01, 2), (0.1, 2), (INF, 2)]
    assert r.shadow_latency_buckets == [(0.01, 0), (0.1, 1), (INF, 2)]


def test_tally_keeps_the_latest_few_short_examples() -> None:
    tally = ShadowTally(DURATION_BUCKETS, T0)
    tally.record(reply(), reply(json.dumps({"prediction": "x" * 500}).encode()))
    assert len(tally.examples[0]) <= 200 and tally.examples[0].endswith("…")
    for i in range(1, MAX_EXAMPLES + 3):
        tally.record(reply(), reply(b'{"prediction": %d}' % i))
    r = tally.report(T0)
    assert [e.rsplit(" ", 1)[1] for e in r.examples] == [f"{i}}}" for i in range(3, MAX_EXAMPLES + 3)]
    assert r.examples[0] == 'primary 200 {"prediction": "setosa"} vs shadow 200 {"prediction": 3}'


def test_tally_rejects_bad_bounds() -> None:
    for bounds in ([], [0.1, 0.01], [0.1, 0.1], [0.1, INF]):
        with pytest.raises(ValueError, match="bounds"):
            ShadowTally(bounds, T0)


def test_report_round_trips_through_json_with_inf() -> None:
    tally = ShadowTally(DURATION_BUCKETS, T0)
    tally.mirrored, tally.skipped = 3, 1
    tally.record(reply(), reply(b"{}"))
    r = tally.report(T0 + timedelta(seconds=1))
    data = r.model_dump_json()
    assert '"Infinity"' in data
    back = ShadowReport.model_validate_json(data)
    assert back == r
    assert back.primary_latency_buckets[-1] == (INF, 1)
    assert len(back.primary_latency_buckets) == len(DURATION_BUCKETS) + 1


# --- windows and quantiles ----------------------------------------------------------------------------


def snapshot(seconds: float, *, started: datetime = T0, **counts: object) -> ShadowReport:
    return ShadowReport.model_validate({**counts, "started": started, "at": T0 + timedelta(seconds=seconds)})


def test_since_is_the_window_between_two_snapshots() -> None:
    earlier = snapshot(
        10, mirrored=10, skipped=1, compared=8, agreed=7, uncompared=1, shadow_errors=1,
        primary_latency_buckets=[(0.01, 6), (0.1, 8), (INF, 8)], examples=["e1"],
    )  # fmt: skip
    later = snapshot(
        20, mirrored=30, skipped=1, compared=25, agreed=20, uncompared=2, shadow_errors=3,
        primary_latency_buckets=[(0.01, 20), (0.1, 25), (INF, 25)], examples=["e1", "e2"],
    )  # fmt: skip
    window = later.since(earlier)
    assert (window.mirrored, window.skipped, window.compared, window.agreed) == (20, 0, 17, 13)
    assert (window.uncompared, window.shadow_errors) == (1, 2)
    assert window.primary_latency_buckets == [(0.01, 14), (0.1, 17), (INF, 17)]
    assert window.shadow_latency_buckets == []
    assert window.examples == ["e2"]
    assert (window.started, window.at) == (earlier.at, later.at)


def test_since_never_goes_negative_and_keeps_buckets_cumulative() -> None:
    earlier = snapshot(
        10, mirrored=50, compared=40, primary_latency_buckets=[(0.01, 30), (0.1, 40), (INF, 40)]
    )
    later = snapshot(20, mirrored=45, compared=41, primary_latency_buckets=[(0.01, 25), (0.1, 41), (INF, 41)])
    window = later.since(earlier)
    assert (window.mirrored, window.compared) == (0, 1)
    assert window.primary_latency_buckets == [(0.01, 0), (0.1, 1), (INF, 1)]


def test_since_from_the_start_or_across_a_reset_is_the_whole_snapshot() -> None:
    later = snapshot(20, mirrored=5, compared=5, started=T0 + timedelta(seconds=15))
    assert later.since(None) == later
    assert later.since(snapshot(10, mirrored=50, compared=50)) == later  # removed and mirrored anew


def test_latency_quantiles_follow_histogram_quantile() -> None:
    buckets = [(0.01, 10), (0.1, 90), (1.0, 100), (INF, 100)]
    r = snapshot(0, compared=100, primary_latency_buckets=buckets)
    for q in (0.5, 0.9, 0.99):
        assert r.latency_quantile("primary", q) == pytest.approx(histogram_quantile(buckets, q))
    assert r.latency_quantile("primary", 0.5) == pytest.approx(0.01 + 0.09 * 40 / 80)
    assert r.latency_quantile("shadow", 0.5) is None  # no buckets
    empty = snapshot(0, shadow_latency_buckets=[(0.01, 0), (INF, 0)])
    assert empty.latency_quantile("shadow", 0.99) is None
    assert empty.agreement_rate is None and empty.error_rate is None


# --- judge_shadow ----------------------------------------------------------------------------------------


def judged(
    *,
    compared: int = 1000,
    agreed: int = 1000,
    errors: int = 0,
    uncompared: int = 0,
    primary_p99: float = 0.01,
    shadow_p99: float = 0.01,
    min_samples: int = 100,
    min_agreement: float | None = 0.95,
    max_latency_ratio: float = 1.5,
) -> tuple[str, list[str]]:
    """A report whose every compared latency sits just under the given p99s' buckets."""

    def buckets(p99: float) -> list[tuple[float, int]]:
        return [(p99, compared), (INF, compared)]

    report = snapshot(
        0,
        mirrored=compared + errors + uncompared,
        compared=compared,
        agreed=agreed,
        uncompared=uncompared,
        shadow_errors=errors,
        primary_latency_buckets=buckets(primary_p99),
        shadow_latency_buckets=buckets(shadow_p99),
    )
    return judge_shadow(
        report, min_samples=min_samples, min_agreement=min_agreement, max_latency_ratio=max_latency_ratio
    )


def test_judge_passes_with_the_figures() -> None:
    verdict, reasons = judged(agreed=990, errors=10)
    assert verdict == "pass"
    assert reasons[0] == "shadow errors 1% (10/1010) <= 5% allowed"
    assert reasons[1] == "agreement 99% (990/1000)"
    assert reasons[2].startswith("shadow p99 latency 9.9 ms vs primary 9.9 ms (x1.00 <= x1.5")


def test_judge_is_inconclusive_below_min_samples() -> None:
    assert judged(compared=99, agreed=0) == ("inconclusive", ["99 responses compared, 100 required"])
    assert judged(compared=0, agreed=0, min_samples=0)[0] == "inconclusive"  # nothing at all to judge


def test_judge_fails_on_agreement() -> None:
    verdict, reasons = judged(agreed=912)
    assert verdict == "fail"
    assert reasons == ["agreement 91.2% < 95% required (912/1000)"]
    assert judged(agreed=912, min_agreement=None)[0] == "pass"  # agreement not judged
    assert judged(agreed=950)[0] == "pass"  # exactly the minimum passes


def test_judge_fails_on_shadow_errors_even_without_enough_comparisons() -> None:
    verdict, reasons = judged(compared=10, agreed=10, errors=190)
    assert verdict == "fail"
    assert reasons == ["shadow errors 95% (190/200) > 5% allowed"]
    assert judged(compared=95, agreed=95, errors=5)[0] == "inconclusive"  # 5% of 100 is allowed
    verdict, reasons = judged(errors=100, agreed=900)  # errors and agreement both fail: both said
    assert verdict == "fail" and len(reasons) == 2 and reasons[1].startswith("agreement 90%")


def test_judge_fails_on_latency_ratio() -> None:
    verdict, reasons = judged(primary_p99=0.01, shadow_p99=0.025)
    assert verdict == "fail"
    assert reasons == ["shadow p99 latency 24.8 ms vs primary 9.9 ms (x2.50 > x1.5 allowed)"]
    assert judged(primary_p99=0.01, shadow_p99=0.025, max_latency_ratio=3)[0] == "pass"
