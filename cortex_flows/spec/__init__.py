"""The `cortex.yaml` spec: pydantic models, loading with clear errors, and spec identity hashes.

Specs written for Cortex's predictor and handler eras load too (`legacy`); `migrate_spec` rewrites them.

Pure: no Prefect, and no I/O beyond reading the spec file and checking that the files it names exist.
"""

from cortex_flows.spec.errors import SPEC_ERROR_EXIT, Problem, SpecError
from cortex_flows.spec.identity import pod_hash, spec_hash, splitter_spec_hash
from cortex_flows.spec.load import SPEC_FILE_NAME, load_spec, parse_spec
from cortex_flows.spec.migrate import migrate_spec
from cortex_flows.spec.models import (
    API_KINDS,
    ApiSpec,
    Autoscaling,
    Canary,
    Compute,
    Dependencies,
    HandlerSpec,
    Networking,
    Pod,
    ProjectSpec,
    RealtimeAPI,
    SplitTarget,
    TrafficSplitter,
    UpdateStrategy,
    Window,
)
from cortex_flows.spec.quantities import percent_or_int

__all__ = [
    "API_KINDS",
    "SPEC_ERROR_EXIT",
    "SPEC_FILE_NAME",
    "ApiSpec",
    "Autoscaling",
    "Canary",
    "Compute",
    "Dependencies",
    "HandlerSpec",
    "Networking",
    "Pod",
    "Problem",
    "ProjectSpec",
    "RealtimeAPI",
    "SpecError",
    "SplitTarget",
    "TrafficSplitter",
    "UpdateStrategy",
    "Window",
    "load_spec",
    "migrate_spec",
    "parse_spec",
    "percent_or_int",
    "pod_hash",
    "spec_hash",
    "splitter_spec_hash",
]
