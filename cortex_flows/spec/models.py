"""Pydantic models of `cortex.yaml`, with Cortex's field names, defaults and validations (reference §1.2).

Models are frozen, strict (a quoted "5" is not an integer) and forbid unknown fields. Defaults that depend
on other fields (init_replicas, target_in_flight, endpoint) are filled in during validation, so a validated
model, and the dump the identity hashes are built from, never holds a "use the default" placeholder.
Filesystem checks run only when validation gets a project directory (see `validation_context`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import functools
import itertools
import keyword
import posixpath
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cortex_flows.spec.errors import Problem, describe_value
from cortex_flows.spec.quantities import (
    check_cpu,
    check_duration,
    check_int_or_percent,
    check_memory,
    cpu_millicores,
    duration_seconds,
    is_zero,
    memory_bytes,
    percent_or_int,
)

MAX_API_NAME_LENGTH = 42
DEFAULT_CLASS_NAME = "Handler"
DEFAULT_REQUIREMENTS = "requirements.txt"
RESERVED_ENV_PREFIX = "CORTEX_"  # Cortex reserves these for the values it sets in every replica
MAX_POD_REQUESTS = 30000  # Cortex's cap on max_concurrency and max_queue_length
AUTOSCALING_TICK_SECONDS = 10
ISSUES_ERROR = "spec_issues"  # pydantic error type carrying cross-field problems, each with its own field
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # in date.weekday() order
DEFAULT_CANARY_STEPS = (5, 25, 50, 100)
MIN_ANALYSIS_INTERVAL_SECONDS = 10  # Flagger's minimum `interval`
# Default drift thresholds per test: a p-value below which chi2/ks call it drift, a PSI above which psi does
DEFAULT_DRIFT_THRESHOLDS = {"chi2": 0.01, "ks": 0.01, "psi": 0.2}

_API_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ENDPOINT = re.compile(r"(/[A-Za-z0-9._~-]+)+")
_S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BLOCK_NAME = re.compile(r"[a-z0-9-]+")  # Prefect's block document names
_CLOCK = re.compile(r"(?P<h>\d{2}):(?P<m>\d{2})")
_DATE = r"\d{4}-\d{2}-\d{2}"
_FREEZE = re.compile(rf"(?P<first>{_DATE})(?:/(?P<last>{_DATE}))?")

Duration = Annotated[str, BeforeValidator(check_duration)]
CpuQuantity = Annotated[str, BeforeValidator(check_cpu)]
MemoryQuantity = Annotated[str, BeforeValidator(check_memory)]
IntOrPercent = Annotated[int | str, BeforeValidator(check_int_or_percent)]


def validation_context(project_dir: Path) -> dict[str, Path]:
    """Context for `model_validate` that turns on the checks that referenced files exist in the project."""
    return {"project_dir": project_dir}


def _reject(issues: list[tuple[str, str]]) -> None:
    """Raise cross-field problems together, each tagged with its field path relative to the model."""
    if issues:
        summary = "; ".join(f"{field}: {message}" for field, message in issues)
        raise PydanticCustomError(ISSUES_ERROR, "{summary}", {"issues": issues, "summary": summary})


def _fill(model: BaseModel, **values: Any) -> None:
    """Set derived defaults on a frozen model; only its own validators call this, before anyone sees it."""
    for name, value in values.items():
        object.__setattr__(model, name, value)


def _check_project_path(value: str, info: ValidationInfo, want_file: bool) -> None:
    """A path must be relative and stay inside the project (also through symlinks) and, if known, exist."""
    if not value:
        raise ValueError("must not be empty")
    if "\0" in value:
        raise ValueError(f"must not contain a NUL character, got {value!r}")
    if PurePosixPath(value).is_absolute():
        raise ValueError(f"must be a path relative to the project directory, got {value!r}")
    normal = posixpath.normpath(value)
    if normal == ".." or normal.startswith("../"):
        raise ValueError(f"must stay inside the project directory, got {value!r}")
    project_dir: Path | None = (info.context or {}).get("project_dir")
    if project_dir is None:
        return
    root = project_dir.resolve()
    try:
        target = (root / value).resolve()
        found = target.is_file() if want_file else target.exists()
    except OSError as exc:  # e.g. a name longer than the filesystem allows
        raise ValueError(f"cannot look for {value!r} in the project directory {root}: {exc.strerror}") from None
    if not target.is_relative_to(root):
        raise ValueError(f"must stay inside the project directory, got {value!r} (a link to {target})")
    if not found:
        what = "file" if want_file else "path"
        raise ValueError(f"{what} {value!r} not found in the project directory {root}")


def is_api_name(value: object) -> bool:
    """Whether `value` is a usable API name (a DNS-1035 label of at most 42 characters)."""
    return isinstance(value, str) and len(value) <= MAX_API_NAME_LENGTH and bool(_API_NAME.fullmatch(value))


def _check_name(name: str) -> str:
    if not is_api_name(name):
        raise ValueError(
            "must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, ending with"
            f" a letter or digit, at most {MAX_API_NAME_LENGTH} characters), got {name!r}"
        )
    return name


def _check_endpoint(value: str) -> str:
    if not value.startswith("/"):
        reason = "must start with '/'"
    elif "?" in value or "#" in value:
        reason = "must be a plain path, without a query ('?') or fragment ('#')"
    elif value.endswith("/"):
        reason = "must not end with '/' (and cannot be '/' alone, which would capture every API's path)"
    elif "//" in value:
        reason = "must not contain empty segments ('//')"
    elif any(segment in (".", "..") for segment in value.split("/")):
        reason = "must not contain '.' or '..' segments"
    elif not _ENDPOINT.fullmatch(value):
        reason = "may only contain letters, digits, '-', '.', '_' and '~' between '/' separators"
    else:
        return value
    raise ValueError(f"{reason}, got {value!r}")


ApiName = Annotated[str, AfterValidator(_check_name)]
Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


def _check_clock(value: object) -> str:
    """A wall-clock time 'HH:MM' (00:00 to 24:00); returns it zero-padded."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 24 * 60:
        written = f"{value // 60}:{value % 60:02d}"  # YAML 1.1 reads an unquoted 22:00 as 22 * 60 + 0
        raise ValueError(
            f"expected a time 'HH:MM' in quotes, got the number {value}"
            f" (YAML reads an unquoted {written} as a number: quote it)"
        )
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    hours, minutes = (int(match["h"]), int(match["m"])) if match else (-1, -1)
    if not (0 <= hours < 24 and 0 <= minutes < 60) and (hours, minutes) != (24, 0):
        raise ValueError(f"expected a time 'HH:MM' between '00:00' and '24:00', got {describe_value(value)}")
    return f"{hours:02d}:{minutes:02d}"


