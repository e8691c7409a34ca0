"""Cortex projects of the predictor era (v0.19-v0.33) and handler era (v0.34-v0.35) load unedited.

Each is read against its historical schema, mapped onto the native spec (reference §1.3 -> §1.2), and
`cortex-flows migrate` prints the native spec that loads to the very same APIs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from cortex_flows.cli import main
from cortex_flows.spec import (
    SPEC_FILE_NAME,
    Problem,
    ProjectSpec,
    RealtimeAPI,
    SpecError,
    load_spec,
    migrate_spec,
    pod_hash,
    spec_hash,
)
from cortex_flows.spec.legacy import legacy_era
from cortex_flows.spec.models import validation_context
from tests.unit.test_spec import DELETE, merged, parse, parse_apis

PACKAGE = "c" * 64

# examples/sklearn/iris-classifier/cortex.yaml as of Cortex v0.25
V025 = """\
# WARNING: you are on the master branch; please refer to examples on the branch corresponding to your `cortex version`

- name: iris-classifier
  kind: RealtimeAPI
  predictor:
    type: python
    path: predictor.py
    config:
      bucket: cortex-examples
      key: sklearn/iris-classifier/model.pkl
  compute:
    cpu: 0.2
    mem: 200M
"""

# A v0.35 handler-era API using most of what that era's RealtimeAPI had
V035 = """\
- name: iris-classifier
  kind: RealtimeAPI
  handler:
    type: python
    path: handler.py
    python_path: src
    config:
      model: s3://cortex-examples/pytorch/iris-classifier/weights.pth
    env:
      LOG_FORMAT: json
    dependencies:
      pip: requirements-gpu.txt
    processes_per_replica: 2
    threads_per_process: 4
    log_level: debug
    shm_size: 1Gi
  compute:
    cpu: 1
    gpu: 1
    mem: 4Gi
    node_groups: [gpu-spot]
  autoscaling:
    min_replicas: 2
    max_replicas: 10
    target_replica_concurrency: 6
    max_replica_concurrency: 100
    window: 60s
  update_strategy:
    max_surge: 1
    max_unavailable: 0
  networking:
    endpoint: v1/iris
