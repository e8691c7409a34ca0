"""The canary's flow process SIGKILLed mid-rollout: clients see no error, the lock dies with the process,
re-running the canary says exactly what is left over and how to finish, and `rollback` then a new canary
converge."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from cortex_flows.backends.local.client import LocalBackend
from cortex_flows.flows.canary import canary_rollout
from cortex_flows.flows.deploy import deploy
from cortex_flows.flows.rollback import rollback
from tests.e2e.test_canary import write_project
from tests.helpers import BackgroundLoad, cli, wait_for

# Observable points of a canary with steps [30, 100]: the candidate exists, then takes 30%.
KILL_POINTS = [
    ("the candidate exists", lambda weights: len(weights) == 2),
    ("30% on the candidate", lambda weights: sorted(weights.values()) == [30, 70]),
]


def _weights(home: Any) -> dict[int, int]:
    status = asyncio.run(LocalBackend(home, autostart=False).status("canary"))
    return {v.revision: v.weight for v in status.versions} if status else {}


@pytest.mark.parametrize(("point", "reached"), KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_a_killed_canary_leaves_a_clear_way_back(prefect_api, local_cluster, tmp_path, point, reached):
    env = {**local_cluster["env"], "PREFECT_API_URL": prefect_api}
    project = write_project(tmp_path / "canary", "good", tag="v1")
    url = deploy(path=str(project))["canary"]
    load = BackgroundLoad(url, {"x": 1}, connections=2)
    write_project(project, "good", tag="v2")
    proc = subprocess.Popen([sys.executable, "-m", "cortex_flows.cli", "canary", str(project)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    wait_for(lambda: reached(_weights(local_cluster["home"])), 90, interval=0.02, what=point)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    again = cli("canary", str(project), env=env)
    assert again.returncode == 1, again.stdout + again.stderr
    print(f"\nafter a kill at '{point}':", again.stderr.strip().splitlines()[-1])
    assert "r2 is left over from an interrupted rollout" in again.stderr, again.stderr
    assert "`cortex-flows rollback canary --to 1`" in again.stderr, again.stderr

    back = rollback(name="canary", to=1, return_state=True)
    assert back.is_completed(), back.message
    assert list(_weights(local_cluster["home"]).values()) == [100]
    result = canary_rollout(path=str(project))
    assert result["outcome"] == "promoted"
    outcomes = load.stop()
    assert [o for o in outcomes if not o.isdigit()] == [] and len(outcomes) > 100