def clock_minutes(text: str) -> int:
    """Minutes after midnight of a validated 'HH:MM' ('24:00' is 1440)."""
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@functools.cache
def _timezone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _check_timezone(value: str) -> str:
    names = _timezone_names()
    if value in names:
        return value
    by_lower = {name.lower(): name for name in names}
    close = difflib.get_close_matches(value, names, n=1)
    if value.lower() in by_lower:
        close = [by_lower[value.lower()]]
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown time zone {value!r}{suggestion}; expected an IANA name like 'Europe/Berlin',"
        " 'America/New_York' or 'UTC'"
    )


def _check_freeze(value: object) -> str:
    """A frozen date or an inclusive range of dates; returns 'YYYY-MM-DD' or 'YYYY-MM-DD/YYYY-MM-DD'."""
    expected = "expected a date 'YYYY-MM-DD' or an inclusive range 'YYYY-MM-DD/YYYY-MM-DD'"
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):  # YAML reads 2024-12-24 as a date
        return value.isoformat()
    match = _FREEZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        whole_days = isinstance(value, dt.datetime)
        got = f"a date and time {value} (freezes cover whole days)" if whole_days else describe_value(value)
        raise ValueError(f"{expected}; got {got}")
    try:
        first = dt.date.fromisoformat(match["first"])
        last = dt.date.fromisoformat(match["last"] or match["first"])
    except ValueError:
        raise ValueError(f"{expected}; {value!r} is not a calendar date") from None
    if last < first:
        raise ValueError(f"a range must not end before it starts, got {value!r}")
    return first.isoformat() if first == last else f"{first.isoformat()}/{last.isoformat()}"


def freeze_range(text: str) -> tuple[dt.date, dt.date]:
    """First and last day (inclusive) of a validated freeze entry."""
    first, _, last = text.partition("/")
    return dt.date.fromisoformat(first), dt.date.fromisoformat(last or first)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ClockTime = Annotated[str, BeforeValidator(_check_clock)]
