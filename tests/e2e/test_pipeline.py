"""The train-and-deploy example pipeline: a good model ships (first deploy) and its quality is recorded; a
worse one is refused by the gate and nothing ships; an equally good new model goes out as a canary."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    FlowRunFilter,
    FlowRunFilterTags,
)

from cortex_flows.backends.local.client import LocalBackend
from tests.helpers import EXAMPLE, BackgroundLoad, example_project


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
    Prefect server is shared by the session), with a short canary policy."""
    root = example_project(tmp_path)
    name = f"iris-{uuid.uuid4().hex[:8]}"
    spec = yaml.safe_load((root / "cortex.yaml").read_text())
    spec[0].update(name=name, networking={"endpoint": f"/{name}"},
                   canary={"steps": [100], "bake": "10s", "analysis_interval": "10s", "min_samples": 1})  # fmt: skip
    (root / "cortex.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return {"path": root, "api": name, "url": f"{local_cluster['gateway']}/{name}"}


def _latest(key: str) -> Any:
    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
        )
    assert found, f"no artifact {key}"
    return found[0]


def _runs_tagged(tag: str) -> list[tuple[str, str]]:
    """(flow name, state name) of the flow runs carrying `tag`."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
        return [(client.read_flow(run.flow_id).name, run.state_name) for run in runs]


def _revision(api: str) -> int:
    status = asyncio.run(LocalBackend().status(api))
    assert status is not None and status.current is not None
    return status.current.revision


def test_a_good_model_ships_a_worse_one_is_refused_an_equal_one_goes_out_as_a_canary(project):
    path, api = str(project["path"]), project["api"]
    model = project["path"] / "model.joblib"
    timings: dict[str, float] = {}

    started = time.monotonic()
    first = pipeline.train_and_deploy(path=path, return_state=True)
    timings["first deploy"] = time.monotonic() - started
    assert first.is_completed(), first.message
    shipped = first.result()
    assert shipped["deployed"] and shipped["outcome"] == "deployed" and shipped["revision"] == 1
    assert shipped["accuracy"] >= 0.9 and pipeline._sha256(model) == shipped["model_sha256"]
    first_run = str(first.state_details.flow_run_id)
    quality = json.loads(_latest(pipeline.quality_key(api)).data)
    assert quality == [{"model_sha256": shipped["model_sha256"], "accuracy": shipped["accuracy"],
                        "training_run": first_run, "revision": 1}]  # fmt: skip
    assert _runs_tagged(f"training-run:{first_run}") == [("deploy", "Completed")]  # the subflow links back

    started = time.monotonic()
    worse = pipeline.train_and_deploy(path=path, degrade=0.5, return_state=True)
    timings["refusal"] = time.monotonic() - started
    assert worse.is_completed(), worse.message  # a refusal is a decision, not a failure
    refused = worse.result()
    assert not refused["deployed"] and "worse than production" in refused["reason"], refused
    assert _revision(api) == 1 and pipeline._sha256(model) == shipped["model_sha256"]  # nothing shipped
    assert not list(project["path"].glob(".model.joblib*"))  # the refused candidate is gone
    worse_run = str(worse.state_details.flow_run_id)
    decision = _latest("gate-decision")
    assert decision.flow_run_id is not None and str(decision.flow_run_id) == worse_run
    assert "Gate refused" in decision.data and "worse than production" in decision.data
    assert worse_run in decision.data and refused["model_sha256"] in decision.data
    assert json.loads(_latest(pipeline.quality_key(api)).data)[0]["training_run"] == first_run  # unchanged
    assert _runs_tagged(f"training-run:{worse_run}") == []

    # A different model (2% of labels flipped) that is as accurate as production: a canary under light load.
    load = BackgroundLoad(project["url"], {"features": [5.1, 3.5, 1.4, 0.2]}, connections=1)
    load.wait_for(5)
    started = time.monotonic()
    equal = pipeline.train_and_deploy(path=path, degrade=0.02, return_state=True)
    timings["canary"] = time.monotonic() - started
    outcomes = load.stop()
    assert equal.is_completed(), equal.message
    promoted = equal.result()
    assert promoted["deployed"] and (promoted["outcome"], promoted["revision"]) == ("promoted", 2), promoted
    assert promoted["model_sha256"] != shipped["model_sha256"] and _revision(api) == 2
    assert set(outcomes) <= {"1", "2"}, set(outcomes)
    equal_run = str(equal.state_details.flow_run_id)
    assert _runs_tagged(f"training-run:{equal_run}") == [("canary-rollout", "Completed")]
    ledger = _latest("canary-report").data  # the canary's ledger names the training run it came from
    assert "- part of: `" in ledger and f"({equal_run})" in ledger and f"`training-run:{equal_run}`" in ledger
    assert json.loads(_latest(pipeline.quality_key(api)).data)[0]["training_run"] == equal_run
    with get_client(sync_client=True) as client:
        names = {str(r.id): (client.read_flow(r.flow_id).name, r.state_name) for r in client.read_flow_runs()}
    assert {names[r] for r in (first_run, worse_run, equal_run)} == {("train-and-deploy", "Completed")}
    print("\n" + ", ".join(f"{what} {seconds:.1f}s" for what, seconds in timings.items()))


def test_refuses_a_model_below_the_floor_without_touching_the_cluster(project):
    refused = pipeline.train_and_deploy(path=str(project["path"]), min_accuracy=0.99)
    assert not refused["deployed"] and "below the minimum" in refused["reason"]
    assert asyncio.run(LocalBackend().status(project["api"])) is None
    assert Path(project["path"] / "model.joblib").exists()
