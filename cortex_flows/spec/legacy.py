"""Specs of Cortex's predictor era (v0.19-v0.33) and handler era (v0.34-v0.35), reference §1.3.

Such an API is recognised by `legacy_era`, validated against the historical schema (so a misspelled
historical field is an error with a suggestion), and converted by `convert` into the native mapping that
`RealtimeAPI` validates. Fields that only mattered to Cortex's own cluster are dropped with a notice;
fields whose behaviour cortex-flows does not have are errors that say what to do instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias

from pydantic import Field, ValidationInfo, field_validator, model_validator

from cortex_flows.spec.models import (
    DEFAULT_REQUIREMENTS,
    MAX_POD_REQUESTS,
    ApiName,
    SpecModel,
    _reject,
)

Era: TypeAlias = Literal["predictor", "handler"]

PREDICTOR_CLASS_NAME = "PythonPredictor"  # the class a predictor-era `type: python` file defines
HANDLER_CLASS_NAME = "Handler"
DEFAULT_MAX_REPLICA_CONCURRENCY = 1024
DEFAULT_CONDA_PACKAGES = "conda-packages.txt"
DEFAULT_SHELL_SCRIPT = "dependencies.sh"

# Keys of the historical handler block that the native one does not have (python_path is native too)
HANDLER_ONLY_KEYS = frozenset(
    {"config", "env", "processes_per_replica", "threads_per_process", "dependencies", "image",
     "tensorflow_serving_image", "log_level", "shm_size", "models", "multi_model_reloading",
     "server_side_batching", "protobuf_path"}
)  # fmt: skip
LEGACY_TYPES = ("tensorflow", "onnx")  # a tuple: `in` must not hash whatever YAML value `type` holds
LEGACY_AUTOSCALING_KEYS = frozenset({"max_replica_concurrency", "target_replica_concurrency"})
LEGACY_NETWORKING_KEYS = frozenset({"api_gateway", "local_port"})

_LOAD_IN_INIT = "load the model in __init__ (e.g. from a path or URI in config) instead"
UNSUPPORTED = {
    "models": f"not supported by cortex-flows (no model caching or live reloading): {_LOAD_IN_INIT}",
    "multi_model_reloading": f"not supported by cortex-flows (no live model reloading): {_LOAD_IN_INIT}",
    "model_path": f"not supported by cortex-flows (TensorFlow/ONNX predictors only): {_LOAD_IN_INIT}",
    "signature_key": "not supported by cortex-flows (TensorFlow predictors only)",
    "server_side_batching": (
        "not supported by cortex-flows: requests are not batched on the server; send several instances per"
        " request instead"
    ),
    "protobuf_path": "not supported by cortex-flows: APIs are served over HTTP only, not gRPC",
}
NOT_APPLICABLE = {
    "image": "replicas run your class in a Python process, not in Cortex's container image",
    "tensorflow_serving_image": "there is no TensorFlow Serving container",
    "log_level": "it set the log level of Cortex's serving containers",
    "shm_size": "replicas are processes that share the machine's /dev/shm",
    "node_groups": "there are no node groups; replicas run on the backend's machine",
    "inf": "there are no AWS Inferentia chips here",
    "api_gateway": "there is no AWS API Gateway; APIs are served by the cortex-flows gateway",
    "local_port": "Cortex's local provider port; APIs are served through the gateway's port",
    "monitoring": "Cortex's model monitoring; replicas export Prometheus metrics at /metrics",
    "cpu": "null (no CPU request); the default 200m is used",
}
CLUSTER_ONLY_FIELDS = ("image", "tensorflow_serving_image", "log_level", "shm_size")  # in the handler block
NATIVE_AUTOSCALING_KEYS = (
    "min_replicas", "max_replicas", "init_replicas", "window", "downscale_stabilization_period",
    "upscale_stabilization_period", "max_downscale_factor", "max_upscale_factor", "downscale_tolerance",
    "upscale_tolerance",
)  # fmt: skip
NOT_RUN = "not run here: only pip requirements are installed"
ERA_VERSIONS = {"predictor": "v0.19-v0.33", "handler": "v0.34-v0.35"}


def legacy_era(item: dict[str, Any]) -> Era | None:
    """The Cortex era an API item was written for, or None for a native item.

    Only fields that native specs do not have count, so a native item with a typo still gets the native
    error; a minimal handler-era item (`handler: {type: python, path: ...}`) is valid native and stays so.
    """
    if "predictor" in item:
        return "predictor"
    handler, autoscaling, networking = (item.get(key) for key in ("handler", "autoscaling", "networking"))
    legacy = (
        "monitoring" in item
        or (isinstance(handler, dict) and handler.get("type") in LEGACY_TYPES)
        or _has_any(handler, HANDLER_ONLY_KEYS)
        or _has_any(autoscaling, LEGACY_AUTOSCALING_KEYS)
        or _has_any(networking, LEGACY_NETWORKING_KEYS)
    )
    if not legacy:
        return None
    return "handler" if "handler" in item else "predictor"


def _has_any(block: object, keys: frozenset[str]) -> bool:
    return isinstance(block, dict) and not keys.isdisjoint(block)


# --- the historical schema --------------------------------------------------------------------------------
# Fields that are only copied into the native spec, or only reported, are `Any`: the native model (or
# nothing) judges their values, so any value Cortex accepted is accepted here.


class LegacyDependencies(SpecModel):
    pip: str = DEFAULT_REQUIREMENTS
    conda: str = DEFAULT_CONDA_PACKAGES
    shell: str = DEFAULT_SHELL_SCRIPT


class LegacyHandler(SpecModel):
    """`predictor` (up to v0.33) or `handler` (v0.34-v0.35): the Python class that serves the API."""

    type: Literal["python", "tensorflow", "onnx"]
    path: str
    config: dict[str, Any] | None = None  # Cortex read null as {}
    env: dict[str, str] | None = None
    python_path: str | None = None
    processes_per_replica: int = Field(1, ge=1, le=100)
    threads_per_process: int = Field(1, ge=1)
    dependencies: LegacyDependencies | None = None
    models: Any = None
    multi_model_reloading: Any = None
    model_path: Any = None
    signature_key: Any = None
    server_side_batching: Any = None
    protobuf_path: Any = None
    image: Any = None
    tensorflow_serving_image: Any = None
    log_level: Any = None
    shm_size: Any = None

    @field_validator("type")
    @classmethod
    def _python_only(cls, value: str) -> str:
        if value != "python":
            raise ValueError(
                f"type {value!r} is not supported by cortex-flows (there is no TensorFlow Serving or ONNX"
                f" runtime): use type 'python' and {_LOAD_IN_INIT}"
            )
        return value

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise ValueError(UNSUPPORTED[str(info.field_name)])
        return value

    @model_validator(mode="after")
    def _concurrency_fits(self) -> LegacyHandler:
        if self.max_concurrency > MAX_POD_REQUESTS:
            message = (
                f"processes_per_replica * threads_per_process is a replica's max_concurrency here, which must be"
                f" <= {MAX_POD_REQUESTS}, got {self.max_concurrency}"
            )
            _reject([("threads_per_process", message)])
        return self

    @property
    def max_concurrency(self) -> int:
        return self.processes_per_replica * self.threads_per_process


class LegacyCompute(SpecModel):
    cpu: Any = None
    gpu: Any = None
    inf: Any = None
    mem: Any = None
    node_groups: Any = None


class LegacyAutoscaling(SpecModel):
    min_replicas: Any = None
    max_replicas: Any = None
    init_replicas: Any = None
    max_replica_concurrency: int = Field(DEFAULT_MAX_REPLICA_CONCURRENCY, gt=0, le=MAX_POD_REQUESTS)
    target_replica_concurrency: float | None = Field(None, gt=0)  # default: processes * threads
    window: Any = None
    downscale_stabilization_period: Any = None
    upscale_stabilization_period: Any = None
    max_downscale_factor: Any = None
    max_upscale_factor: Any = None
    downscale_tolerance: Any = None
    upscale_tolerance: Any = None

    @model_validator(mode="after")
    def _target_within_max(self) -> LegacyAutoscaling:
        target, limit = self.target_replica_concurrency, self.max_replica_concurrency
        if target is not None and target > limit:
            message = f"must be <= max_replica_concurrency ({limit}), got {target:g}"
            _reject([("target_replica_concurrency", message)])
        return self


class LegacyUpdateStrategy(SpecModel):
    max_surge: Any = None
    max_unavailable: Any = None


class LegacyNetworking(SpecModel):
    endpoint: Any = None  # default: the API's name
    api_gateway: Literal["public", "none"] = "public"
    local_port: Any = None


class LegacyMonitoring(SpecModel):
    model_type: Any = None
    key: Any = None


class LegacyAPI(SpecModel):
    """What both eras share; `kind` may be missing, as in v0.13-v0.18."""

    name: ApiName
    kind: Literal["RealtimeAPI"] | None = None
    compute: LegacyCompute | None = None
    autoscaling: LegacyAutoscaling | None = None
    update_strategy: LegacyUpdateStrategy | None = None
    networking: LegacyNetworking | None = None
    monitoring: LegacyMonitoring | None = None
    node_groups: Any = None

    era: ClassVar[Era]
    class_name: ClassVar[str]  # of the user's class, in the native handler

    @property
    def code(self) -> LegacyHandler:
        """The `predictor` or `handler` block."""
        raise NotImplementedError


class PredictorEraAPI(LegacyAPI):
    era = "predictor"
    class_name = PREDICTOR_CLASS_NAME

    predictor: LegacyHandler

    @property
    def code(self) -> LegacyHandler:
        return self.predictor


class HandlerEraAPI(LegacyAPI):
    era = "handler"
    class_name = HANDLER_CLASS_NAME

    handler: LegacyHandler

    @property
    def code(self) -> LegacyHandler:
        return self.handler


LEGACY_MODELS: dict[Era, type[LegacyAPI]] = {"predictor": PredictorEraAPI, "handler": HandlerEraAPI}


# --- conversion -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversion:
    """A legacy API as a native mapping, with what was dropped and where each native value came from.

    Paths are relative to the API (no name prefix); `notices` pairs a legacy field path with a message.
    """

    native: dict[str, Any]
    notices: list[tuple[str, str]]
    origins: dict[str, str]  # native field path -> the legacy field path its value came from

    def legacy_path(self, native_path: str) -> str:
        """Where a problem at `native_path` is in the user's file (the longest mapped prefix is replaced)."""
        for native in sorted(self.origins, key=len, reverse=True):
            if native_path == native or native_path.startswith((f"{native}.", f"{native}[")):
                return self.origins[native] + native_path[len(native) :]
        return native_path


