"""The cortex.yaml spec: Cortex's defaults, every validation's message, loading, and identity hashes."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from cortex_flows.spec import (
    SPEC_ERROR_EXIT,
    SPEC_FILE_NAME,
    HandlerSpec,
    Problem,
    ProjectSpec,
    RealtimeAPI,
    SpecError,
    UpdateStrategy,
    load_spec,
    parse_spec,
    percent_or_int,
    pod_hash,
    spec_hash,
)
from cortex_flows.spec.identity import POD_FIELDS, SPEC_FIELDS

BASE: dict[str, Any] = {
    "name": "iris",
    "kind": "RealtimeAPI",
    "handler": {"type": "python", "path": "handler.py"},
}
DELETE = object()  # marks a key to remove in `merged`
PACKAGE = "a" * 64


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory with a handler and a model; a sibling `outside/` holds a file outside it."""
    root = tmp_path / "project"
    (root / "models").mkdir(parents=True)
    (root / "handler.py").write_text("class Handler: ...\n")
    (root / "model.joblib").write_bytes(b"model")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "evil.py").write_text("")
    return root


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in depth; a DELETE value removes the key."""
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is DELETE:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def parse(project: Path, text: str) -> ProjectSpec:
    return parse_spec(text, project / SPEC_FILE_NAME, project)


def parse_apis(project: Path, *apis: dict[str, Any]) -> ProjectSpec:
    return parse(project, yaml.safe_dump(list(apis), sort_keys=False))


def api(project: Path, **overrides: Any) -> RealtimeAPI:
    return parse_apis(project, merged(BASE, overrides)).apis[0]


def spec_error(project: Path, text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse(project, text)
    return info.value


def problem_line(err: SpecError, path: str) -> str:
    """The rendered line for `path`, checking it names the file."""
    prefix = f"{err.file}: {path}: "
    lines = [line for line in str(err).splitlines() if line.startswith(prefix)]
    assert lines, f"no problem at {path!r} in:\n{err}"
    return lines[0]


# --- defaults -------------------------------------------------------------------------------------------


def test_minimal_spec_gets_every_cortex_default(project: Path) -> None:
    spec = parse_apis(project, BASE)
    assert spec.file == (project / SPEC_FILE_NAME).resolve()
    assert spec.project_dir == project.resolve()
    assert [a.model_dump() for a in spec.apis] == [
        {
            "name": "iris",
            "kind": "RealtimeAPI",
            "handler": {"type": "python", "path": "handler.py", "class_name": "Handler", "python_path": None},
            "model_path": None,
            "config": {},
            "env": {},
            "dependencies": {"pip": "requirements.txt"},
            "compute": {"cpu": "200m", "gpu": 0, "mem": None},
            "pod": {"max_concurrency": 1, "max_queue_length": 100},
            "autoscaling": {
                "min_replicas": 1,
                "max_replicas": 100,
                "init_replicas": 1,
                "target_in_flight": 1.0,
                "window": "1m",
                "downscale_stabilization_period": "5m",
                "upscale_stabilization_period": "1m",
                "max_downscale_factor": 0.75,
                "max_upscale_factor": 1.5,
                "downscale_tolerance": 0.05,
                "upscale_tolerance": 0.05,
            },
            "update_strategy": {"max_surge": "25%", "max_unavailable": "25%", "progress_deadline": "10m"},
            "networking": {"endpoint": "/iris", "api_keys": None},
            "canary": {
                "steps": [5, 25, 50, 100],
                "bake": "1m",
                "analysis_interval": "1m",
                "min_samples": 100,
                "inconclusive": "extend",
                "max_extensions": 3,
                "max_error_rate_increase": 0.01,
                "max_latency_ratio": 1.5,
                "drift_test": "chi2",
                "drift_threshold": 0.01,
                "windows": [],
                "freeze": [],
                "timezone": "UTC",
                "shadow": 0.0,
                "min_agreement": None,
            },
        }
    ]


def test_parsed_numbers_and_resolved_defaults_are_exposed(project: Path) -> None:
    a = parse_apis(project, BASE).apis[0]
    assert (a.endpoint, a.init_replicas, a.target_in_flight) == ("/iris", 1, 1.0)
    assert (a.compute.cpu_millicores, a.compute.mem_bytes) == (200, None)
    scaling = a.autoscaling
    assert (scaling.window_seconds, scaling.downscale_stabilization_seconds) == (60.0, 300.0)
    assert scaling.upscale_stabilization_seconds == 60.0


def test_dependent_defaults_follow_other_fields(project: Path) -> None:
    a = api(project, pod={"max_concurrency": 4}, autoscaling={"min_replicas": 3})
    assert (a.init_replicas, a.autoscaling.init_replicas) == (3, 3)
    assert (a.target_in_flight, a.autoscaling.target_in_flight) == (4.0, 4.0)


def test_scale_to_zero_starts_with_zero_replicas(project: Path) -> None:
    assert api(project, autoscaling={"min_replicas": 0}).init_replicas == 0


def test_explicit_values_are_kept(project: Path) -> None:
    a = api(
        project,
        model_path="models",
        config={"threshold": 0.5, "labels": ["a", "b"]},
        autoscaling={"min_replicas": 2, "max_replicas": 5, "init_replicas": 4, "target_in_flight": 2.5},
        networking={"endpoint": "/v1/iris.model_~x-y"},
        handler={"class_name": "MyHandler"},
    )
    assert (a.model_path, a.config) == ("models", {"threshold": 0.5, "labels": ["a", "b"]})
    assert (a.init_replicas, a.target_in_flight, a.endpoint) == (4, 2.5, "/v1/iris.model_~x-y")
    assert a.handler.class_name == "MyHandler"


@pytest.mark.parametrize(
    ("written", "canonical", "seconds"),
    [("10s", "10s", 10), ("60s", "1m", 60), ("1m30s", "1m30s", 90), ("90s", "1m30s", 90), (120, "2m", 120),
     ("1h", "1h", 3600), ("0.1h", "6m", 360), ("1h0m10s", "1h10s", 3610)],
)  # fmt: skip
def test_window_durations(project: Path, written: object, canonical: str, seconds: float) -> None:
    scaling = api(project, autoscaling={"window": written}).autoscaling
    assert (scaling.window, scaling.window_seconds) == (canonical, seconds)


@pytest.mark.parametrize(
    ("written", "canonical", "seconds"),
    [(0, "0s", 0), ("0s", "0s", 0), ("1.5s", "1.5s", 1.5), (2.5, "2.5s", 2.5), ("2m0.5s", "2m0.5s", 120.5)],
)
def test_stabilization_durations(project: Path, written: object, canonical: str, seconds: float) -> None:
    scaling = api(project, autoscaling={"upscale_stabilization_period": written}).autoscaling
    assert (scaling.upscale_stabilization_period, scaling.upscale_stabilization_seconds) == (
        canonical,
        seconds,
    )


@pytest.mark.parametrize(
    ("written", "text", "millicores"),
    [("500m", "500m", 500), (1, "1", 1000), (0.5, "0.5", 500), ("1.5", "1.5", 1500), ("20m", "20m", 20),
     ("0.0201", "0.0201", 21), (0.2, "0.2", 200), (0.25, "0.25", 250)],
)  # fmt: skip
def test_cpu_quantities(project: Path, written: object, text: str, millicores: int) -> None:
    compute = api(project, compute={"cpu": written}).compute
    assert (compute.cpu, compute.cpu_millicores) == (text, millicores)


@pytest.mark.parametrize(
    ("written", "text", "size"),
    [("512Mi", "512Mi", 512 * 2**20), ("1Gi", "1Gi", 2**30), ("1G", "1G", 10**9), ("1.5Gi", "1.5Gi", 3 * 2**29),
     (21 * 2**20, str(21 * 2**20), 21 * 2**20), ("20Mi", "20Mi", 20 * 2**20), ("200M", "200M", 200 * 10**6)],
)  # fmt: skip
def test_memory_quantities(project: Path, written: object, text: str, size: int) -> None:
    compute = api(project, compute={"mem": written}).compute
    assert (compute.mem, compute.mem_bytes) == (text, size)


@pytest.mark.parametrize(
    ("written", "stored"), [(2, 2), ("3", 3), (0, 0), ("025%", "25%"), ("0%", "0%"), ("100%", "100%")]
)
def test_update_strategy_values(project: Path, written: object, stored: object) -> None:
    assert api(project, update_strategy={"max_surge": written}).update_strategy.max_surge == stored


def test_sklearn_handler_with_s3_model(project: Path) -> None:
    a = api(
        project, handler={"type": "sklearn", "path": DELETE}, model_path="s3://my-bucket/models/iris.joblib"
    )
    assert (a.handler.type, a.handler.path, a.model_path) == (
        "sklearn",
        None,
        "s3://my-bucket/models/iris.joblib",
    )


def test_handler_path_in_a_subdirectory(project: Path) -> None:
    (project / "src").mkdir()
    (project / "src" / "serve.py").write_text("")
    assert api(project, handler={"path": "src/../src/serve.py"}).handler.path == "src/../src/serve.py"


def test_env_python_path_and_dependencies(project: Path) -> None:
    (project / "src" / "lib").mkdir(parents=True)
    (project / "requirements-serving.txt").write_text("scikit-learn\n")
    a = api(
        project,
        env={"LOG_FORMAT": "json", "_PRIVATE": "", "threads2": "4", "cortex_lower": "allowed"},
        handler={"python_path": "src/lib"},
        dependencies={"pip": "requirements-serving.txt"},
    )
    assert a.env == {"LOG_FORMAT": "json", "_PRIVATE": "", "threads2": "4", "cortex_lower": "allowed"}
    assert (a.handler.python_path, a.dependencies.pip) == ("src/lib", "requirements-serving.txt")


def test_default_requirements_file_may_be_absent(project: Path) -> None:
    assert not (project / "requirements.txt").exists()
    assert api(project).dependencies.pip == "requirements.txt"
    assert api(project, dependencies={"pip": "requirements.txt"}).dependencies.pip == "requirements.txt"
    assert api(project, dependencies={}).dependencies.pip == "requirements.txt"


def test_python_path_may_be_the_project_itself(project: Path) -> None:
    assert api(project, handler={"python_path": "."}).handler.python_path == "."


def test_several_apis(project: Path) -> None:
    spec = parse_apis(project, BASE, merged(BASE, {"name": "iris-v2"}))
    assert [(a.name, a.endpoint) for a in spec.apis] == [("iris", "/iris"), ("iris-v2", "/iris-v2")]


# --- one failing case per validation ---------------------------------------------------------------------

FAILURES = [
    # name
    ({"name": "Iris_Classifier"}, "[0].name", "must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, ending with a letter or digit, at most 42 characters), got 'Iris_Classifier'"),
    ({"name": "a" * 43}, "[0].name", "at most 42 characters"),
    ({"name": "iris-"}, "[0].name", "got 'iris-'"),
    ({"name": DELETE}, "[0].name", "is required"),
    ({"name": 5}, "[0].name", "expected a string, got 5"),
    ({"name": False}, "[0].name", "expected a string, got false (YAML reads unquoted yes/no/on/off/true/false"),
    # kind and unknown fields
    ({"kind": DELETE}, "iris.kind", "is required; allowed kinds: RealtimeAPI"),
    ({"kind": "BatchAPI"}, "iris.kind", "unknown kind 'BatchAPI'; allowed kinds: RealtimeAPI"),
    ({"replicas": 3}, "iris.replicas", "unknown field 'replicas'; allowed: name, kind, handler, model_path, config, env, dependencies, compute, pod, autoscaling, update_strategy, networking"),
    ({"predictor": {}}, "iris.handler", "unknown field 'handler'"),  # a predictor-era API, which has no handler
    # handler
    ({"handler": "handler.py"}, "iris.handler", "expected a mapping, got 'handler.py'"),
    ({"handler": {"type": "pytorch"}}, "iris.handler.type", "expected 'python' or 'sklearn', got 'pytorch'"),
    ({"handler": {"type": "tensorflow"}}, "iris.handler.type", "type 'tensorflow' is not supported by cortex-flows"),  # handler era
    ({"handler": {"type": DELETE}}, "iris.handler.type", "is required; allowed: 'python', 'sklearn'"),
    ({"handler": {"path": DELETE}}, "iris.handler.path", "is required for handler type 'python'"),
    ({"handler": {"path": "nope.py"}}, "iris.handler.path", "file 'nope.py' not found in the project directory"),
    ({"handler": {"path": "../outside/evil.py"}}, "iris.handler.path", "must stay inside the project directory, got '../outside/evil.py'"),
    ({"handler": {"path": "a/../../x.py"}}, "iris.handler.path", "must stay inside the project directory"),
    ({"handler": {"path": "/etc/x.py"}}, "iris.handler.path", "must be a path relative to the project directory"),
    ({"handler": {"path": ""}}, "iris.handler.path", "must not be empty"),
    ({"handler": {"path": "models"}}, "iris.handler.path", "file 'models' not found"),
    ({"handler": {"path": "model.joblib"}}, "iris.handler.path", "must be a Python file ending in '.py'"),
    ({"handler": {"class_name": "1st"}}, "iris.handler.class_name", "must be a Python class name, got '1st'"),
    ({"handler": {"class_name": "class"}}, "iris.handler.class_name", "must be a Python class name"),
    ({"handler": {"clas_name": "H"}}, "iris.handler.clas_name", "unknown field 'clas_name' (did you mean 'class_name'?); allowed: type, path, class_name, python_path"),
    ({"handler": {"python_path": "../outside"}}, "iris.handler.python_path", "must stay inside the project directory, got '../outside'"),
    ({"handler": {"python_path": "src"}}, "iris.handler.python_path", "path 'src' not found in the project directory"),
    ({"handler": {"python_path": "/usr/lib"}}, "iris.handler.python_path", "must be a path relative to the project directory"),
    ({"handler": {"python_path": 3}}, "iris.handler.python_path", "expected a string, got 3"),
    ({"handler": {"type": "sklearn", "path": DELETE, "python_path": "models"}, "model_path": "model.joblib"}, "iris.handler.python_path", "not allowed for handler type 'sklearn'"),
    ({"handler": {"type": "sklearn"}, "model_path": "model.joblib"}, "iris.handler.path", "not allowed for handler type 'sklearn'"),
    ({"handler": {"type": "sklearn", "path": DELETE, "class_name": "X"}, "model_path": "model.joblib"}, "iris.handler.class_name", "not allowed for handler type 'sklearn'"),
    ({"handler": {"type": "sklearn", "path": DELETE}}, "iris.model_path", "is required for handler type 'sklearn'"),
    # model_path and config
    ({"model_path": "missing.joblib"}, "iris.model_path", "path 'missing.joblib' not found in the project directory"),
    ({"model_path": "../outside"}, "iris.model_path", "must stay inside the project directory"),
    ({"model_path": "gs://bucket/key"}, "iris.model_path", "must be a path relative to the project or s3://<bucket>/<key>, got 'gs://bucket/key'"),
    ({"model_path": "s3://Bad_Bucket/key"}, "iris.model_path", "must be s3://<bucket>/<key> with a valid bucket name"),
    ({"model_path": "s3://bucket"}, "iris.model_path", "must be s3://<bucket>/<key>"),
    ({"config": ["a"]}, "iris.config", "expected a mapping, got a list"),
    ({"config": None}, "iris.config", "expected a mapping, got null"),
    ({"config": {1: "a"}}, "iris.config.1", "keys must be strings, got 1 (quote it)"),
    # env and dependencies
    ({"env": {"MY-VAR": "1"}}, "iris.env.MY-VAR", "invalid environment variable name 'MY-VAR': must be letters, digits and '_', not starting with a digit"),
    ({"env": {"1ST": "1"}}, "iris.env.1ST", "invalid environment variable name '1ST'"),
    ({"env": {"": "1"}}, "iris.env", "invalid environment variable name ''"),
    ({"env": {"CORTEX_PORT": "1"}}, "iris.env.CORTEX_PORT", "names starting with CORTEX_ are reserved (cortex-flows sets them), got 'CORTEX_PORT'"),
    ({"env": {"WORKERS": 4}}, "iris.env.WORKERS", "expected a string, got 4"),
    ({"env": {"DEBUG": True}}, "iris.env.DEBUG", "expected a string, got true (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"),
    ({"env": {False: "x"}}, "iris.env.false", "keys must be strings, got false (quote it)"),
    ({"env": ["A=1"]}, "iris.env", "expected a mapping, got a list"),
    ({"dependencies": {"pip": "reqs/prod.txt"}}, "iris.dependencies.pip", "file 'reqs/prod.txt' not found in the project directory"),
    ({"dependencies": {"pip": "../outside/evil.py"}}, "iris.dependencies.pip", "must stay inside the project directory"),
    ({"dependencies": {"pip": ""}}, "iris.dependencies.pip", "must not be empty"),
    ({"dependencies": {"pip": "models"}}, "iris.dependencies.pip", "file 'models' not found"),
    ({"dependencies": {"conda": "conda-packages.txt"}}, "iris.dependencies.conda", "unknown field 'conda'; allowed: pip"),
    ({"dependencies": "requirements.txt"}, "iris.dependencies", "expected a mapping, got 'requirements.txt'"),
    # compute
    ({"compute": {"cpu": "10m"}}, "iris.compute.cpu", "must be at least 20m (0.02 CPU), got '10m'"),
    ({"compute": {"cpu": 0.01}}, "iris.compute.cpu", "must be at least 20m"),
    ({"compute": {"cpu": "abc"}}, "iris.compute.cpu", "expected a CPU quantity like '200m', 0.5 or 1; got 'abc'"),
    ({"compute": {"cpu": -1}}, "iris.compute.cpu", "expected a CPU quantity"),
    ({"compute": {"cpu": True}}, "iris.compute.cpu", "expected a CPU quantity like '200m', 0.5 or 1; got true"),
    ({"compute": {"gpu": -1}}, "iris.compute.gpu", "must be >= 0, got -1"),
    ({"compute": {"gpu": 0.5}}, "iris.compute.gpu", "expected an integer, got 0.5"),
    ({"compute": {"mem": "10Mi"}}, "iris.compute.mem", "must be at least 20Mi, got '10Mi'"),
    ({"compute": {"mem": "1GB"}}, "iris.compute.mem", "expected a memory quantity: bytes with an optional suffix Ki, Mi"),
    ({"compute": {"inf": 1}}, "iris.compute.inf", "unknown field 'inf'; allowed: cpu, gpu, mem"),
    ({"compute": {"node_groups": ["a"]}}, "iris.compute.node_groups", "unknown field 'node_groups'; allowed: cpu, gpu, mem"),
    # pod
    ({"pod": {"max_concurrency": 0}}, "iris.pod.max_concurrency", "must be > 0 and <= 30000, got 0"),
    ({"pod": {"max_concurrency": 30001}}, "iris.pod.max_concurrency", "must be > 0 and <= 30000, got 30001"),
    ({"pod": {"max_queue_length": "100"}}, "iris.pod.max_queue_length", "expected an integer, got '100'"),
    ({"pod": {"max_queue_length": 0}}, "iris.pod.max_queue_length", "must be > 0 and <= 30000, got 0"),
    ({"pod": {"port": 8080}}, "iris.pod.port", "unknown field 'port'; allowed: max_concurrency, max_queue_length"),
    # autoscaling
    ({"autoscaling": {"min_replicas": -1}}, "iris.autoscaling.min_replicas", "must be >= 0, got -1"),
    ({"autoscaling": {"min_replicas": True}}, "iris.autoscaling.min_replicas", "expected an integer, got true"),
    ({"autoscaling": {"max_replicas": 0}}, "iris.autoscaling.max_replicas", "must be > 0, got 0"),
    ({"autoscaling": {"min_replicas": 5, "max_replicas": 3}}, "iris.autoscaling.min_replicas", "must be <= max_replicas (3), got 5"),
    ({"autoscaling": {"max_replicas": 3, "init_replicas": 5}}, "iris.autoscaling.init_replicas", "must be between min_replicas (1) and max_replicas (3), got 5"),
    ({"autoscaling": {"min_replicas": 2, "init_replicas": 1}}, "iris.autoscaling.init_replicas", "must be between min_replicas (2) and max_replicas (100), got 1"),
    ({"autoscaling": {"target_in_flight": 0}}, "iris.autoscaling.target_in_flight", "must be > 0, got 0"),
    ({"autoscaling": {"target_in_flight": 101.5}}, "iris.autoscaling.target_in_flight", "must be <= pod.max_concurrency + pod.max_queue_length (101), got 101.5"),
    ({"autoscaling": {"target_in_flight": "high"}}, "iris.autoscaling.target_in_flight", "expected a number, got 'high'"),
    ({"autoscaling": {"window": "5s"}}, "iris.autoscaling.window", "must be at least 10s and a multiple of 10s (the autoscaler's tick), got '5s'"),
    ({"autoscaling": {"window": "15s"}}, "iris.autoscaling.window", "a multiple of 10s"),
    ({"autoscaling": {"window": "60"}}, "iris.autoscaling.window", "expected a duration like '10s', '5m', '1h' or '1m30s', or a number of seconds; got '60'"),
    ({"autoscaling": {"window": "1d"}}, "iris.autoscaling.window", "expected a duration"),
    ({"autoscaling": {"downscale_stabilization_period": -1}}, "iris.autoscaling.downscale_stabilization_period", "must be a finite number of seconds >= 0, got -1"),
    ({"autoscaling": {"upscale_stabilization_period": None}}, "iris.autoscaling.upscale_stabilization_period", "expected a duration"),
    ({"autoscaling": {"max_downscale_factor": 1}}, "iris.autoscaling.max_downscale_factor", "must be >= 0 and < 1, got 1"),
    ({"autoscaling": {"max_downscale_factor": -0.1}}, "iris.autoscaling.max_downscale_factor", "must be >= 0 and < 1, got -0.1"),
    ({"autoscaling": {"max_upscale_factor": 1}}, "iris.autoscaling.max_upscale_factor", "must be > 1, got 1"),
    ({"autoscaling": {"max_upscale_factor": float("inf")}}, "iris.autoscaling.max_upscale_factor", "must be a finite number, got inf"),
    ({"autoscaling": {"downscale_tolerance": 1}}, "iris.autoscaling.downscale_tolerance", "must be >= 0 and < 1, got 1"),
    ({"autoscaling": {"upscale_tolerance": -0.5}}, "iris.autoscaling.upscale_tolerance", "must be >= 0, got -0.5"),
    ({"autoscaling": {"replicas": 3}}, "iris.autoscaling.replicas", "unknown field 'replicas' (did you mean 'min_replicas'?); allowed: min_replicas, max_replicas, init_replicas, target_in_flight, window, downscale_stabilization_period, upscale_stabilization_period, max_downscale_factor, max_upscale_factor, downscale_tolerance, upscale_tolerance"),
    ({"autoscaling": None}, "iris.autoscaling", "expected a mapping, got null"),
    # update_strategy
    ({"update_strategy": {"max_surge": -1}}, "iris.update_strategy.max_surge", "expected an integer >= 0 or a percentage like '25%'; got -1"),
    ({"update_strategy": {"max_surge": "150%"}}, "iris.update_strategy.max_surge", "a percentage must be between 0% and 100%, got '150%'"),
    ({"update_strategy": {"max_unavailable": "a lot"}}, "iris.update_strategy.max_unavailable", "expected an integer >= 0 or a percentage"),
    ({"update_strategy": {"max_unavailable": 0.5}}, "iris.update_strategy.max_unavailable", "got 0.5"),
    ({"update_strategy": {"max_surge": 0, "max_unavailable": "0%"}}, "iris.update_strategy", "max_surge and max_unavailable cannot both be 0"),
    ({"update_strategy": {"max_surge": "0", "max_unavailable": 0}}, "iris.update_strategy", "cannot both be 0"),
    # networking
    ({"networking": {"endpoint": "iris"}}, "iris.networking.endpoint", "must start with '/', got 'iris'"),
    ({"networking": {"endpoint": "/iris/"}}, "iris.networking.endpoint", "must not end with '/'"),
    ({"networking": {"endpoint": "/"}}, "iris.networking.endpoint", "cannot be '/' alone"),
    ({"networking": {"endpoint": "/a//b"}}, "iris.networking.endpoint", "must not contain empty segments ('//')"),
    ({"networking": {"endpoint": "/a/../b"}}, "iris.networking.endpoint", "must not contain '.' or '..' segments"),
    ({"networking": {"endpoint": "/iris?v=2"}}, "iris.networking.endpoint", "without a query ('?') or fragment ('#')"),
    ({"networking": {"endpoint": "/ir is"}}, "iris.networking.endpoint", "may only contain letters, digits, '-', '.', '_' and '~' between '/' separators, got '/ir is'"),
    ({"networking": {"endpont": "/x"}}, "iris.networking.endpont", "unknown field 'endpont' (did you mean 'endpoint'?); allowed: endpoint"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "path", "message"), FAILURES, ids=[case[1] for case in FAILURES])
def test_invalid_field_is_reported_with_file_path_and_message(
    project: Path, overrides: dict[str, Any], path: str, message: str
) -> None:
    err = spec_error(project, yaml.safe_dump([merged(BASE, overrides)]))
    assert message in problem_line(err, path)


def test_symlink_out_of_the_project_is_rejected(project: Path) -> None:
    (project / "link.py").symlink_to(project.parent / "outside" / "evil.py")
    err = spec_error(project, yaml.safe_dump([merged(BASE, {"handler": {"path": "link.py"}})]))
    assert "must stay inside the project directory, got 'link.py' (a link to " in problem_line(
        err, "iris.handler.path"
    )


def test_multiple_problems_are_reported_together(project: Path) -> None:
    bad = merged(
        BASE, {"compute": {"cpu": "1m"}, "pod": {"max_concurrency": 0}, "autoscaling": {"windw": "1m"}}
    )
    err = spec_error(project, yaml.safe_dump([bad, merged(BASE, {"name": "other", "kind": "Nope"}), 7]))
    assert [p.path for p in err.problems] == [
        "iris.compute.cpu",
        "iris.pod.max_concurrency",
        "iris.autoscaling.windw",
        "other.kind",
        "[2]",
    ]
    assert len(str(err).splitlines()) == 5
    assert "did you mean 'window'?" in problem_line(err, "iris.autoscaling.windw")
    assert "expected a mapping with the API's fields (name, kind, ...), got 7" in problem_line(err, "[2]")


# --- cross-API and file-level problems --------------------------------------------------------------------


def test_duplicate_names_are_reported_by_position(project: Path) -> None:
    other = merged(BASE, {"networking": {"endpoint": "/other"}, "pod": {"max_concurrency": 0}})
    err = spec_error(project, yaml.safe_dump([BASE, other]))
    assert "duplicate API name 'iris' (also used by the API at [0]); names must be unique" in problem_line(
        err, "[1].name"
    )
    assert "must be > 0" in problem_line(err, "[1].pod.max_concurrency")  # the name is ambiguous: position


def test_duplicate_endpoints_are_reported(project: Path) -> None:
    other = merged(BASE, {"name": "other", "networking": {"endpoint": "/iris"}})
    err = spec_error(project, yaml.safe_dump([BASE, other]))
    assert "duplicate endpoint '/iris' (also used by iris); endpoints must be unique" in problem_line(
        err, "other.networking.endpoint"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- name: iris\n  kind: RealtimeAPI\n handler: x\n", "line 3, column 2: invalid YAML: expected <block end>"),
        ("- name: iris\n  kind: [RealtimeAPI\n", "line 3, column 1: invalid YAML: expected ',' or ']'"),
        ("- name: iris\n  kind: RealtimeAPI\n  name: iris2\n", "line 3, column 3: invalid YAML: duplicate key 'name' (first defined on line 1)"),
        ("- name: iris\n  kind: \x07\n", "line 2, column 9: invalid YAML: unacceptable character #x0007"),
        ("- a\n---\n- b\n", "line 2, column 1: invalid YAML: but found another document"),
        ("", "the file is empty; expected a list of APIs"),
        ("# only a comment\n", "the file is empty"),
        ("name: iris\nkind: RealtimeAPI\n", "expected a list of APIs (each item starting with '- name: ...'), got a mapping"),
        ("[]\n", "the list of APIs is empty; define at least one API"),
    ],
)  # fmt: skip
def test_file_level_problems(project: Path, text: str, message: str) -> None:
    err = spec_error(project, text)
    assert str(err).startswith(f"{project / SPEC_FILE_NAME}: {message}")
    assert [p.path for p in err.problems] == [""]


def test_yaml_merge_keys_may_override(project: Path) -> None:
    text = "- &base {name: iris, kind: RealtimeAPI, handler: {type: python, path: handler.py}}\n- <<: *base\n  name: b\n"
    assert [a.name for a in parse(project, text).apis] == ["iris", "b"]


@pytest.mark.parametrize("item", ["just-a-string", ["a"], None])
def test_an_item_that_is_not_a_mapping(project: Path, item: object) -> None:
    err = spec_error(project, yaml.safe_dump([BASE, item]))
    assert "expected a mapping with the API's fields" in problem_line(err, "[1]")


# --- load_spec ---------------------------------------------------------------------------------------------


def test_load_spec_from_directory_or_file(project: Path) -> None:
    (project / SPEC_FILE_NAME).write_text(yaml.safe_dump([BASE]))
    from_dir, from_file = load_spec(project), load_spec(str(project / SPEC_FILE_NAME))
    assert from_dir == from_file
    assert (from_dir.file, from_dir.project_dir) == ((project / SPEC_FILE_NAME).resolve(), project.resolve())


def test_load_spec_from_another_file_name(project: Path) -> None:
    (project / "staging.yaml").write_text(yaml.safe_dump([BASE]))
    assert load_spec(project / "staging.yaml").file.name == "staging.yaml"


def test_load_spec_without_a_spec_file(project: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(project)
    assert str(info.value) == (
        f"{project / SPEC_FILE_NAME}: file not found; expected a project directory holding cortex.yaml,"
        " or the spec file"
    )


def test_load_spec_rejects_non_utf8(project: Path) -> None:
    (project / SPEC_FILE_NAME).write_bytes(b"- name: \xff\n")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_spec(project)


# --- errors ------------------------------------------------------------------------------------------------


def test_spec_error_renders_one_line_per_problem_and_pickles() -> None:
    err = SpecError(Path("x/cortex.yaml"), [Problem("iris.pod", "bad"), Problem("", "file-wide")])
    assert str(err) == "x/cortex.yaml: iris.pod: bad\nx/cortex.yaml: file-wide"
    again = pickle.loads(pickle.dumps(err))
    assert (again.file, again.problems, str(again)) == (err.file, err.problems, str(err))
    assert SPEC_ERROR_EXIT == 2


def test_models_are_frozen(project: Path) -> None:
    a = parse_apis(project, BASE).apis[0]
    with pytest.raises(ValidationError):
        a.name = "other"  # type: ignore[misc]


def test_models_validate_without_a_project_but_skip_file_checks() -> None:
    assert HandlerSpec(type="python", path="not/there.py").path == "not/there.py"
    with pytest.raises(ValidationError, match="must stay inside the project directory"):
        HandlerSpec(type="python", path="../x.py")


def test_a_dump_validates_back_to_the_same_api(project: Path) -> None:
    sklearn = {"handler": {"type": "sklearn", "path": DELETE}, "model_path": "model.joblib"}
    (project / "reqs.txt").write_text("")
    extras = {"env": {"A": "1"}, "handler": {"python_path": "models"}, "dependencies": {"pip": "reqs.txt"}}
    for a in (api(project), api(project, **sklearn), api(project, **extras)):
        again = RealtimeAPI.model_validate(a.model_dump(mode="json"))
        assert again == a
        assert spec_hash(again, PACKAGE) == spec_hash(a, PACKAGE)


# --- update strategy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("surge", "unavailable", "replicas", "resolved"),
    [("25%", "25%", 4, (1, 1)), ("25%", "25%", 10, (3, 2)), ("25%", "25%", 1, (1, 0)), (2, 0, 10, (2, 0)),
     ("100%", "0%", 3, (3, 0)), ("0%", "50%", 5, (0, 2)), (0, "25%", 3, (0, 1)), ("10%", 1, 0, (0, 1))],
)  # fmt: skip
def test_update_strategy_rounds_like_kubernetes(
    surge: int | str, unavailable: int | str, replicas: int, resolved: tuple[int, int]
) -> None:
    assert UpdateStrategy(max_surge=surge, max_unavailable=unavailable).resolve(replicas) == resolved


@pytest.mark.parametrize(
    ("value", "total", "round_up", "expected"),
    [("25%", 10, True, 3), ("25%", 10, False, 2), (7, 10, True, 7), ("0%", 10, True, 0), ("100%", 3, False, 3),
     ("33%", 3, True, 1), ("33%", 3, False, 0)],
)  # fmt: skip
def test_percent_or_int(value: int | str, total: int, round_up: bool, expected: int) -> None:
    assert percent_or_int(value, total, round_up) == expected


# --- identity ----------------------------------------------------------------------------------------------

EXPLICIT_DEFAULTS = merged(
    BASE,
    {
        "handler": {"class_name": "Handler", "python_path": None},
        "config": {},
        "env": {},
        "dependencies": {"pip": "requirements.txt"},
        "compute": {"cpu": "200m", "gpu": 0, "mem": None},
        "pod": {"max_concurrency": 1, "max_queue_length": 100},
        "autoscaling": {
            "min_replicas": 1, "max_replicas": 100, "init_replicas": 1, "target_in_flight": 1, "window": "60s",
            "downscale_stabilization_period": "5m", "upscale_stabilization_period": "1m",
            "max_downscale_factor": 0.75, "max_upscale_factor": 1.5, "downscale_tolerance": 0.05,
            "upscale_tolerance": 0.05,
        },
        "update_strategy": {"max_surge": "25%", "max_unavailable": "25%"},
        "networking": {"endpoint": "/iris"},
    },
)  # fmt: skip


def hashes(a: RealtimeAPI, package: str = PACKAGE) -> tuple[str, str]:
    return pod_hash(a, package), spec_hash(a, package)


def reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    return value


def test_hashes_are_32_hex_characters(project: Path) -> None:
    assert all(re.fullmatch(r"[0-9a-f]{32}", h) for h in hashes(api(project)))


def test_explicit_defaults_hash_like_omitted_ones(project: Path) -> None:
    assert hashes(parse_apis(project, EXPLICIT_DEFAULTS).apis[0]) == hashes(api(project))


def test_yaml_key_order_does_not_matter(project: Path) -> None:
    shuffled = parse_apis(project, reversed_keys(EXPLICIT_DEFAULTS)).apis[0]
    assert hashes(shuffled) == hashes(api(project))


def test_equal_quantities_in_other_spellings_hash_the_same(project: Path) -> None:
    plain = api(project, compute={"cpu": "200m", "mem": "1Gi"}, autoscaling={"window": "1m30s"})
    spelled = api(project, compute={"cpu": 0.2, "mem": 2**30}, autoscaling={"window": 90})
    assert hashes(plain) == hashes(spelled)


@pytest.mark.parametrize(
    "overrides",
    [{"autoscaling": {"max_replicas": 10}}, {"autoscaling": {"window": "2m"}}, {"autoscaling": {"target_in_flight": 2}},
     {"update_strategy": {"max_surge": 1}}, {"networking": {"endpoint": "/v2/iris"}}],
)  # fmt: skip
def test_control_plane_changes_keep_the_pod(project: Path, overrides: dict[str, Any]) -> None:
    before, after = hashes(api(project)), hashes(api(project, **overrides))
    assert after[0] == before[0]
    assert after[1] != before[1]


@pytest.mark.parametrize(
    "overrides",
    [{"config": {"threshold": 0.5}}, {"compute": {"cpu": 1}}, {"compute": {"mem": "1Gi"}}, {"compute": {"gpu": 1}},
     {"pod": {"max_concurrency": 2}}, {"pod": {"max_queue_length": 10}}, {"model_path": "model.joblib"},
     {"handler": {"class_name": "Other"}}, {"env": {"A": "1"}}, {"handler": {"python_path": "models"}},
     {"dependencies": {"pip": "model.joblib"}}],
)  # fmt: skip
def test_pod_changes_change_both_hashes(project: Path, overrides: dict[str, Any]) -> None:
    before, after = hashes(api(project)), hashes(api(project, **overrides))
    assert after[0] != before[0]
    assert after[1] != before[1]


def test_package_change_changes_both_hashes(project: Path) -> None:
    a = api(project)
    assert all(x != y for x, y in zip(hashes(a), hashes(a, "b" * 64), strict=True))


def test_fields_added_later_keep_the_hashes_of_apis_that_do_not_use_them(project: Path) -> None:
    """Hashes of a spec without env, python_path and dependencies, as computed before those fields existed:
    upgrading cortex-flows must not roll the replicas of running APIs."""
    assert hashes(api(project)) == ("cbffdadee3a4cfbb43e8c2d7ddc30761", "755e51081af5b0359fc008f48147b5c3")


def test_every_field_belongs_to_an_identity() -> None:
    assert {"name", "kind", *POD_FIELDS, *SPEC_FIELDS} == set(RealtimeAPI.model_fields)


def test_progress_deadline_is_a_duration_that_changes_only_the_spec_hash(project: Path) -> None:
    base = api(project)
    slow = api(project, update_strategy={"progress_deadline": "30m"})
    assert (base.update_strategy.progress_deadline_seconds, slow.update_strategy.progress_deadline_seconds) == (600, 1800)
    assert pod_hash(base, PACKAGE) == pod_hash(slow, PACKAGE)
    assert spec_hash(base, PACKAGE) != spec_hash(slow, PACKAGE)
    err = spec_error(project, yaml.safe_dump([merged(BASE, {"update_strategy": {"progress_deadline": "soon"}})]))
    assert "update_strategy.progress_deadline" in str(err)


def test_a_refresh_token_changes_both_hashes_and_none_keeps_them(project: Path) -> None:
    a = api(project)
    assert pod_hash(a, PACKAGE, "") == pod_hash(a, PACKAGE)
    assert pod_hash(a, PACKAGE, "t1") != pod_hash(a, PACKAGE)
    assert spec_hash(a, PACKAGE, "t1") != spec_hash(a, PACKAGE)


# --- canary ------------------------------------------------------------------------------------------------

CANARY_DEFAULTS: dict[str, Any] = {
    "steps": [5, 25, 50, 100], "bake": "1m", "analysis_interval": "1m", "min_samples": 100,
    "inconclusive": "extend", "max_extensions": 3, "max_error_rate_increase": 0.01, "max_latency_ratio": 1.5,
    "drift_test": "chi2", "drift_threshold": 0.01, "windows": [], "freeze": [], "timezone": "UTC", "shadow": 0,
    "min_agreement": None,
}  # fmt: skip


def test_canary_defaults_and_parsed_values(project: Path) -> None:
    c = api(project).canary
    assert c.model_dump() == {**CANARY_DEFAULTS, "shadow": 0.0}
    assert (c.bake_seconds, c.analysis_interval_seconds, c.freeze_ranges) == (60.0, 60.0, [])


def test_canary_windows_freeze_and_time_zones(project: Path) -> None:
    import datetime as dt

    c = api(
        project,
        canary={
            "steps": [10, 50, 100], "bake": 300, "analysis_interval": "30s", "timezone": "Europe/Berlin",
            "windows": [{"days": ["fri", "mon", "wed"], "start": "09:00", "end": "17:30"},
                        {"days": ["sat"], "start": "22:00", "end": "06:00", "timezone": "America/New_York"}],
            "freeze": [dt.date(2024, 12, 24), "2024-12-31", "2024-12-20/2025-01-02", "2025-01-05/2025-01-05"],
            "drift_test": "psi", "shadow": 0.1, "inconclusive": "hold",
        },
    ).canary  # fmt: skip
    assert (c.steps, c.bake, c.bake_seconds, c.analysis_interval_seconds) == ([10, 50, 100], "5m", 300.0, 30.0)
    first, second = c.windows
    assert (first.days, first.start, first.end, first.timezone) == (["mon", "wed", "fri"], "09:00", "17:30", "Europe/Berlin")
    assert (first.start_minutes, first.end_minutes, first.overnight) == (540, 1050, False)
    assert (second.timezone, second.overnight) == ("America/New_York", True)
    assert c.freeze == ["2024-12-24", "2024-12-31", "2024-12-20/2025-01-02", "2025-01-05"]
    assert c.freeze_ranges[2] == (dt.date(2024, 12, 20), dt.date(2025, 1, 2))
    assert (c.drift_threshold, c.shadow, c.inconclusive) == (0.2, 0.1, "hold")


@pytest.mark.parametrize(("test", "threshold"), [("chi2", 0.01), ("ks", 0.01), ("psi", 0.2)])
def test_canary_drift_threshold_defaults_per_test(project: Path, test: str, threshold: float) -> None:
    assert api(project, canary={"drift_test": test}).canary.drift_threshold == threshold
    assert api(project, canary={"drift_test": test, "drift_threshold": 0.5}).canary.drift_threshold == 0.5


def test_canary_whole_day_window_and_midnight_end(project: Path) -> None:
    c = api(project, canary={"windows": [{}, {"start": "20:00", "end": "24:00"}, {"start": "23:00", "end": "00:00"}]}).canary
    assert [(w.start, w.end, w.overnight) for w in c.windows] == [
        ("00:00", "24:00", False), ("20:00", "24:00", False), ("23:00", "00:00", True)
    ]  # fmt: skip
    assert c.windows[0].days == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


@pytest.mark.parametrize(
    ("canary", "path", "message"),
    [({"steps": []}, "canary.steps", "must list at least one traffic weight in percent, ending at 100 (e.g. [5, 25, 50, 100])"),
     ({"steps": [0, 100]}, "canary.steps", "weights must be between 1 and 100 (percent of traffic), got 0"),
     ({"steps": [50, 150]}, "canary.steps", "weights must be between 1 and 100 (percent of traffic), got 150"),
     ({"steps": [5, 50, 25, 100]}, "canary.steps", "must be strictly increasing (e.g. [5, 25, 50, 100]), got [5, 50, 25, 100]"),
     ({"steps": [5, 5, 100]}, "canary.steps", "must be strictly increasing (e.g. [5, 25, 50, 100]), got [5, 5, 100]"),
     ({"steps": [5, 25, 50]}, "canary.steps", "must end at 100 (the candidate takes all traffic before it is promoted), got [5, 25, 50]"),
     ({"steps": ["5", 100]}, "canary.steps[0]", "expected an integer, got '5'"),
     ({"steps": 100}, "canary.steps", "expected a list, got 100"),
     ({"bake": "soon"}, "canary.bake", "expected a duration like '10s', '5m', '1h' or '1m30s', or a number of seconds; got 'soon'"),
     ({"bake": "30s"}, "canary.bake", "must be >= analysis_interval (1m), so every step is analysed, got '30s'"),
     ({"analysis_interval": "5s", "bake": "5s"}, "canary.analysis_interval", "must be at least 10s, got '5s'"),
     ({"min_samples": 0}, "canary.min_samples", "must be >= 1, got 0"),
     ({"inconclusive": "wait"}, "canary.inconclusive", "expected 'extend', 'hold' or 'rollback', got 'wait'"),
     ({"max_extensions": -1}, "canary.max_extensions", "must be >= 0, got -1"),
     ({"max_error_rate_increase": 1.5}, "canary.max_error_rate_increase", "must be >= 0 and <= 1, got 1.5"),
     ({"max_latency_ratio": 0.9}, "canary.max_latency_ratio", "must be >= 1, got 0.9"),
     ({"drift_test": "t-test"}, "canary.drift_test", "expected 'chi2', 'psi' or 'ks', got 't-test'"),
     ({"drift_threshold": 0}, "canary.drift_threshold", "must be > 0, got 0"),
     ({"drift_threshold": 1.5}, "canary.drift_threshold", "for drift_test 'chi2' is a p-value: must be > 0 and < 1, got 1.5"),
     ({"shadow": 1.5}, "canary.shadow", "must be >= 0 and <= 1, got 1.5"),
     ({"shadow": True}, "canary.shadow", "expected a number, got true"),
     ({"timezone": "Europe/Berln"}, "canary.timezone", "unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?); expected an IANA name like 'Europe/Berlin', 'America/New_York' or 'UTC'"),
     ({"timezone": "europe/berlin"}, "canary.timezone", "unknown time zone 'europe/berlin' (did you mean 'Europe/Berlin'?)"),
     ({"timezone": "../etc/passwd"}, "canary.timezone", "unknown time zone '../etc/passwd'"),
     ({"windows": {"start": "09:00"}}, "canary.windows", "expected a list, got a mapping"),
     ({"windows": [{"days": ["monday"]}]}, "canary.windows[0].days[0]", "expected 'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun', got 'monday'"),
     ({"windows": [{"days": []}]}, "canary.windows[0].days", "must name at least one day (mon, tue, wed, thu, fri, sat, sun)"),
     ({"windows": [{"days": ["mon", "tue", "mon"]}]}, "canary.windows[0].days", "lists 'mon' more than once"),
     ({"windows": [{"start": "9am"}]}, "canary.windows[0].start", "expected a time 'HH:MM' between '00:00' and '24:00', got '9am'"),
     ({"windows": [{"end": "25:00"}]}, "canary.windows[0].end", "expected a time 'HH:MM' between '00:00' and '24:00', got '25:00'"),
     ({"windows": [{"end": "12:60"}]}, "canary.windows[0].end", "expected a time 'HH:MM' between '00:00' and '24:00', got '12:60'"),
     ({"windows": [{"start": "24:00", "end": "06:00"}]}, "canary.windows[0].start", "must be before '24:00' (a window starting at midnight starts at '00:00')"),
     ({"windows": [{"start": "09:00", "end": "09:00"}]}, "canary.windows[0].end", "must differ from start ('09:00'); for a whole day use '00:00' to '24:00'"),
     ({"windows": [{"timezone": "Mars/Olympus"}]}, "canary.windows[0].timezone", "unknown time zone 'Mars/Olympus'"),
     ({"windows": [{"tz": "UTC"}]}, "canary.windows[0].tz", "unknown field 'tz'; allowed: days, start, end, timezone"),
     ({"windows": [{"timezon": "UTC"}]}, "canary.windows[0].timezon", "unknown field 'timezon' (did you mean 'timezone'?); allowed: days, start, end, timezone"),
     ({"windows": ["09:00-17:00"]}, "canary.windows[0]", "expected a mapping, got '09:00-17:00'"),
     ({"freeze": ["24.12.2024"]}, "canary.freeze[0]", "expected a date 'YYYY-MM-DD' or an inclusive range 'YYYY-MM-DD/YYYY-MM-DD'; got '24.12.2024'"),
     ({"freeze": ["2024-02-30"]}, "canary.freeze[0]", "'2024-02-30' is not a calendar date"),
     ({"freeze": ["2025-01-02/2024-12-20"]}, "canary.freeze[0]", "a range must not end before it starts, got '2025-01-02/2024-12-20'"),
     ({"freeze": [20241224]}, "canary.freeze[0]", "got 20241224"),
     ({"stepz": [100]}, "canary.stepz", "unknown field 'stepz' (did you mean 'steps'?); allowed: steps, bake,")],
)  # fmt: skip
def test_canary_errors_name_the_field_and_what_is_allowed(
    project: Path, canary: dict[str, Any], path: str, message: str
) -> None:
    err = spec_error(project, yaml.safe_dump([merged(BASE, {"canary": canary})]))
    assert message in problem_line(err, f"iris.{path}")


def test_canary_times_and_dates_written_unquoted_in_yaml(project: Path) -> None:
    """YAML 1.1 reads 22:00 as the number 1320 but 09:00 as a string, and 2024-12-24 as a date."""
    text = (
        "- name: iris\n  kind: RealtimeAPI\n  handler: {type: python, path: handler.py}\n"
        "  canary:\n    windows: [{start: 09:00, end: 17:00}]\n    freeze: [2024-12-24]\n"
    )
    err = spec_error(project, text)
    line = problem_line(err, "iris.canary.windows[0].end")
    assert "expected a time 'HH:MM' in quotes, got the number 1020 (YAML reads an unquoted 17:00 as a number: quote it)" in line
    ok = parse(project, text.replace("end: 17:00", "end: '17:00'")).apis[0].canary
    assert (ok.windows[0].start, ok.windows[0].end, ok.freeze) == ("09:00", "17:00", ["2024-12-24"])
    err = spec_error(project, text.replace("[2024-12-24]", "[2024-12-24 10:00:00]"))
    assert "freezes cover whole days" in problem_line(err, "iris.canary.freeze[0]")


def test_canary_problems_are_reported_together(project: Path) -> None:
    err = spec_error(project, yaml.safe_dump([merged(BASE, {"canary": {"steps": [50, 25], "bake": "10s"}})]))
    assert "must be strictly increasing" in problem_line(err, "iris.canary.steps")
    assert "must be >= analysis_interval" in problem_line(err, "iris.canary.bake")


def test_canary_at_its_defaults_keeps_the_hashes_of_running_apis(project: Path) -> None:
    """The canary block came after the first release: written out at its defaults (in other spellings, in
    another order) or omitted, the pinned hashes of test_fields_added_later_... do not change."""
    pinned = ("cbffdadee3a4cfbb43e8c2d7ddc30761", "755e51081af5b0359fc008f48147b5c3")
    spelled = {**CANARY_DEFAULTS, "bake": 60, "analysis_interval": "60s", "drift_threshold": None}
    assert hashes(api(project, canary=CANARY_DEFAULTS)) == pinned
    assert hashes(api(project, canary=reversed_keys(spelled))) == pinned
    assert hashes(api(project, canary={})) == pinned


@pytest.mark.parametrize(
    "canary",
    [{"steps": [10, 100]}, {"bake": "5m"}, {"inconclusive": "hold"}, {"shadow": 0.1}, {"drift_test": "psi"},
     {"windows": [{"start": "09:00", "end": "17:00"}]}, {"freeze": ["2024-12-24"]}, {"timezone": "Europe/Berlin"}],
)  # fmt: skip
def test_canary_policy_changes_only_the_spec_hash(project: Path, canary: dict[str, Any]) -> None:
    before, after = hashes(api(project)), hashes(api(project, canary=canary))
    assert after[0] == before[0]
    assert after[1] != before[1]


def test_canary_is_a_spec_field_never_a_pod_field() -> None:
    assert "canary" in SPEC_FIELDS and "canary" not in POD_FIELDS


def test_canary_window_order_and_default_time_zone_do_not_change_the_hash(project: Path) -> None:
    one = api(project, canary={"windows": [{"days": ["fri", "mon"]}]})
    other = api(project, canary={"windows": [{"days": ["mon", "fri"], "timezone": "UTC"}]})
    assert hashes(one) == hashes(other)


def test_a_dump_with_a_canary_validates_back_to_the_same_api(project: Path) -> None:
    a = api(
        project,
        canary={"steps": [20, 100], "windows": [{"days": ["sat"], "start": "22:00", "end": "06:00"}],
                "freeze": ["2024-12-20/2025-01-02"], "timezone": "Asia/Tokyo", "drift_test": "ks", "shadow": 0.5},
    )  # fmt: skip
    again = RealtimeAPI.model_validate(a.model_dump(mode="json"))
    assert again == a
    assert spec_hash(again, PACKAGE) == spec_hash(a, PACKAGE)
