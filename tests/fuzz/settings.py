"""Hypothesis settings shared by the fuzz tests: reproducible runs that leave nothing in the work tree."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# derandomize: every run draws the same cases, so a failure reproduces and the run time is stable;
# database=None: no .hypothesis/ directory in the repository; deadline=None: real servers and a shared
# machine make per-case timing meaningless (each test bounds its own time instead).
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