def convert(api: LegacyAPI, project_dir: Path | None = None) -> Conversion:
    """The native mapping `RealtimeAPI` validates to the API this legacy one described.

    Only values the user wrote, or that differ from the native defaults, are included, so the migrated
    spec stays short. `project_dir`, when known, is where conda and shell dependency files are looked for.
    """
    code = api.code
    handler = {"type": "python", "path": code.path}
    if api.class_name != HANDLER_CLASS_NAME:
        handler["class_name"] = api.class_name
    if code.python_path is not None:
        handler["python_path"] = code.python_path
    native: dict[str, Any] = {"name": api.name, "kind": "RealtimeAPI", "handler": handler}
    if code.config:
        native["config"] = code.config
    if code.env:
        native["env"] = code.env
    if code.dependencies is not None and code.dependencies.pip != DEFAULT_REQUIREMENTS:
        native["dependencies"] = {"pip": code.dependencies.pip}
    compute = _written(api.compute, ("cpu", "gpu", "mem"))
    if compute.get("cpu", "") is None:
        del compute["cpu"]  # Cortex's "no CPU request"; noticed
    if compute:
        native["compute"] = compute
    autoscaling = api.autoscaling or LegacyAutoscaling()
    native["pod"] = _pod(code, autoscaling)
    scaling = _written(autoscaling, NATIVE_AUTOSCALING_KEYS)
    if autoscaling.target_replica_concurrency is not None:
        scaling["target_in_flight"] = autoscaling.target_replica_concurrency
    if scaling:
        native["autoscaling"] = scaling
    if update_strategy := _written(api.update_strategy, ("max_surge", "max_unavailable")):
        native["update_strategy"] = update_strategy
    endpoint = api.networking.endpoint if api.networking else None
    if endpoint is not None:
        if isinstance(endpoint, str) and not endpoint.startswith("/"):
            endpoint = f"/{endpoint}"  # Cortex's endpoints were paths without the leading slash
        native["networking"] = {"endpoint": endpoint}
    return Conversion(native=native, notices=_notices(api, project_dir), origins=_origins(api.era))


