"""The train-and-deploy example pipeline's gate, and a model below the floor refused without touching the
cluster. Its runs from the deployment, through a worker, are in test_prefect_server.py."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from cortex_flows.backends.local.client import LocalBackend
from tests.helpers import EXAMPLE, example_project


def _load_pipeline() -> ModuleType:
    spec = importlib.util.spec_from_file_location("iris_pipeline", EXAMPLE / "pipeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


pipeline = _load_pipeline()


# -- the gate's decision (pure) --------------------------------------------------------------------------


def test_gate_passes_a_first_model_above_the_floor():
    decision = pipeline.decide(0.95, 0.9, None)
    assert decision.passed and "no production model yet" in decision.reason


def test_gate_passes_a_model_as_good_as_production():
    assert pipeline.decide(0.95, 0.9, 0.95).passed


@pytest.mark.parametrize(
    ("accuracy", "production", "says"),
    [(0.85, None, ["below the minimum"]), (0.93, 0.95, ["worse than production"]),
     (0.6, 0.97, ["below the minimum", "worse than production"])],
)  # fmt: skip
def test_gate_refuses_below_the_floor_or_production(
    accuracy: float, production: float | None, says: list[str]
):
    decision = pipeline.decide(accuracy, 0.9, production)
    assert not decision.passed
    assert all(s in decision.reason for s in says), decision.reason


# -- end to end ------------------------------------------------------------------------------------------


@pytest.fixture
def project(prefect_api, local_cluster, tmp_path) -> dict[str, Any]:
    """A trained copy of the example under a unique API name (quality artifacts are per API, and the
    Prefect server is shared by the session)."""
    root = example_project(tmp_path)
    name = f"iris-{uuid.uuid4().hex[:8]}"
    spec = yaml.safe_load((root / "cortex.yaml").read_text())
    spec[0].update(name=name, networking={"endpoint": f"/{name}"})
    (root / "cortex.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return {"path": root, "api": name}


def test_refuses_a_model_below_the_floor_without_touching_the_cluster(project):
    refused = pipeline.train_and_deploy(path=str(project["path"]), min_accuracy=0.99)
    assert not refused["deployed"] and "below the minimum" in refused["reason"]
    assert asyncio.run(LocalBackend().status(project["api"])) is None
    assert Path(project["path"] / "model.joblib").exists()
