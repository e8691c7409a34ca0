"""Parsing of the spec's unit-bearing values: durations, CPU and memory quantities, int-or-percent.

Each `check_*` function takes a raw YAML value and returns the form the model stores (canonical for
durations and int-or-percent, the user's own text for quantities), raising ValueError with a message that
says what is allowed. Arithmetic uses Decimal so "0.1h" is exactly 360 seconds.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from cortex_flows.spec.errors import describe_value

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile(rf"(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m)?(?:(?P<s>{_NUMBER})s)?", re.ASCII)
_CPU = re.compile(rf"(?P<number>{_NUMBER})(?P<milli>m?)", re.ASCII)
_MEM = re.compile(rf"(?P<number>{_NUMBER})(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", re.ASCII)
_MEM_FACTORS = {
    None: 1,
    **{suffix: 1024 ** (i + 1) for i, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{suffix: 1000 ** (i + 1) for i, suffix in enumerate(("k", "M", "G", "T", "P", "E"))},
}
_PERCENT = re.compile(r"(?P<percent>\d+)%", re.ASCII)

MAX_DURATION_SECONDS = 2**31 - 1  # Kubernetes keeps durations in int32 seconds (e.g. progressDeadlineSeconds)
MAX_QUANTITY = 2**63 - 1  # Kubernetes quantities hold at most int64 milli-units; bytes for memory

MIN_CPU_MILLICORES = 20
MIN_MEM_BYTES = 20 * 1024**2


def _is_number(value: object) -> bool:
    """YAML ints and floats; booleans are ints to Python but never a quantity to a user."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seconds(value: object) -> Decimal:
    if _is_number(value):
        seconds = Decimal(str(value))
        if not seconds.is_finite() or seconds < 0:
            raise ValueError(f"must be a finite number of seconds >= 0, got {value}")
        if seconds > MAX_DURATION_SECONDS:
            raise ValueError(f"must be at most {MAX_DURATION_SECONDS}s (about 68 years), got {_short(value)}")
        return seconds
    match = _DURATION.fullmatch(value) if isinstance(value, str) and value else None
    if match is None:
        raise ValueError(
            "expected a duration like '10s', '5m', '1h' or '1m30s', or a number of seconds;"
            f" got {describe_value(value)}"
        )
    hours, minutes, seconds = (Decimal(match[unit] or 0) for unit in ("h", "m", "s"))
    total = hours * 3600 + minutes * 60 + seconds
    if total > MAX_DURATION_SECONDS:
        raise ValueError(f"must be at most {MAX_DURATION_SECONDS}s (about 68 years), got {_short(value)}")
    return total


def _short(value: object) -> str:
    text = describe_value(value)
    return text if len(text) <= 40 else f"{text[:36]}...{text[-1]}"


def _format_seconds(total: Decimal) -> str:
    """Compact Go-like form: 90 -> "1m30s", 60 -> "1m", 0 -> "0s", 1.5 -> "1.5s"."""
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if seconds or not (hours or minutes):
        parts.append(f"{seconds.normalize():f}s")
    return "".join(parts)


def check_duration(value: object) -> str:
    """Validate a duration; return its canonical string, so "60s", 60 and "1m" compare (and hash) equal."""
    return _format_seconds(_seconds(value))


def duration_seconds(text: str) -> float:
    """Seconds in a duration string (canonical or not)."""
    return float(_seconds(text))


def check_cpu(value: object) -> str:
    """Validate a CPU quantity (`200m`, `0.5`, `1`, >= 20m); return the user's text."""
    text = str(value) if _is_number(value) else value
    match = _CPU.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected a CPU quantity like '200m', 0.5 or 1; got {describe_value(value)}")
    if cpu_millicores(text) < MIN_CPU_MILLICORES:
        raise ValueError(f"must be at least {MIN_CPU_MILLICORES}m (0.02 CPU), got {describe_value(value)}")
    if cpu_millicores(text) > MAX_QUANTITY:
        raise ValueError(f"must be at most {MAX_QUANTITY}m, got {_short(value)}")
    return text


def cpu_millicores(text: str) -> int:
    """Millicores in a CPU quantity, rounded up to a whole millicore as Kubernetes does."""
    match = _CPU.fullmatch(text)
    if match is None:
        raise ValueError(f"not a CPU quantity: {text!r}")
    scale = 1 if match["milli"] else 1000
    return math.ceil(Decimal(match["number"]) * scale)


def check_memory(value: object) -> str:
    """Validate a memory quantity (`512Mi`, `1Gi`, `1G`, bytes; >= 20Mi); return the user's text."""
    text = str(value) if _is_number(value) else value
    match = _MEM.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            "expected a memory quantity: bytes with an optional suffix Ki, Mi, Gi, Ti, Pi, Ei"
            f" (powers of 1024) or k, M, G, T, P, E (powers of 1000), like '512Mi'; got {describe_value(value)}"
        )
    if memory_bytes(text) < MIN_MEM_BYTES:
        raise ValueError(f"must be at least 20Mi, got {describe_value(value)}")
    if memory_bytes(text) > MAX_QUANTITY:
        raise ValueError(f"must be at most {MAX_QUANTITY} bytes (8Ei), got {_short(value)}")
    return text


def memory_bytes(text: str) -> int:
    """Bytes in a memory quantity, rounded up."""
    match = _MEM.fullmatch(text)
    if match is None:
        raise ValueError(f"not a memory quantity: {text!r}")
    return math.ceil(Decimal(match["number"]) * _MEM_FACTORS[match["suffix"]])


def check_int_or_percent(value: object) -> int | str:
    """Validate a Kubernetes IntOrString for a rolling update: an int >= 0 or "N%" with N in 0..100."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _PERCENT.fullmatch(value) if isinstance(value, str) and len(value) <= 19 else None
    if match is None:
        raise ValueError(f"expected an integer >= 0 or a percentage like '25%'; got {_short(value)}")
    percent = int(match["percent"])
    if percent > 100:
        raise ValueError(f"a percentage must be between 0% and 100%, got {value!r}")
    return f"{percent}%"


def is_zero(value: int | str) -> bool:
    """0 and "0%" both mean none."""
    return value in (0, "0%")


def percent_or_int(value: int | str, total: int, round_up: bool) -> int:
    """Resolve an int-or-percent against `total` replicas as Kubernetes does (surge up, unavailable down)."""
    if isinstance(value, int):
        return value
    scaled = int(value.removesuffix("%")) * total
    return -(-scaled // 100) if round_up else scaled // 100
