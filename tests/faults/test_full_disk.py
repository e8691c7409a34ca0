"""A full disk under the agent's state directory (a small tmpfs): a deploy fails with a clear error and
changes nothing, the serving version keeps answering every request, and once space is freed the same
deploy converges; the state survives an agent restart."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cortex_flows.backends.local.client import LocalBackend, stop_agent
from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.deploy import deploy
from tests.conftest import running_local_cluster
from tests.helpers import BackgroundLoad, example_project

SIZE = "24m"  # the example's package and state fit; a filler takes the rest


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if made.returncode != 0:  # containers without CAP_SYS_ADMIN cannot mount; everything else still runs
        pytest.skip(f"a full disk needs a tmpfs mount (root with CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Take every free byte of the file system holding `directory` (unbuffered writes, smaller and smaller)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def _set_note(project: Path, note: str) -> None:
    spec = yaml.safe_load((project / "cortex.yaml").read_text())
    spec[0]["config"]["note"] = note
    (project / "cortex.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def test_a_full_state_disk_fails_the_deploy_clearly_and_loses_nothing(prefect_api, tmpfs, tmp_path):
    cluster = f"small-disk-{uuid.uuid4().hex[:6]}"
    CortexCluster(package_store=str(tmp_path / "store")).save(cluster)  # only the agent's home is small
    project = example_project(tmp_path)
    with pytest.MonkeyPatch.context() as patch, running_local_cluster(tmpfs / "home", patch) as local:
        _set_note(project, "v1")
        url = deploy(path=str(project), cluster=cluster)["iris-classifier"]
        load = BackgroundLoad(url, {"features": [5.1, 3.5, 1.4, 0.2]}, connections=2)
        load.wait_for(20)

        filler = _fill(tmpfs)
        _set_note(project, "v2")
        state = deploy(path=str(project), cluster=cluster, return_state=True)
        assert state.is_failed()
        assert f"cannot write {tmpfs}/home/locks/iris-classifier.lock: No space left on device" in state.message

        status = asyncio.run(LocalBackend(local["home"], autostart=False).status("iris-classifier"))
        assert [(v.revision, v.ready, v.weight) for v in status.versions] == [(1, 1, 100)]

        filler.unlink()
        again = deploy(path=str(project), cluster=cluster, return_state=True)
        assert again.is_completed(), again.message
        outcomes = load.stop()
        failures = [o for o in outcomes if o not in ("1", "2")]
        assert failures == [] and outcomes[-5:] == ["2"] * 5, failures[:5]

        stop_agent(local["home"], timeout=20)  # the state on disk is whole: a new agent serves r2
        restarted = asyncio.run(LocalBackend(local["home"]).status("iris-classifier"))
        assert [(v.revision, v.weight) for v in restarted.versions] == [(2, 100)]