"""

PREDICTOR: dict[str, Any] = {
    "name": "iris",
    "kind": "RealtimeAPI",
    "predictor": {"type": "python", "path": "predictor.py"},
}
HANDLER: dict[str, Any] = {
    "name": "iris",
    "kind": "RealtimeAPI",
    "handler": {"type": "python", "path": "handler.py", "processes_per_replica": 1},
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "predictor.py").write_text("class PythonPredictor:\n    def predict(self, payload): ...\n")
    (root / "handler.py").write_text("class Handler:\n    def handle_post(self, payload): ...\n")
    (root / "requirements-gpu.txt").write_text("torch\n")
    (tmp_path / "outside").mkdir()
    return root


def parse_items(project: Path, *items: dict[str, Any]) -> ProjectSpec:
    return parse_apis(project, *items)


def native(project: Path, item: dict[str, Any]) -> RealtimeAPI:
    """What a native spec validates to (straight through the model, so no legacy reading is involved)."""
    return RealtimeAPI.model_validate(item, context=validation_context(project))


def problems(project: Path, *items: dict[str, Any]) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        parse_items(project, *items)
    return info.value.problems


def problem_at(project: Path, item: dict[str, Any], path: str) -> str:
    found = problems(project, item)
    messages = [p.message for p in found if p.path == path]
    assert messages, f"no problem at {path!r} in {found}"
    return messages[0]


def notices(spec: ProjectSpec) -> dict[str, str]:
    paths = [n.path for n in spec.notices]
    assert len(paths) == len(set(paths)), f"a field was noticed twice: {paths}"
    return {n.path: n.message for n in spec.notices}


# --- both eras load -----------------------------------------------------------------------------------------


def test_v025_predictor_example_loads_unedited(project: Path) -> None:
    spec = parse(project, V025)
    assert spec.apis == [
        native(
            project,
            {
                "name": "iris-classifier",
                "kind": "RealtimeAPI",
                "handler": {"type": "python", "path": "predictor.py", "class_name": "PythonPredictor"},
                "config": {"bucket": "cortex-examples", "key": "sklearn/iris-classifier/model.pkl"},
                "compute": {"cpu": 0.2, "mem": "200M"},
                "pod": {"max_concurrency": 1, "max_queue_length": 1023},
            },
        )
    ]
    a = spec.apis[0]
    assert (a.compute.cpu, a.compute.cpu_millicores, a.compute.mem_bytes) == ("0.2", 200, 200 * 10**6)
    assert (a.endpoint, a.target_in_flight) == ("/iris-classifier", 1.0)
    assert spec.notices == [Problem("iris-classifier", "read as a Cortex predictor-era spec (v0.19-v0.33)")]


def test_v035_handler_example_loads_unedited(project: Path) -> None:
    spec = parse(project, V035)
    assert spec.apis == [
        native(
            project,
            {
                "name": "iris-classifier",
                "kind": "RealtimeAPI",
                "handler": {
                    "type": "python",
                    "path": "handler.py",
                    "class_name": "Handler",
                    "python_path": "src",
                },
                "config": {"model": "s3://cortex-examples/pytorch/iris-classifier/weights.pth"},
                "env": {"LOG_FORMAT": "json"},
                "dependencies": {"pip": "requirements-gpu.txt"},
                "compute": {"cpu": 1, "gpu": 1, "mem": "4Gi"},
                "pod": {"max_concurrency": 8, "max_queue_length": 92},
                "autoscaling": {"min_replicas": 2, "max_replicas": 10, "target_in_flight": 6, "window": "1m"},
                "update_strategy": {"max_surge": 1, "max_unavailable": 0},
                "networking": {"endpoint": "/v1/iris"},
            },
        )
    ]
    assert notices(spec) == {
        "iris-classifier": "read as a Cortex handler-era spec (v0.34-v0.35)",
        "iris-classifier.handler.log_level": "not applicable here: it set the log level of Cortex's serving containers",
        "iris-classifier.handler.shm_size": "not applicable here: replicas are processes that share the machine's /dev/shm",
        "iris-classifier.compute.node_groups": "not applicable here: there are no node groups; replicas run on the backend's machine",
    }  # fmt: skip


def test_load_spec_reads_a_cortex_project_from_its_directory(project: Path) -> None:
    (project / SPEC_FILE_NAME).write_text(V025)
    spec = load_spec(project)
    assert [a.name for a in spec.apis] == ["iris-classifier"]
    assert [n.path for n in spec.notices] == ["iris-classifier"]


def test_native_specs_have_no_notices(project: Path) -> None:
    spec = parse_items(
        project, {"name": "iris", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"}}
    )
    assert spec.notices == []


# --- defaults and the concurrency mapping --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("predictor", "autoscaling", "pod", "target"),
    [
        ({}, {}, {"max_concurrency": 1, "max_queue_length": 1023}, 1.0),
        ({"processes_per_replica": 4}, {}, {"max_concurrency": 4, "max_queue_length": 1020}, 4.0),
        ({"threads_per_process": 8}, {}, {"max_concurrency": 8, "max_queue_length": 1016}, 8.0),
        ({"processes_per_replica": 2, "threads_per_process": 3}, {}, {"max_concurrency": 6, "max_queue_length": 1018}, 6.0),
        ({"processes_per_replica": 2}, {"max_replica_concurrency": 10}, {"max_concurrency": 2, "max_queue_length": 8}, 2.0),
        ({"processes_per_replica": 4}, {"max_replica_concurrency": 2}, {"max_concurrency": 4, "max_queue_length": 1}, 4.0),
        ({"processes_per_replica": 4}, {"max_replica_concurrency": 4}, {"max_concurrency": 4, "max_queue_length": 1}, 4.0),
        ({}, {"max_replica_concurrency": 30000}, {"max_concurrency": 1, "max_queue_length": 29999}, 1.0),
        ({}, {"target_replica_concurrency": 2.5}, {"max_concurrency": 1, "max_queue_length": 1023}, 2.5),
        ({"threads_per_process": 4}, {"target_replica_concurrency": 3}, {"max_concurrency": 4, "max_queue_length": 1020}, 3.0),
    ],
)  # fmt: skip
def test_processes_threads_and_replica_concurrency_map_onto_pod_and_target(
    project: Path, predictor: dict[str, Any], autoscaling: dict[str, Any], pod: dict[str, int], target: float
) -> None:
    a = parse_items(project, merged(PREDICTOR, {"predictor": predictor, "autoscaling": autoscaling})).apis[0]
    assert a.pod.model_dump() == pod
    assert a.target_in_flight == target


@pytest.mark.parametrize(
    ("written", "endpoint"),
    [
        (DELETE, "/iris"),
        ("iris", "/iris"),
        ("/iris", "/iris"),
        ("v1/models/iris", "/v1/models/iris"),
        (None, "/iris"),
    ],
)
def test_endpoint_without_a_leading_slash(project: Path, written: object, endpoint: str) -> None:
    item = PREDICTOR if written is DELETE else merged(PREDICTOR, {"networking": {"endpoint": written}})
    assert parse_items(project, item).apis[0].endpoint == endpoint


def test_autoscaling_and_update_strategy_are_copied(project: Path) -> None:
    scaling = {"min_replicas": 1, "max_replicas": 4, "init_replicas": 2, "window": "30s",
               "downscale_stabilization_period": "1m", "upscale_stabilization_period": "0s",
               "max_downscale_factor": 0.5, "max_upscale_factor": 2, "downscale_tolerance": 0.1,
               "upscale_tolerance": 0.1}  # fmt: skip
    strategy = {"max_surge": "50%", "max_unavailable": 1}
    a = parse_items(project, merged(PREDICTOR, {"autoscaling": scaling, "update_strategy": strategy})).apis[0]
    handler = {"type": "python", "path": "predictor.py", "class_name": "PythonPredictor"}
    expected = {"name": "iris", "kind": "RealtimeAPI", "handler": handler, "pod": {"max_queue_length": 1023},
                "autoscaling": scaling, "update_strategy": strategy}  # fmt: skip
    assert a == native(project, expected)


@pytest.mark.parametrize("block", ["config", "env", "dependencies"])
def test_null_and_empty_handler_blocks_mean_none(project: Path, block: str) -> None:
    for value in (None, {}):
        a = parse_items(project, merged(PREDICTOR, {"predictor": {block: value}})).apis[0]
        assert (a.config, a.env, a.dependencies.pip) == ({}, {}, "requirements.txt")


@pytest.mark.parametrize(
    "block", ["compute", "autoscaling", "update_strategy", "networking", "monitoring", "node_groups"]
)
def test_null_api_blocks_are_accepted_without_notice(project: Path, block: str) -> None:
    spec = parse_items(project, merged(PREDICTOR, {block: None}))
    assert spec.apis == parse_items(project, PREDICTOR).apis
    assert [n.path for n in spec.notices] == ["iris"]


def test_config_env_and_python_path_are_carried_over(project: Path) -> None:
    item = merged(PREDICTOR, {"predictor": {"config": {"threshold": 0.5, "labels": ["a"]}, "env": {"A": "1"}, "python_path": "src"}})  # fmt: skip
    a = parse_items(project, item).apis[0]
    assert (a.config, a.env, a.handler.python_path) == (
        {"threshold": 0.5, "labels": ["a"]},
        {"A": "1"},
        "src",
    )


def test_handler_era_keeps_the_native_class_name(project: Path) -> None:
    a = parse_items(project, HANDLER).apis[0]
    assert (a.handler.path, a.handler.class_name) == ("handler.py", "Handler")


def test_missing_kind_is_a_realtime_api(project: Path) -> None:
    spec = parse_items(project, merged(PREDICTOR, {"kind": DELETE}))
    assert spec.apis == parse_items(project, PREDICTOR).apis
    assert spec.notices == [
        Problem("iris", "read as a Cortex predictor-era spec (v0.13-v0.18, without kind)")
    ]
    assert parse_items(project, merged(HANDLER, {"kind": DELETE})).apis[0].kind == "RealtimeAPI"


# --- not applicable here ---------------------------------------------------------------------------------------

NOT_APPLICABLE = [
    ({"predictor": {"image": "quay.io/cortexlabs/python-predictor-cpu:0.25.0"}}, "iris.predictor.image", "not applicable here: replicas run your class in a Python process, not in Cortex's container image"),
    ({"predictor": {"tensorflow_serving_image": "quay.io/cortexlabs/tensorflow-serving-cpu:0.25.0"}}, "iris.predictor.tensorflow_serving_image", "not applicable here: there is no TensorFlow Serving container"),
    ({"predictor": {"log_level": "warning"}}, "iris.predictor.log_level", "not applicable here: it set the log level"),
    ({"predictor": {"shm_size": "1Gi"}}, "iris.predictor.shm_size", "not applicable here: replicas are processes"),
    ({"node_groups": ["cpu-spot"]}, "iris.node_groups", "not applicable here: there are no node groups"),
    ({"compute": {"node_groups": ["cpu-spot"]}}, "iris.compute.node_groups", "not applicable here: there are no node groups"),
    ({"compute": {"inf": 1}}, "iris.compute.inf", "not applicable here: there are no AWS Inferentia chips here"),
    ({"compute": {"cpu": None}}, "iris.compute.cpu", "not applicable here: null (no CPU request); the default 200m is used"),
    ({"networking": {"api_gateway": "public"}}, "iris.networking.api_gateway", "not applicable here: there is no AWS API Gateway"),
    ({"networking": {"api_gateway": "none"}}, "iris.networking.api_gateway", "not applicable here: there is no AWS API Gateway"),
    ({"networking": {"local_port": 8890}}, "iris.networking.local_port", "not applicable here: Cortex's local provider port"),
    ({"monitoring": {"model_type": "classification"}}, "iris.monitoring", "not applicable here: Cortex's model monitoring"),
    ({"monitoring": {"key": "label", "model_type": "regression"}}, "iris.monitoring", "not applicable here: Cortex's model monitoring"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "path", "message"), NOT_APPLICABLE, ids=[c[1] for c in NOT_APPLICABLE])
@pytest.mark.parametrize("base", [PREDICTOR, HANDLER], ids=["predictor", "handler"])
def test_not_applicable_fields_are_dropped_with_one_notice(
    project: Path, base: dict[str, Any], overrides: dict[str, Any], path: str, message: str
) -> None:
    if "predictor" in overrides and "handler" in base:
        overrides, path = {"handler": overrides["predictor"]}, path.replace(".predictor.", ".handler.")
    spec = parse_items(project, merged(base, overrides))
    assert spec.apis == parse_items(project, base).apis  # dropped: the API is the same without it
    found = notices(spec)
    assert list(found) == ["iris", path]
    assert found[path].startswith(message)


def test_every_not_applicable_field_at_once_gives_one_notice_each(project: Path) -> None:
    item = PREDICTOR
    for overrides, _, _ in NOT_APPLICABLE[:-1]:  # the two monitoring cases write the same field
        item = merged(item, overrides)
    found = notices(parse_items(project, item))
    assert sorted(found) == sorted(["iris", *{path for _, path, _ in NOT_APPLICABLE}])


@pytest.mark.parametrize(
    ("files", "dependencies", "noticed"),
    [
        ([], {}, []),
        (["conda-packages.txt"], {}, ["conda"]),
        (["dependencies.sh"], {}, ["shell"]),
        (["conda-packages.txt", "dependencies.sh"], {}, ["conda", "shell"]),
        (["env/conda.txt"], {"conda": "env/conda.txt"}, ["conda"]),
        (["conda-packages.txt"], {"conda": "env/conda.txt"}, []),  # the default file is not the one named
        ([], {"conda": "missing.txt", "shell": "missing.sh"}, []),
        (["setup/install.sh"], {"shell": "setup/install.sh", "pip": "requirements-gpu.txt"}, ["shell"]),
    ],
)
def test_conda_and_shell_are_noticed_only_when_their_file_exists(
    project: Path, files: list[str], dependencies: dict[str, str], noticed: list[str]
) -> None:
    for name in files:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("")
    spec = parse_items(project, merged(PREDICTOR, {"predictor": {"dependencies": dependencies}}))
    found = {path: message for path, message in notices(spec).items() if path != "iris"}
    assert found == {
        f"iris.predictor.dependencies.{f}": "not run here: only pip requirements are installed"
        for f in noticed
    }


def test_pip_requirements_become_the_native_dependencies(project: Path) -> None:
    custom = parse_items(
        project, merged(PREDICTOR, {"predictor": {"dependencies": {"pip": "requirements-gpu.txt"}}})
    )
    assert custom.apis[0].dependencies.pip == "requirements-gpu.txt"
    default = parse_items(
        project, merged(PREDICTOR, {"predictor": {"dependencies": {"pip": "requirements.txt"}}})
    )
    assert default.apis == parse_items(project, PREDICTOR).apis


# --- errors ------------------------------------------------------------------------------------------------------

UNSUPPORTED = [
    ({"type": "tensorflow"}, "type", "type 'tensorflow' is not supported by cortex-flows (there is no TensorFlow Serving or ONNX runtime): use type 'python' and load the model in __init__ (e.g. from a path or URI in config) instead"),
    ({"type": "onnx"}, "type", "type 'onnx' is not supported by cortex-flows"),
    ({"models": {"path": "s3://bucket/model"}}, "models", "not supported by cortex-flows (no model caching or live reloading): load the model in __init__"),
    ({"multi_model_reloading": {"dir": "s3://bucket/models"}}, "multi_model_reloading", "not supported by cortex-flows (no live model reloading): load the model in __init__"),
    ({"server_side_batching": {"max_batch_size": 8, "batch_interval": "0.1s"}}, "server_side_batching", "not supported by cortex-flows: requests are not batched on the server"),
    ({"protobuf_path": "iris.proto"}, "protobuf_path", "not supported by cortex-flows: APIs are served over HTTP only, not gRPC"),
    ({"model_path": "s3://bucket/model"}, "model_path", "not supported by cortex-flows (TensorFlow/ONNX predictors only)"),
    ({"signature_key": "predict"}, "signature_key", "not supported by cortex-flows (TensorFlow predictors only)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "field", "message"), UNSUPPORTED, ids=[c[1] + str(i) for i, c in enumerate(UNSUPPORTED)]
)
@pytest.mark.parametrize("key", ["predictor", "handler"])
def test_unsupported_fields_are_errors_at_their_path(
    project: Path, key: str, overrides: dict[str, Any], field: str, message: str
) -> None:
    base = PREDICTOR if key == "predictor" else HANDLER
    assert problem_at(project, merged(base, {key: overrides}), f"iris.{key}.{field}").startswith(message)


def test_all_unsupported_fields_are_reported_together(project: Path) -> None:
    item = PREDICTOR
    for overrides, _, _ in UNSUPPORTED[1:]:
        item = merged(item, {"predictor": overrides})
    assert sorted(p.path for p in problems(project, item)) == sorted(
        f"iris.predictor.{f}" for _, f, _ in UNSUPPORTED[1:]
    )


MISSPELLED = [
    (PREDICTOR, {"predictor": {"procesess_per_replica": 2}}, "iris.predictor.procesess_per_replica", "unknown field 'procesess_per_replica' (did you mean 'processes_per_replica'?); allowed: type, path, config, env, python_path, processes_per_replica, threads_per_process, dependencies, models, multi_model_reloading, model_path, signature_key, server_side_batching, protobuf_path, image, tensorflow_serving_image, log_level, shm_size"),
    (HANDLER, {"handler": {"thread_per_process": 2}}, "iris.handler.thread_per_process", "unknown field 'thread_per_process' (did you mean 'threads_per_process'?)"),
    (HANDLER, {"handler": {"class_name": "MyHandler"}}, "iris.handler.class_name", "unknown field 'class_name'"),
    (PREDICTOR, {"autoscaling": {"max_replica_concurency": 10}}, "iris.autoscaling.max_replica_concurency", "unknown field 'max_replica_concurency' (did you mean 'max_replica_concurrency'?)"),
    (PREDICTOR, {"autoscaling": {"target_in_flight": 10}}, "iris.autoscaling.target_in_flight", "unknown field 'target_in_flight'"),
    (PREDICTOR, {"networking": {"api_gatway": "none"}}, "iris.networking.api_gatway", "unknown field 'api_gatway' (did you mean 'api_gateway'?); allowed: endpoint, api_gateway, local_port"),
    (PREDICTOR, {"compute": {"memory": "1Gi"}}, "iris.compute.memory", "unknown field 'memory' (did you mean 'mem'?); allowed: cpu, gpu, inf, mem, node_groups"),
    (PREDICTOR, {"predictor": {"dependencies": {"pips": "r.txt"}}}, "iris.predictor.dependencies.pips", "unknown field 'pips' (did you mean 'pip'?); allowed: pip, conda, shell"),
    (PREDICTOR, {"monitoring": {"modeltype": "classification"}}, "iris.monitoring.modeltype", "unknown field 'modeltype' (did you mean 'model_type'?); allowed: model_type, key"),
    (PREDICTOR, {"update_strategy": {"max_surges": 1}}, "iris.update_strategy.max_surges", "unknown field 'max_surges' (did you mean 'max_surge'?)"),
    (PREDICTOR, {"compte": {"cpu": 1}}, "iris.compte", "unknown field 'compte' (did you mean 'compute'?)"),
    (PREDICTOR, {"handler": {"type": "python", "path": "handler.py"}}, "iris.handler", "unknown field 'handler'"),
    (PREDICTOR, {"pod": {"max_concurrency": 2}}, "iris.pod", "unknown field 'pod'"),
]  # fmt: skip


@pytest.mark.parametrize(("base", "overrides", "path", "message"), MISSPELLED, ids=[c[2] for c in MISSPELLED])
def test_fields_outside_the_historical_schema_are_errors_with_a_suggestion(
    project: Path, base: dict[str, Any], overrides: dict[str, Any], path: str, message: str
) -> None:
    assert problem_at(project, merged(base, overrides), path).startswith(message)


def test_error_paths_follow_the_file_when_the_name_is_unusable(project: Path) -> None:
    item = merged(PREDICTOR, {"name": "Iris_Classifier", "predictor": {"threads_per_proces": 2}})
    assert [p.path for p in problems(project, item)] == ["[0].name", "[0].predictor.threads_per_proces"]


INVALID = [
    # checked by the historical schema
    ({"predictor": {"type": DELETE}}, "iris.predictor.type", "is required; allowed: 'python', 'tensorflow', 'onnx'"),
    ({"predictor": {"type": "pytorch"}}, "iris.predictor.type", "expected 'python', 'tensorflow' or 'onnx', got 'pytorch'"),
    ({"predictor": {"path": DELETE}}, "iris.predictor.path", "is required"),
    ({"predictor": "predictor.py"}, "iris.predictor", "expected a mapping, got 'predictor.py'"),
    ({"predictor": {"processes_per_replica": "2"}}, "iris.predictor.processes_per_replica", "expected an integer, got '2'"),
    ({"predictor": {"processes_per_replica": 0}}, "iris.predictor.processes_per_replica", "must be >= 1 and <= 100, got 0"),
    ({"predictor": {"processes_per_replica": 101}}, "iris.predictor.processes_per_replica", "must be >= 1 and <= 100, got 101"),
    ({"predictor": {"threads_per_process": 0}}, "iris.predictor.threads_per_process", "must be >= 1, got 0"),
    ({"predictor": {"processes_per_replica": 100, "threads_per_process": 301}}, "iris.predictor.threads_per_process", "processes_per_replica * threads_per_process is a replica's max_concurrency here, which must be <= 30000, got 30100"),
    ({"predictor": {"config": ["a"]}}, "iris.predictor.config", "expected a mapping, got a list"),
    ({"predictor": {"env": {"WORKERS": 4}}}, "iris.predictor.env.WORKERS", "expected a string, got 4"),
    ({"predictor": {"python_path": 5}}, "iris.predictor.python_path", "expected a string, got 5"),
    ({"autoscaling": {"max_replica_concurrency": 0}}, "iris.autoscaling.max_replica_concurrency", "must be > 0 and <= 30000, got 0"),
    ({"autoscaling": {"max_replica_concurrency": 30001}}, "iris.autoscaling.max_replica_concurrency", "must be > 0 and <= 30000, got 30001"),
    ({"autoscaling": {"max_replica_concurrency": 1.5}}, "iris.autoscaling.max_replica_concurrency", "expected an integer, got 1.5"),
    ({"autoscaling": {"target_replica_concurrency": 0}}, "iris.autoscaling.target_replica_concurrency", "must be > 0, got 0"),
    ({"autoscaling": {"target_replica_concurrency": "high"}}, "iris.autoscaling.target_replica_concurrency", "expected a number, got 'high'"),
    ({"autoscaling": {"target_replica_concurrency": 20, "max_replica_concurrency": 10}}, "iris.autoscaling.target_replica_concurrency", "must be <= max_replica_concurrency (10), got 20"),
    ({"networking": {"api_gateway": "private"}}, "iris.networking.api_gateway", "expected 'public' or 'none', got 'private'"),
    ({"name": DELETE}, "[0].name", "is required"),
    # checked by the native model, reported where the value came from
    ({"predictor": {"path": "missing.py"}}, "iris.predictor.path", "file 'missing.py' not found in the project directory"),
    ({"predictor": {"path": "../outside/x.py"}}, "iris.predictor.path", "must stay inside the project directory"),
    ({"predictor": {"path": "src"}}, "iris.predictor.path", "file 'src' not found"),
    ({"predictor": {"env": {"MY-VAR": "1"}}}, "iris.predictor.env.MY-VAR", "invalid environment variable name 'MY-VAR'"),
    ({"predictor": {"env": {"CORTEX_API_NAME": "x"}}}, "iris.predictor.env.CORTEX_API_NAME", "names starting with CORTEX_ are reserved"),
    ({"predictor": {"python_path": "lib"}}, "iris.predictor.python_path", "path 'lib' not found in the project directory"),
    ({"predictor": {"python_path": "../outside"}}, "iris.predictor.python_path", "must stay inside the project directory"),
    ({"predictor": {"dependencies": {"pip": "missing.txt"}}}, "iris.predictor.dependencies.pip", "file 'missing.txt' not found"),
    ({"predictor": {"config": {1: "a"}}}, "iris.predictor.config.1", "keys must be strings, got 1"),
    ({"compute": {"cpu": "abc"}}, "iris.compute.cpu", "expected a CPU quantity like '200m', 0.5 or 1; got 'abc'"),
    ({"compute": {"cpu": "10m"}}, "iris.compute.cpu", "must be at least 20m"),
    ({"compute": {"mem": "1GB"}}, "iris.compute.mem", "expected a memory quantity"),
    ({"compute": {"gpu": -1}}, "iris.compute.gpu", "must be >= 0, got -1"),
    ({"autoscaling": {"min_replicas": 5, "max_replicas": 3}}, "iris.autoscaling.min_replicas", "must be <= max_replicas (3), got 5"),
    ({"autoscaling": {"window": "15s"}}, "iris.autoscaling.window", "a multiple of 10s"),
    ({"autoscaling": {"min_replicas": "1"}}, "iris.autoscaling.min_replicas", "expected an integer, got '1'"),
    ({"update_strategy": {"max_surge": 0, "max_unavailable": 0}}, "iris.update_strategy", "cannot both be 0"),
    ({"networking": {"endpoint": "iris/"}}, "iris.networking.endpoint", "must not end with '/'"),
    ({"networking": {"endpoint": 5}}, "iris.networking.endpoint", "expected a string, got 5"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "path", "message"), INVALID, ids=[c[1] + str(i) for i, c in enumerate(INVALID)]
)
def test_invalid_values_are_reported_at_the_legacy_field(
    project: Path, overrides: dict[str, Any], path: str, message: str
) -> None:
    assert message in problem_at(project, merged(PREDICTOR, overrides), path)


def test_native_problems_in_the_handler_era_use_its_key(project: Path) -> None:
    item = merged(HANDLER, {"handler": {"path": "missing.py", "env": {"CORTEX_X": "1"}}})
    assert sorted(p.path for p in problems(project, item)) == [
        "iris.handler.env.CORTEX_X",
        "iris.handler.path",
    ]


@pytest.mark.parametrize(
    "item", [merged(PREDICTOR, {"kind": "BatchAPI"}), merged(HANDLER, {"kind": "TaskAPI"})]
)
def test_other_kinds_are_errors_listing_the_allowed_kinds(project: Path, item: dict[str, Any]) -> None:
    found = problems(project, item)
    message = f"unknown kind {item['kind']!r}; allowed kinds: RealtimeAPI, TrafficSplitter"
    assert found == [Problem("iris.kind", message)]


def test_explicit_null_kind_is_an_error(project: Path) -> None:
    assert problem_at(project, merged(PREDICTOR, {"kind": None}), "iris.kind") == (
        "unknown kind null; allowed kinds: RealtimeAPI, TrafficSplitter"
    )


def test_duplicate_endpoints_across_legacy_and_native_apis(project: Path) -> None:
    other = {"name": "other", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"},
             "networking": {"endpoint": "/iris"}}  # fmt: skip
    found = problems(project, merged(PREDICTOR, {"networking": {"endpoint": "iris"}}), other)
    assert [p.path for p in found] == ["other.networking.endpoint"]


# --- which items are legacy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "era"),
    [
        ({"predictor": {}}, "predictor"),
        ({"predictor": None, "handler": {}}, "predictor"),
        ({"handler": {"type": "python", "path": "h.py", "config": {}}}, "handler"),
        ({"handler": {"type": "python", "path": "h.py", "processes_per_replica": 2}}, "handler"),
        ({"handler": {"type": "tensorflow", "path": "h.py"}}, "handler"),
        ({"handler": {"type": "onnx"}}, "handler"),
        ({"handler": {"type": ["tensorflow"]}}, None),
        ({"handler": {"type": "python"}, "autoscaling": {"max_replica_concurrency": 8}}, "handler"),
        ({"handler": {"type": "python"}, "autoscaling": {"target_replica_concurrency": 8}}, "handler"),
        ({"handler": {"type": "python"}, "networking": {"api_gateway": "none"}}, "handler"),
        ({"handler": {"type": "python"}, "networking": {"local_port": 8890}}, "handler"),
        ({"handler": {"type": "python"}, "monitoring": None}, "handler"),
        ({"monitoring": {}}, "predictor"),
        # native
        ({"handler": {"type": "python", "path": "h.py"}}, None),
        (
            {"handler": {"type": "python", "path": "h.py", "python_path": "src"}},
            None,
        ),  # python_path is native too
        ({"handler": {"type": "python", "path": "h.py", "clas_name": "H"}}, None),
        ({"handler": {"type": "sklearn"}, "env": {"A": "1"}, "dependencies": {"pip": "r.txt"}}, None),
        ({"handler": "h.py", "autoscaling": ["max_replica_concurrency"], "networking": None}, None),
        ({"handler": {"type": "python"}, "autoscaling": {"target_in_flight": 8}}, None),
        ({"handler": {"type": "python"}, "compute": {"inf": 1}, "node_groups": ["a"]}, None),
        ({}, None),
    ],
)
def test_legacy_era_detection(item: dict[str, Any], era: str | None) -> None:
    assert legacy_era(item) == era


def test_minimal_handler_era_item_stays_native(project: Path) -> None:
    item = {"name": "iris", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"}}
    spec = parse_items(project, item)
    assert spec.notices == []
    assert spec.apis == [native(project, item)]


def test_native_typos_keep_the_native_error(project: Path) -> None:
    item = {
        "name": "iris",
        "kind": "RealtimeAPI",
        "handler": {"type": "python", "path": "handler.py", "clas_name": "H"},
    }
    assert problem_at(project, item, "iris.handler.clas_name") == (
        "unknown field 'clas_name' (did you mean 'class_name'?); allowed: type, path, class_name, python_path"
    )
    kind_missing = {"name": "iris", "handler": {"type": "python", "path": "handler.py"}}
    allowed = "allowed kinds: RealtimeAPI, TrafficSplitter"
    assert problem_at(project, kind_missing, "iris.kind") == f"is required; {allowed}"


def test_legacy_and_native_apis_in_one_file(project: Path) -> None:
    other = {"name": "other", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"}}
    spec = parse_items(project, PREDICTOR, merged(HANDLER, {"name": "iris-v2"}), other)
    assert [a.name for a in spec.apis] == ["iris", "iris-v2", "other"]
    assert [n.path for n in spec.notices] == ["iris", "iris-v2"]


# --- migrate -------------------------------------------------------------------------------------------------


def write_project(project: Path, text: str, name: str = "cortex-v0.yaml") -> Path:
    file = project / name
    file.write_text(text)
    return file


def hashes(spec: ProjectSpec) -> list[tuple[str, str]]:
    return [(pod_hash(a, PACKAGE), spec_hash(a, PACKAGE)) for a in spec.apis]


@pytest.mark.parametrize("text", [V025, V035], ids=["v0.25", "v0.35"])
def test_migrated_spec_loads_to_the_same_apis_and_hashes(project: Path, text: str) -> None:
    legacy = load_spec(write_project(project, text))
    migrated = migrate_spec(project / "cortex-v0.yaml")
    (project / SPEC_FILE_NAME).write_text(migrated)
    again = load_spec(project)
    assert again.apis == legacy.apis
    assert hashes(again) == hashes(legacy)
    assert again.notices == []  # the output is a native spec


def test_migrate_output_for_the_v025_example(project: Path) -> None:
    (project / "dependencies.sh").write_text("apt-get install -y libgomp1\n")
    file = write_project(
        project, V025.replace("    mem: 200M\n", "    mem: 200M\n  networking:\n    api_gateway: public\n")
    )
    assert migrate_spec(file) == textwrap.dedent(f"""\
        # cortex-flows spec, converted by `cortex-flows migrate` from {file}.
        # Comments above an API name the Cortex fields that have no effect here, and why.

        # iris-classifier: read as a Cortex predictor-era spec (v0.19-v0.33)
        # iris-classifier.networking.api_gateway: not applicable here: there is no AWS API Gateway; APIs are served by the cortex-flows gateway
        # iris-classifier.predictor.dependencies.shell: not run here: only pip requirements are installed
        - name: iris-classifier
          kind: RealtimeAPI
          handler:
            type: python
            path: predictor.py
            class_name: PythonPredictor
          config:
            bucket: cortex-examples
            key: sklearn/iris-classifier/model.pkl
          compute:
            cpu: 0.2
            mem: 200M
          pod:
            max_queue_length: 1023
        """)


def test_migrate_writes_only_what_differs_from_the_native_defaults(project: Path) -> None:
    file = write_project(project, yaml.safe_dump([HANDLER]))
    body = yaml.safe_load(migrate_spec(file))
    assert body == [{"name": "iris", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"},
                     "pod": {"max_concurrency": 1, "max_queue_length": 1023}}]  # fmt: skip


def test_migrate_keeps_a_native_spec_as_it_is(project: Path) -> None:
    items = [
        {"name": "iris", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"},
         "config": {"threshold": 0.5}, "autoscaling": {"window": "90s"}},
        {"name": "other", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "predictor.py"}},
    ]  # fmt: skip
    file = write_project(project, yaml.safe_dump(items, sort_keys=False), SPEC_FILE_NAME)
    migrated = migrate_spec(project)
    assert yaml.safe_load(migrated) == items
    assert [line for line in migrated.splitlines() if line.startswith("#")] == [
        f"# cortex-flows spec, converted by `cortex-flows migrate` from {file}.",
        "# Comments above an API name the Cortex fields that have no effect here, and why.",
    ]
    (project / "migrated.yaml").write_text(migrated)
    assert load_spec(project / "migrated.yaml").apis == load_spec(project).apis


def test_migrate_writes_merged_values_without_yaml_anchors(project: Path) -> None:
    text = V025 + textwrap.dedent("""\
        - name: iris-b
          kind: RealtimeAPI
          predictor: &shared
            type: python
            path: predictor.py
            config: {a: 1}
          compute: {cpu: 1}
          networking: {endpoint: iris-b}
        - name: iris-c
          kind: RealtimeAPI
          predictor: *shared
          networking: {endpoint: iris-c}
        """)
    migrated = migrate_spec(write_project(project, text))
    assert "&" not in migrated and "*" not in migrated
    (project / SPEC_FILE_NAME).write_text(migrated)
    assert load_spec(project).apis == load_spec(project / "cortex-v0.yaml").apis


def test_migrate_raises_the_same_errors_as_load(project: Path) -> None:
    file = write_project(
        project,
        yaml.safe_dump(
            [merged(PREDICTOR, {"predictor": {"models": {"dir": "m"}, "procesess_per_replica": 2}})]
        ),
    )
    with pytest.raises(SpecError) as loading:
        load_spec(file)
    with pytest.raises(SpecError) as migrating:
        migrate_spec(file)
    assert str(migrating.value) == str(loading.value)
    assert [p.path for p in migrating.value.problems] == [
        "iris.predictor.models",
        "iris.predictor.procesess_per_replica",
    ]
    with pytest.raises(SpecError, match="file not found"):
        migrate_spec(project / "nope")


# --- the CLI verb ----------------------------------------------------------------------------------------------


def test_cli_migrate_prints_the_native_spec(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / SPEC_FILE_NAME).write_text(V025)
    assert main(["migrate", str(project)]) == 0
    out = capsys.readouterr().out
    assert out == migrate_spec(project)


def test_cli_migrate_reports_spec_errors_like_deploy(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / SPEC_FILE_NAME).write_text(
        yaml.safe_dump([merged(PREDICTOR, {"predictor": {"type": "onnx"}})])
    )
    assert main(["migrate", str(project / SPEC_FILE_NAME)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        f"{project / SPEC_FILE_NAME}: iris.predictor.type: type 'onnx' is not supported by cortex-flows"
        in captured.err
    )


def test_cli_migrate_does_not_import_prefect(project: Path) -> None:
    (project / SPEC_FILE_NAME).write_text(V025)
    code = (
        "import sys; from cortex_flows.cli import main; rc = main(['migrate', sys.argv[1]]);"
        " assert rc == 0 and 'prefect' not in sys.modules, sorted(m for m in sys.modules if 'prefect' in m)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(project)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "kind: RealtimeAPI" in result.stdout
