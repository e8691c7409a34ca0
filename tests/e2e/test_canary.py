"""Canary rollouts under load: a healthy candidate is promoted step by step with no failed request; a
candidate with errors, one much slower and one that always answers the same class are rolled back at the
first step, fast, with failures confined to the candidate's share."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cortex_flows.flows.canary import canary_rollout
from cortex_flows.flows.deploy import deploy
from tests.helpers import BackgroundLoad, cli

HANDLER = """\
import random
import time


class Handler:
    def __init__(self, config):
        self.mode = config.get("mode", "good")

    def handle_post(self, payload):
        if self.mode == "errors" and random.random() < 0.3:
            raise RuntimeError("candidate bug")
        time.sleep(0.025 if self.mode == "slow" else 0.005)
        label = "setosa" if self.mode == "constant" else random.choice(["setosa", "versicolor", "virginica"])
        return {"prediction": label}
"""
CANARY_INTERVAL = 10
CANARY = {"steps": [30, 100], "bake": "10s", "analysis_interval": f"{CANARY_INTERVAL}s", "min_samples": 50}


def write_project(root: Path, mode: str, tag: str = "v2") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.py").write_text(HANDLER)
    api = {
        "name": "canary", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"},
        "config": {"mode": mode, "tag": tag}, "pod": {"max_concurrency": 4},
        "autoscaling": {"min_replicas": 2, "max_replicas": 4}, "canary": CANARY,
    }  # fmt: skip
    (root / "cortex.yaml").write_text(yaml.safe_dump([api], sort_keys=False))
    return root


@pytest.fixture
def stable(prefect_api, local_cluster, tmp_path) -> dict[str, Any]:
    project = write_project(tmp_path / "canary", "good", tag="v1")
    url = deploy(path=str(project))["canary"]
    return {"project": project, "url": url, "env": {**local_cluster["env"], "PREFECT_API_URL": prefect_api}}


def test_plan_previews_what_the_rollout_does(stable):
    shown = cli("plan", str(stable["project"]), env=stable["env"])
    assert shown.returncode == 0, shown.stderr
    rows = [line for line in shown.stdout.splitlines() if line.startswith("|") and "%" in line]
    assert [r.split("|")[2].strip() for r in rows[:2]] == ["30%", "100%"], shown.stdout


def test_a_healthy_candidate_is_promoted_with_no_failed_request(stable):
    write_project(stable["project"], "good")
    load = BackgroundLoad(stable["url"], {"x": 1}, connections=4)
    load.wait_for(50)
    state = canary_rollout(path=str(stable["project"]), return_state=True)
    outcomes = load.stop()
    assert state.is_completed(), state.message
    result = state.result()
    assert result["outcome"] == "promoted" and result["revision"] == 2
    assert [row["step"] for row in result["ledger"]] == ["30%", "100%"]
    failures = [o for o in outcomes if o not in ("1", "2")]
    assert failures == [] and "2" in outcomes and outcomes[-20:] == ["2"] * 20
    again = canary_rollout(path=str(stable["project"]))  # as a scheduled run with no new model
    assert (again["outcome"], again["revision"]) == ("up to date", 2)


@pytest.mark.parametrize(("mode", "reason"), [("errors", "error"), ("slow", "p99"), ("constant", "drift")])
def test_a_bad_candidate_is_rolled_back_at_the_first_step(stable, mode, reason):
    write_project(stable["project"], mode)
    load = BackgroundLoad(stable["url"], {"x": 1}, connections=4)
    load.wait_for(50)
    started = time.monotonic()
    state = canary_rollout(path=str(stable["project"]), return_state=True)
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    outcomes = load.stop()
    assert state.is_failed() and "rolled back" in state.message
    assert reason in state.message.lower(), state.message
    failures = [o for o in outcomes if o not in ("1", "2")]
    # The stable never fails, so every failure is the candidate's own 500, within its 30% share.
    assert set(failures) <= {"HTTP 500"} and len(failures) <= 0.3 * len(outcomes)
    assert all(o == "1" for o in outcomes[-20:])  # all traffic back on stable
    to_stable = float(state.message.split("all traffic on stable ")[1].split("s after")[0])
    print(f"\n{mode}: rolled back, 100% stable {to_stable:.1f}s after the step began; canary took {elapsed:.1f}s; "
          f"{len(failures)} of {len(outcomes)} requests failed")  # fmt: skip
    assert to_stable <= CANARY_INTERVAL + 2 + 3  # one analysis interval + 2 s, plus slack for 2 shared cores


def test_canary_and_plan_refuse_a_bad_spec_with_exit_2(tmp_path):
    project = write_project(tmp_path / "bad", "good")
    spec = yaml.safe_load((project / "cortex.yaml").read_text())
    spec[0]["canary"]["steps"] = [50, 20]
    (project / "cortex.yaml").write_text(yaml.safe_dump(spec))
    for verb in ("canary", "plan"):
        done = cli(verb, str(project))
        assert done.returncode == 2, done.stderr
        assert "canary.steps" in done.stderr