TimeZoneName = Annotated[str, AfterValidator(_check_timezone)]
FreezeDates = Annotated[str, BeforeValidator(_check_freeze)]


class SpecModel(BaseModel):
    """Base of every spec model: unknown fields, loose types and NaN/inf are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


_PYTHON_ONLY_DEFAULTS = (("path", None), ("class_name", DEFAULT_CLASS_NAME), ("python_path", None))


class HandlerSpec(SpecModel):
    """Which code answers requests: the user's handler class in a file, or a built-in handler."""

    type: Literal["python", "sklearn"]
    path: str | None = None  # python: the .py file, relative to the project
    class_name: str = DEFAULT_CLASS_NAME  # python only
    python_path: str | None = None  # python only: a project directory replicas add to sys.path

    @field_validator("path")
    @classmethod
    def _path_in_project(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _check_project_path(value, info, want_file=True)
            if not value.endswith(".py"):
                raise ValueError(f"must be a Python file ending in '.py', got {value!r}")
        return value

    @field_validator("python_path")
    @classmethod
    def _python_path_in_project(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _check_project_path(value, info, want_file=False)
        return value

    @field_validator("class_name")
    @classmethod
    def _class_name_is_identifier(cls, value: str) -> str:
        if not value.isidentifier() or keyword.iskeyword(value):
            raise ValueError(f"must be a Python class name, got {value!r}")
        return value

    @model_validator(mode="after")
    def _fields_match_type(self) -> HandlerSpec:
        issues = []
        if self.type == "python" and self.path is None:
            issues.append(("path", "is required for handler type 'python' (the .py file defining the class)"))
        if self.type == "sklearn":
            # Compared with the defaults, not "was it written", so a model dump validates again.
            issues += [
                (field, "not allowed for handler type 'sklearn' (the built-in handler serves model_path)")
                for field, default in _PYTHON_ONLY_DEFAULTS
                if getattr(self, field) != default
            ]
        _reject(issues)
        return self


class Dependencies(SpecModel):
    """What replicas install before loading the handler: a pip requirements file in the project."""

    pip: str = DEFAULT_REQUIREMENTS  # the default may be absent (no dependencies); another file must exist

    @field_validator("pip")
    @classmethod
    def _requirements_in_project(cls, value: str, info: ValidationInfo) -> str:
        # Compared with the default, not "was it written", so a model dump validates again.
        if value != DEFAULT_REQUIREMENTS:
            _check_project_path(value, info, want_file=True)
        return value


def _check_env(env: dict[str, str]) -> dict[str, str]:
    issues = []
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            message = "must be letters, digits and '_', not starting with a digit"
            issues.append((name, f"invalid environment variable name {name!r}: {message}"))
        elif name.startswith(RESERVED_ENV_PREFIX):
            reserved = f"names starting with {RESERVED_ENV_PREFIX} are reserved (cortex-flows sets them)"
            issues.append((name, f"{reserved}, got {name!r}"))
    _reject(issues)
    return env


class Compute(SpecModel):
    """Resources each replica requests; the user's text is kept, the parsed numbers are properties."""

    cpu: CpuQuantity = "200m"
    gpu: int = Field(0, ge=0)
    mem: MemoryQuantity | None = None

    @property
    def cpu_millicores(self) -> int:
        return cpu_millicores(self.cpu)

    @property
    def mem_bytes(self) -> int | None:
        return None if self.mem is None else memory_bytes(self.mem)


class Pod(SpecModel):
    """Per-replica admission control: requests run concurrently, then queue, then get HTTP 503."""

    max_concurrency: int = Field(1, gt=0, le=MAX_POD_REQUESTS)
    max_queue_length: int = Field(100, gt=0, le=MAX_POD_REQUESTS)


class Autoscaling(SpecModel):
    """Cortex's request-based autoscaler settings; after validation init_replicas is always set."""

    min_replicas: int = Field(1, ge=0)  # 0 = scale to zero
    max_replicas: int = Field(100, gt=0)
    init_replicas: int | None = None  # default: min_replicas
    target_in_flight: float | None = Field(None, gt=0)  # default: pod.max_concurrency (set by the API)
    window: Duration = "1m"
    downscale_stabilization_period: Duration = "5m"
    upscale_stabilization_period: Duration = "1m"
    max_downscale_factor: float = Field(0.75, ge=0, lt=1)
    max_upscale_factor: float = Field(1.5, gt=1)
    downscale_tolerance: float = Field(0.05, ge=0, lt=1)
    upscale_tolerance: float = Field(0.05, ge=0)

    @field_validator("window")
    @classmethod
    def _window_is_whole_ticks(cls, value: str) -> str:
        seconds = duration_seconds(value)
        if seconds < AUTOSCALING_TICK_SECONDS or seconds % AUTOSCALING_TICK_SECONDS:
            raise ValueError(
                f"must be at least {AUTOSCALING_TICK_SECONDS}s and a multiple of {AUTOSCALING_TICK_SECONDS}s"
                f" (the autoscaler's tick), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _replica_bounds(self) -> Autoscaling:
        low, high = self.min_replicas, self.max_replicas
        if low > high:
            _reject([("min_replicas", f"must be <= max_replicas ({high}), got {low}")])
        init = low if self.init_replicas is None else self.init_replicas
        if not low <= init <= high:
            message = f"must be between min_replicas ({low}) and max_replicas ({high}), got {init}"
            _reject([("init_replicas", message)])
        _fill(self, init_replicas=init)
        return self

    @property
    def window_seconds(self) -> float:
        return duration_seconds(self.window)

    @property
    def downscale_stabilization_seconds(self) -> float:
        return duration_seconds(self.downscale_stabilization_period)

    @property
    def upscale_stabilization_seconds(self) -> float:
        return duration_seconds(self.upscale_stabilization_period)


class UpdateStrategy(SpecModel):
    """How a rolling update trades extra replicas (surge) against missing ones (unavailable)."""

    max_surge: IntOrPercent = "25%"
    max_unavailable: IntOrPercent = "25%"
    progress_deadline: Duration = "10m"  # a rollout not done by then is rolled back (Kubernetes' default)

    @property
    def progress_deadline_seconds(self) -> float:
        return duration_seconds(self.progress_deadline)

    @model_validator(mode="after")
    def _can_make_progress(self) -> UpdateStrategy:
        if is_zero(self.max_surge) and is_zero(self.max_unavailable):
            _reject([("", "max_surge and max_unavailable cannot both be 0: the update could never proceed")])
        return self

    def resolve(self, replicas: int) -> tuple[int, int]:
        """(surge, unavailable) replicas for a version of `replicas`, rounded as Kubernetes rounds them.

        Like Kubernetes, if both round to zero one replica may be unavailable, so the update still moves.
        """
        surge = percent_or_int(self.max_surge, replicas, round_up=True)
        unavailable = percent_or_int(self.max_unavailable, replicas, round_up=False)
        return surge, 1 if surge == unavailable == 0 else unavailable


def _check_block_name(value: str) -> str:
    if not _BLOCK_NAME.fullmatch(value):
        raise ValueError(
            f"must name a Prefect Secret block (lowercase letters, digits and '-'), got {describe_value(value)}"
        )
    return value


BlockName = Annotated[str, AfterValidator(_check_block_name)]


class SplitterNetworking(SpecModel):
    """Where the gateway serves a TrafficSplitter; after validation endpoint is always set."""

    endpoint: Endpoint | None = None  # default: "/<name>" (set by the splitter or API)


class Networking(SplitterNetworking):
    """Where the gateway serves the API, and who may call it. Keys are checked by the API's replicas, so a
    splitter has none of its own: each API it sends a request to checks it."""

    # Name of a Prefect Secret block holding the API's keys; None: no key needed. The name, never the keys.
    api_keys: BlockName | None = None


class Window(SpecModel):
    """When a canary may move traffic forward: on each of `days`, from `start` to `end` in `timezone`.

    `start` is included and `end` is not. A window with `end` before `start` runs overnight: it opens on
    each of `days` and closes the next morning. Both are read on the local calendar of `timezone`; a time
    a DST change skips is taken as the moment of the change, one it repeats as its first occurrence.
    """

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS))  # the days the window opens on
    start: ClockTime = "00:00"
    end: ClockTime = "24:00"
    timezone: TimeZoneName | None = None  # default: the canary's timezone (set by the canary)

    @field_validator("days")
    @classmethod
    def _days_in_week_order(cls, days: list[str]) -> list[str]:
        if not days:
            raise ValueError(f"must name at least one day ({', '.join(WEEKDAYS)})")
        twice = sorted({day for day in days if days.count(day) > 1}, key=WEEKDAYS.index)
        if twice:
            raise ValueError(f"lists {', '.join(map(repr, twice))} more than once")
        return sorted(days, key=WEEKDAYS.index)  # canonical, so the order written never changes a hash

    @model_validator(mode="after")
    def _start_before_end(self) -> Window:
        if self.start == "24:00":
            _reject([("start", "must be before '24:00' (a window starting at midnight starts at '00:00')")])
        if self.start_minutes == self.end_minutes:
            message = f"must differ from start ({self.start!r}); for a whole day use '00:00' to '24:00'"
            _reject([("end", message)])
        return self

    @property
    def start_minutes(self) -> int:
        return clock_minutes(self.start)

    @property
    def end_minutes(self) -> int:
        return clock_minutes(self.end)

    @property
    def overnight(self) -> bool:
        """Whether the window closes on the day after it opens."""
        return self.end_minutes < self.start_minutes


class Canary(SpecModel):
    """Policy of a canary rollout: traffic steps, bake and analysis, verdict thresholds and time windows.

    After validation `drift_threshold` and every window's `timezone` are set. Defaults are explained in
    the README (`canary:` in the cortex.yaml reference).
    """

    steps: list[int] = Field(default_factory=lambda: list(DEFAULT_CANARY_STEPS))  # % of traffic, ends at 100
    bake: Duration = "1m"  # time at each step before the next (Flagger's `interval`: 60s)
    analysis_interval: Duration = "1m"  # analysis cadence (Flagger's metric `interval`: 1m; >= 10s)
    min_samples: int = Field(100, ge=1)  # requests per version in an analysis before a verdict counts
    inconclusive: Literal["extend", "hold", "rollback"] = "extend"  # too few samples or no clear answer
    max_extensions: int = Field(3, ge=0)  # "extend": bakes added to a step before it rolls back
    max_error_rate_increase: float = Field(0.01, ge=0, le=1)  # candidate 5xx rate minus stable's
    max_latency_ratio: float = Field(1.5, ge=1)  # candidate p99 latency / stable p99 latency
    drift_test: Literal["chi2", "psi", "ks"] = "chi2"  # compares the versions' prediction distributions
    drift_threshold: float | None = Field(None, gt=0)  # default: DEFAULT_DRIFT_THRESHOLDS[drift_test]
    windows: list[Window] = Field(default_factory=list)  # none: always open
    freeze: list[FreezeDates] = Field(default_factory=list)  # days on which nothing moves forward
    timezone: TimeZoneName = "UTC"  # of windows that name none, and of `freeze` when there are no windows
    shadow: float = Field(0.0, ge=0, le=1)  # share of requests also mirrored to the candidate
    # Shadow step: least share of mirrored requests whose response matches the stable's (None: agreement
    # is reported, not judged)
    min_agreement: float | None = Field(None, gt=0, le=1)

    @field_validator("analysis_interval")
    @classmethod
    def _interval_at_least_minimum(cls, value: str) -> str:
        if duration_seconds(value) < MIN_ANALYSIS_INTERVAL_SECONDS:
            raise ValueError(f"must be at least {MIN_ANALYSIS_INTERVAL_SECONDS}s, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_and_resolve(self) -> Canary:
        issues = []
        steps = self.steps
        example = f"e.g. {list(DEFAULT_CANARY_STEPS)}"
        if not steps:
            message = "must list at least one traffic weight in percent, ending at 100"
            issues.append(("steps", f"{message} ({example})"))
        elif outside := [weight for weight in steps if not 1 <= weight <= 100]:
            message = "weights must be between 1 and 100 (percent of traffic)"
            issues.append(("steps", f"{message}, got {outside[0]}"))
        elif any(later <= earlier for earlier, later in itertools.pairwise(steps)):
            issues.append(("steps", f"must be strictly increasing ({example}), got {steps}"))
        elif steps[-1] != 100:
            message = "must end at 100 (the candidate takes all traffic before it is promoted)"
            issues.append(("steps", f"{message}, got {steps}"))
        if duration_seconds(self.bake) < duration_seconds(self.analysis_interval):
            message = f"must be >= analysis_interval ({self.analysis_interval}), so every step is analysed"
            issues.append(("bake", f"{message}, got {self.bake!r}"))
        threshold = self.drift_threshold
        if threshold is not None and self.drift_test in ("chi2", "ks") and threshold >= 1:
            message = f"for drift_test {self.drift_test!r} is a p-value: must be > 0 and < 1"
            issues.append(("drift_threshold", f"{message}, got {threshold:g}"))
        _reject(issues)
        windows = []
        for window in self.windows:
            if window.timezone is None:
                window = window.model_copy()
                _fill(window, timezone=self.timezone)  # filled, not "set": dumping what was set omits it
            windows.append(window)
        drift_threshold = DEFAULT_DRIFT_THRESHOLDS[self.drift_test] if threshold is None else threshold
        _fill(self, drift_threshold=drift_threshold, windows=windows)
        return self

    @property
    def bake_seconds(self) -> float:
        return duration_seconds(self.bake)

    @property
    def analysis_interval_seconds(self) -> float:
        return duration_seconds(self.analysis_interval)

    @property
    def freeze_ranges(self) -> list[tuple[dt.date, dt.date]]:
        """Each freeze entry as (first day, last day), both included."""
        return [freeze_range(entry) for entry in self.freeze]


class RealtimeAPI(SpecModel):
    """A synchronous HTTP API served by autoscaled replicas (Cortex's RealtimeAPI, handler era)."""

    name: ApiName
    kind: Literal["RealtimeAPI"]
    handler: HandlerSpec
    model_path: str | None = None  # relative to the project, or s3://bucket/key
    config: dict[str, Any] = Field(default_factory=dict)  # passed to the handler's constructor
    env: Annotated[dict[str, str], AfterValidator(_check_env)] = Field(default_factory=dict)  # for replicas
    dependencies: Dependencies = Field(default_factory=Dependencies)
    compute: Compute = Field(default_factory=Compute)
    pod: Pod = Field(default_factory=Pod)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    update_strategy: UpdateStrategy = Field(default_factory=UpdateStrategy)
    networking: Networking = Field(default_factory=Networking)
    canary: Canary = Field(default_factory=Canary)  # policy of canary rollouts (the spec hash only)

    @field_validator("model_path")
    @classmethod
    def _model_path_is_reachable(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if value.startswith("s3://"):
            if not _S3_URI.fullmatch(value):
                raise ValueError(f"must be s3://<bucket>/<key> with a valid bucket name, got {value!r}")
        elif "://" in value:
            raise ValueError(f"must be a path relative to the project or s3://<bucket>/<key>, got {value!r}")
        else:
            _check_project_path(value, info, want_file=False)
        return value

    @model_validator(mode="after")
    def _resolve_and_cross_check(self) -> RealtimeAPI:
        issues = []
        if self.handler.type == "sklearn" and self.model_path is None:
            issues.append(("model_path", "is required for handler type 'sklearn' (the model it serves)"))
        limit = self.pod.max_concurrency + self.pod.max_queue_length
        if self.target_in_flight > limit:
            message = f"must be <= pod.max_concurrency + pod.max_queue_length ({limit})"
            issues.append(("autoscaling.target_in_flight", f"{message}, got {self.target_in_flight:g}"))
        _reject(issues)
        _fill(
            self,
            autoscaling=self.autoscaling.model_copy(update={"target_in_flight": self.target_in_flight}),
            networking=self.networking.model_copy(update={"endpoint": self.endpoint}),
        )
        return self

    @property
    def endpoint(self) -> str:
        """The gateway path: `networking.endpoint`, by default `/<name>`."""
        return self.networking.endpoint or f"/{self.name}"

    @property
    def init_replicas(self) -> int:
        """Replicas to start with: `autoscaling.init_replicas`, by default `min_replicas`."""
        init = self.autoscaling.init_replicas
        return self.autoscaling.min_replicas if init is None else init

    @property
    def target_in_flight(self) -> float:
        """In-flight requests per replica the autoscaler aims for; by default `pod.max_concurrency`."""
        target = self.autoscaling.target_in_flight
        return float(self.pod.max_concurrency) if target is None else target


class SplitTarget(SpecModel):
    """One API behind a splitter: its percent of the traffic, or for the shadow the percent mirrored to it."""

    name: ApiName
    weight: int = Field(ge=0, le=100)
    shadow: bool = False  # gets copies of requests; its responses are never returned to clients

    @model_validator(mode="after")
    def _shadow_gets_requests(self) -> SplitTarget:
        if self.shadow and self.weight == 0:
            message = "must be between 1 and 100 for the shadow (the percent of requests mirrored to it)"
            _reject([("weight", f"{message}, got 0")])
        return self


class TrafficSplitter(SpecModel):
    """One endpoint that spreads requests over RealtimeAPIs by weight (Cortex's TrafficSplitter, v0.19+).

    Targets are named, not nested: each is a RealtimeAPI of the same file or one already deployed (checked
    when deploying). After validation `networking.endpoint` is always set.
    """

    name: ApiName
    kind: Literal["TrafficSplitter"]
    apis: list[SplitTarget]
    networking: SplitterNetworking = Field(default_factory=SplitterNetworking)

    @model_validator(mode="after")
    def _check_targets(self) -> TrafficSplitter:
        if not self.apis:
            _reject([("apis", "must list at least one RealtimeAPI, e.g. [{name: my-api, weight: 100}]")])
        issues = []
        first_at: dict[str, int] = {}
        shadow_at: int | None = None
        for index, target in enumerate(self.apis):
            first = first_at.setdefault(target.name, index)
            if target.name == self.name:
                message = "a splitter cannot send traffic to itself; name the RealtimeAPIs it splits between"
                issues.append((f"apis[{index}].name", f"{message}, got {target.name!r}"))
            elif first != index:
                message = f"duplicate target {target.name!r} (also at apis[{first}]); list each API once"
                issues.append((f"apis[{index}].name", message))
            if target.shadow and shadow_at is None:
                shadow_at = index
            elif target.shadow and shadow_at is not None:
                shadow = self.apis[shadow_at].name
                message = f"at most one API can be the shadow, and apis[{shadow_at}] ({shadow}) already is"
                issues.append((f"apis[{index}].shadow", message))
        live = [target for target in self.apis if not target.shadow]
        total = sum(target.weight for target in live)
        if not live:
            message = "must include an API that is not the shadow: the shadow's responses never reach clients"
            issues.append(("apis", message))
        elif total != 100:
            weights = ", ".join(f"{target.name}: {target.weight}" for target in live)
            issues.append(("apis", f"non-shadow weights must sum to 100, got {total} ({weights})"))
        _reject(issues)
        _fill(self, networking=self.networking.model_copy(update={"endpoint": self.endpoint}))
        return self

    @property
    def endpoint(self) -> str:
        """The gateway path: `networking.endpoint`, by default `/<name>`."""
        return self.networking.endpoint or f"/{self.name}"

    @property
    def weights(self) -> dict[str, int]:
        """Percent of the traffic each API answers, by name; the shadow is not among them."""
        return {target.name: target.weight for target in self.apis if not target.shadow}

    @property
    def shadow(self) -> SplitTarget | None:
        """The API that gets copies of `shadow.weight` percent of the requests, if any."""
        return next((target for target in self.apis if target.shadow), None)


ApiSpec: TypeAlias = RealtimeAPI | TrafficSplitter
API_KINDS: dict[str, type[ApiSpec]] = {"RealtimeAPI": RealtimeAPI, "TrafficSplitter": TrafficSplitter}


@dataclass(frozen=True)
class ProjectSpec:
    """A validated `cortex.yaml`: absolute paths, so it stays valid whatever the working directory."""

    file: Path
    project_dir: Path
    apis: list[ApiSpec]
    # What loading noted without failing (a Cortex-era spec, fields dropped as not applicable), paths as in errors
    notices: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def realtime_apis(self) -> list[RealtimeAPI]:
        """The RealtimeAPIs, in file order."""
        return [api for api in self.apis if isinstance(api, RealtimeAPI)]

    @property
    def splitters(self) -> list[TrafficSplitter]:
        """The TrafficSplitters, in file order."""
        return [api for api in self.apis if isinstance(api, TrafficSplitter)]

    def select(self, name: str | None) -> RealtimeAPI:
        """The RealtimeAPI called `name`, or the project's only one when `name` is None (what a canary
        rolls out: a TrafficSplitter has no versions)."""
        apis = self.realtime_apis
        names = [a.name for a in apis]
        if name is None and len(names) == 1:
            return apis[0]
        if name in names:
            return apis[names.index(name)]
        raise ValueError(f"name one of the project's RealtimeAPIs: {', '.join(names)}")
