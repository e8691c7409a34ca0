"""Shadow traffic: compare a mirrored copy of live requests between the primary and a shadow, and judge it.

The gateway copies a share of an API's requests to a shadow (a canary's candidate, or another API) and never
relays the shadow's answer. For each mirrored request it hands both complete responses to a `ShadowTally`,
which counts agreement, shadow failures and both latencies; `ShadowTally.report` snapshots that as a
`ShadowReport`, and `judge_shadow` turns a report (usually a window, `later.since(earlier)`) into a verdict.

Everything here is pure: no I/O, no clocks (callers pass the times), so it is unit-tested exhaustively.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from cortex_flows.rollout.analysis import Check, Stat

MAX_EXAMPLES = 5  # latest disagreements kept verbatim: enough to see what differs, bounded memory
MAX_ERROR_RATE = 0.05  # default share of finished mirrored requests a shadow may fail
_EXAMPLE_BODY_CHARS = 80  # per body, so an example line stays around 200 characters
_REL_TOL = 1e-6
_ABS_TOL = 1e-9

Verdict = Literal["pass", "fail", "inconclusive"]


def responses_agree(primary_status: int, primary_body: bytes, shadow_status: int, shadow_body: bytes) -> bool:
    """Same status, and the same body: as JSON when both parse (so key order, whitespace and float noise in
    the last digits do not count as disagreement), else byte for byte."""
    if primary_status != shadow_status:
        return False
    if primary_body == shadow_body:
        return True
    try:
        return _json_agree(json.loads(primary_body), json.loads(shadow_body))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return False  # the bytes differ, and at least one side is not JSON
    except (RecursionError, OverflowError):  # too deep to walk, or an int too large for a float: the bytes
        return False  # decide, and they differ


def _json_agree(a: Any, b: Any) -> bool:
    """Structural equality of parsed JSON with numbers compared by `math.isclose` (bool is no number)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int) and isinstance(b, int):
        return a == b  # exact: ints are counts and ids, and may be larger than any float
    if isinstance(a, int | float) and isinstance(b, int | float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)  # two models both answering NaN agree
        return math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=_ABS_TOL)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_agree(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_agree(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


class Reply(NamedTuple):
    """One side's complete response to a mirrored request, as the gateway measured it."""

    status: int
    body: bytes | None  # None: larger than the gateway keeps for comparison
    latency: float  # seconds from sending the request to the end of the response


class ShadowReport(BaseModel):
    """Comparison counts of one route's mirrored requests from `started` to `at`.

    Every request the gateway picks for mirroring is `mirrored` (sent to the shadow) or `skipped` (not
    sent: too many mirrors in flight, or no shadow replica ready). A mirrored request that finished is
    exactly one of: a shadow error (no complete response: connect failure, timeout, reset; or a 5xx
    answer), `uncompared` (the shadow answered, but one side could not be compared: the primary failed or
    was cut, or a body was too large to keep), or `compared`, of which `agreed` matched
    (`responses_agree`). Latencies are those of compared pairs only, so both histograms cover the same
    requests. Counts from the gateway are cumulative; `since` makes a window of two snapshots.
    """

    model_config = ConfigDict(ser_json_inf_nan="strings")  # the +Inf bucket survives JSON

    mirrored: int = 0
    skipped: int = 0
    compared: int = 0
    agreed: int = 0
    uncompared: int = 0
    shadow_errors: int = 0
    # Cumulative Prometheus buckets (upper bound in seconds, count), +Inf last.
    primary_latency_buckets: list[tuple[float, int]] = Field(default_factory=list)
    shadow_latency_buckets: list[tuple[float, int]] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)  # the latest few disagreements, shortened
    started: datetime
    at: datetime

    @property
    def finished(self) -> int:
        """Mirrored requests whose outcome is known (the rest are still in flight)."""
        return self.compared + self.uncompared + self.shadow_errors

    @property
    def agreement_rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    @property
    def error_rate(self) -> float | None:
        """Shadow errors per finished mirrored request."""
        return self.shadow_errors / self.finished if self.finished else None

    def latency_quantile(self, which: Literal["primary", "shadow"], q: float) -> float | None:
        """From the buckets, as PromQL's `histogram_quantile`; None before any compared pair."""
        buckets = self.primary_latency_buckets if which == "primary" else self.shadow_latency_buckets
        if len(buckets) < 2 or not buckets[-1][1]:
            return None
        from cortex_flows.rollout.analysis import histogram_quantile  # numpy and scipy: only when judging

        return histogram_quantile(buckets, q)

    def since(self, earlier: ShadowReport | None) -> ShadowReport:
        """The counts between `earlier` (a snapshot of the same route) and this one; never negative.

        None means from the start. Snapshots of different countings (the route was removed and mirrored
        anew in between) make this whole snapshot the window, as Prometheus' `increase()` reads a reset.
        """
        if earlier is None or earlier.started != self.started:
            return self.model_copy(deep=True)
        seen = set(earlier.examples)
        return ShadowReport(
            mirrored=max(0, self.mirrored - earlier.mirrored),
            skipped=max(0, self.skipped - earlier.skipped),
            compared=max(0, self.compared - earlier.compared),
            agreed=max(0, self.agreed - earlier.agreed),
            uncompared=max(0, self.uncompared - earlier.uncompared),
            shadow_errors=max(0, self.shadow_errors - earlier.shadow_errors),
            primary_latency_buckets=_bucket_window(
                self.primary_latency_buckets, earlier.primary_latency_buckets
            ),
            shadow_latency_buckets=_bucket_window(
                self.shadow_latency_buckets, earlier.shadow_latency_buckets
            ),
            examples=[e for e in self.examples if e not in seen],
            started=earlier.at,
            at=self.at,
        )


def _bucket_window(now: list[tuple[float, int]], before: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Cumulative buckets of the window; differences are kept non-negative and non-decreasing."""
    earlier = dict(before)
    out: list[tuple[float, int]] = []
    running = 0
    for le, count in now:
        running = max(running, count - earlier.get(le, 0))
        out.append((le, running))
    return out


class ShadowTally:
    """The mutable counts behind a `ShadowReport`, kept by the gateway for one route while it mirrors.

    The gateway adds to `mirrored` and `skipped` as it sends or skips mirror requests, and calls `record`
    once per mirrored request when both sides are known. Latencies are counted per bucket (an index
    lookup per observation) and made cumulative only when a report is taken.
    """

    __slots__ = (
        "_bounds",
        "_primary",
        "_shadow",
        "agreed",
        "compared",
        "examples",
        "mirrored",
        "shadow_errors",
        "skipped",
        "started",
        "uncompared",
    )

    def __init__(self, bounds: Sequence[float], started: datetime) -> None:
        """`bounds`: the finite upper bounds of the latency buckets, ascending (a +Inf bucket is added)."""
        if list(bounds) != sorted(set(bounds)) or not bounds or not all(math.isfinite(b) for b in bounds):
            raise ValueError("latency bucket bounds must be finite, distinct and ascending")
        self._bounds = tuple(float(b) for b in bounds)
        self._primary = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._shadow = [0] * (len(bounds) + 1)
        self.started = started
        self.mirrored = 0
        self.skipped = 0
        self.compared = 0
        self.agreed = 0
        self.uncompared = 0
        self.shadow_errors = 0
        self.examples: list[str] = []

    def record(self, primary: Reply | None, shadow: Reply | None) -> None:
        """One finished mirrored request. `primary` None: its response was not complete (failed, cut, or
        unreadable); `shadow` None: the shadow gave no complete response. A shadow error takes precedence,
        since it says something about the shadow whatever the primary did."""
        if shadow is None or shadow.status >= 500:
            self.shadow_errors += 1
        elif primary is None or primary.body is None or shadow.body is None:
            self.uncompared += 1
        else:
            self.compared += 1
            self._primary[bisect.bisect_left(self._bounds, primary.latency)] += 1
            self._shadow[bisect.bisect_left(self._bounds, shadow.latency)] += 1
            if responses_agree(primary.status, primary.body, shadow.status, shadow.body):
                self.agreed += 1
            else:  # the latest ones, so that a window of a long-running mirror has its own
                examples = self.examples
                examples.append(
                    f"primary {primary.status} {_short(primary.body)} vs shadow {shadow.status} {_short(shadow.body)}"
                )
                if len(examples) > MAX_EXAMPLES:
                    del examples[0]

    def report(self, at: datetime) -> ShadowReport:
        return ShadowReport(
            mirrored=self.mirrored,
            skipped=self.skipped,
            compared=self.compared,
            agreed=self.agreed,
            uncompared=self.uncompared,
            shadow_errors=self.shadow_errors,
            primary_latency_buckets=self._cumulative(self._primary),
            shadow_latency_buckets=self._cumulative(self._shadow),
            examples=list(self.examples),
            started=self.started,
            at=at,
        )

    def _cumulative(self, counts: list[int]) -> list[tuple[float, int]]:
        out: list[tuple[float, int]] = []
        running = 0
        for le, n in zip((*self._bounds, math.inf), counts, strict=True):
            running += n
            out.append((le, running))
        return out


def _short(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    return text if len(text) <= _EXAMPLE_BODY_CHARS else text[: _EXAMPLE_BODY_CHARS - 1] + "…"


def judge_shadow(
    report: ShadowReport,
    *,
    min_samples: int,
    min_agreement: float | None,
    max_latency_ratio: float,
    max_error_rate: float = MAX_ERROR_RATE,
) -> tuple[Verdict, list[str]]:
    """Pass, fail or inconclusive for a shadow, with one human sentence per figure judged.

    - fail when the shadow failed more than `max_error_rate` of the finished mirrored requests (errors /
      (compared + uncompared + errors)), once at least `min_samples` finished: a shadow that is down
      never answers anything comparable, and must fail rather than stay inconclusive forever;
    - inconclusive when fewer than `min_samples` responses were compared;
    - fail when the agreement rate is below `min_agreement` (None: agreement is not judged), or when the
      shadow's p99 latency exceeds `max_latency_ratio` times the primary's;
    - pass otherwise.
    """
    failures: list[str] = []
    error_rate = report.error_rate or 0.0
    errors = f"shadow errors {_pct(error_rate)} ({report.shadow_errors}/{report.finished})"
    if report.finished >= min_samples and error_rate > max_error_rate:
        failures.append(f"{errors} > {_pct(max_error_rate)} allowed")
    rate = report.agreement_rate
    if rate is None or report.compared < min_samples:
        if failures:
            return "fail", failures
        return "inconclusive", [f"{report.compared} responses compared, {min_samples} required"]
    passes = [] if failures else [f"{errors} <= {_pct(max_error_rate)} allowed"]
    agreement = f"agreement {_pct(rate)}"
    counts = f"({report.agreed}/{report.compared})"
    if min_agreement is not None and rate < min_agreement:
        failures.append(f"{agreement} < {_pct(min_agreement)} required {counts}")
    else:
        passes.append(f"{agreement} {counts}")
    primary_p99 = report.latency_quantile("primary", 0.99)
    shadow_p99 = report.latency_quantile("shadow", 0.99)
    if primary_p99 and shadow_p99 is not None:  # both exist once anything was compared
        ratio = shadow_p99 / primary_p99
        latency = f"shadow p99 latency {_ms(shadow_p99)} vs primary {_ms(primary_p99)} (x{ratio:.2f}"
        if ratio > max_latency_ratio:
            failures.append(f"{latency} > x{max_latency_ratio:g} allowed)")
        else:
            passes.append(f"{latency} <= x{max_latency_ratio:g} allowed)")
    return ("fail", failures) if failures else ("pass", passes)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _pct(share: float) -> str:
    """0.912 -> "91.2%", 0.95 -> "95%"."""
    return f"{share * 100:.1f}".removesuffix(".0") + "%"


@dataclass(frozen=True)
class ShadowPolicy:
    """How a canary's shadow step judges the comparison: counted from `baseline` (the report when the
    step began; None: from the start), with the canary's `min_samples`, `min_agreement` and p99 ratio."""

    baseline: ShadowReport | None
    min_samples: int
    min_agreement: float | None
    max_latency_ratio: float


def shadow_check(report: ShadowReport | None, policy: ShadowPolicy) -> tuple[Check, dict[str, Stat]]:
    """The shadow comparison as one check of a step's analysis, with its figures for the ledger."""
    from cortex_flows.rollout.analysis import Check, Status

    if report is None:
        return Check("shadow", Status.THIN, "no mirrored request answered yet"), {"shadow_compared": 0}
    outcome, reasons = judge_shadow(
        report, min_samples=policy.min_samples, min_agreement=policy.min_agreement,
        max_latency_ratio=policy.max_latency_ratio,
    )  # fmt: skip
    status = {"pass": Status.PASS, "fail": Status.FAIL, "inconclusive": Status.THIN}[outcome]
    stats: dict[str, Stat] = {
        "shadow_mirrored": report.mirrored, "shadow_compared": report.compared, "shadow_agreed": report.agreed,
        "shadow_agreement": report.agreement_rate, "shadow_errors": report.shadow_errors,
        "shadow_p99": report.latency_quantile("shadow", 0.99), "primary_p99": report.latency_quantile("primary", 0.99),
    }  # fmt: skip
    detail = "; ".join(reasons)
    if report.examples and outcome == "fail":
        detail += f" (e.g. {report.examples[-1]})"
    return Check("shadow", status, detail), stats