def _written(block: SpecModel | None, fields: tuple[str, ...]) -> dict[str, Any]:
    """The values of `fields` the user wrote in `block`, in the order of `fields`."""
    written = block.model_fields_set if block is not None else set()
    return {field: getattr(block, field) for field in fields if field in written}


def _pod(code: LegacyHandler, autoscaling: LegacyAutoscaling) -> dict[str, int]:
    """Processes x threads run at once; the rest of max_replica_concurrency queues (at least one)."""
    pod = {}
    if {"processes_per_replica", "threads_per_process"} & code.model_fields_set:
        pod["max_concurrency"] = code.max_concurrency
    queue = autoscaling.max_replica_concurrency - code.max_concurrency
    pod["max_queue_length"] = min(MAX_POD_REQUESTS, max(1, queue))
    return pod


def _notices(api: LegacyAPI, project_dir: Path | None) -> list[tuple[str, str]]:
    """The era the API was read as, then each field that is accepted but has no effect here."""
    code, key, compute = api.code, api.era, api.compute
    dropped = [f"{key}.{field}" for field in _present(code, CLUSTER_ONLY_FIELDS)]
    if compute is not None and "cpu" in compute.model_fields_set and compute.cpu is None:
        dropped.append("compute.cpu")
    dropped += [f"compute.{field}" for field in _present(compute, ("inf", "node_groups"))]
    dropped += _present(api, ("node_groups",))
    dropped += [f"networking.{field}" for field in _present(api.networking, ("api_gateway", "local_port"))]
    dropped += _present(api, ("monitoring",))
    notices = [("", f"read as a Cortex {key}-era spec ({_versions(api)})")]
    notices += [(path, f"not applicable here: {NOT_APPLICABLE[path.rsplit('.', 1)[-1]]}") for path in dropped]
    dependencies = code.dependencies or LegacyDependencies()
    for field, file in (("conda", dependencies.conda), ("shell", dependencies.shell)):
        if project_dir is not None and _is_file(project_dir / file):
            notices.append((f"{key}.dependencies.{field}", NOT_RUN))
    return notices


def _is_file(path: Path) -> bool:
    """Whether a file the spec names exists; a name no file can have (too long, say) names none."""
    try:
        return path.is_file()
    except OSError:
        return False


def _present(block: SpecModel | None, fields: tuple[str, ...]) -> list[str]:
    """Those of `fields` the user set in `block` to something other than null."""
    return [field for field in _written(block, fields) if getattr(block, field) is not None]


def _versions(api: LegacyAPI) -> str:
    if api.era == "predictor" and api.kind is None:
        return "v0.13-v0.18, without kind"
    return ERA_VERSIONS[api.era]


def _origins(key: Era) -> dict[str, str]:
    return {
        "handler": key,
        "handler.path": f"{key}.path",
        "handler.python_path": f"{key}.python_path",
        "config": f"{key}.config",
        "env": f"{key}.env",
        "dependencies": f"{key}.dependencies",
        "pod.max_concurrency": f"{key}.processes_per_replica",
        "pod.max_queue_length": "autoscaling.max_replica_concurrency",
        "autoscaling.target_in_flight": "autoscaling.target_replica_concurrency",
    }
