"""Dependency environments with real pip runs (offline: wheels built in the test, no index)."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cortex_flows.packaging.dependencies import (
    DependencyError,
    ensure_environment,
    environment_key,
    pip_error,
)
from tests.helpers import make_wheel

OFFLINE = "--no-index\n--find-links wheels\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    make_wheel(root / "wheels", "cfdeps", "1.0", "VALUE = 1\n")
    (root / "requirements.txt").write_text(OFFLINE + "cfdeps==1.0\nnumpy\n")
    return root


def test_installs_once_then_reuses_and_leaves_runtime_packages_to_the_runtime(project: Path, tmp_path: Path):
    envs = tmp_path / "envs"
    first = ensure_environment(project, "requirements.txt", envs)
    second = ensure_environment(project, "requirements.txt", envs)

    assert first is not None and first.installed
    assert second == first.__class__(first.key, first.site_packages, installed=False)
    assert (first.site_packages / "cfdeps.py").is_file()
    assert not (first.site_packages / "numpy").exists()  # already satisfied by the runtime: not copied
    probe = "import cfdeps, numpy; print(cfdeps.__file__); print(numpy.__file__)"
    paths = subprocess.run(
        [str(envs / first.key / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert paths[0].startswith(str(first.site_packages)) and not paths[1].startswith(str(envs))


def test_concurrent_callers_share_one_install(project: Path, tmp_path: Path):
    envs = tmp_path / "envs"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ensure_environment(project, "requirements.txt", envs), range(4)))
    assert [r.installed for r in results if r].count(True) == 1
    assert len({r.key for r in results if r}) == 1


def test_a_failed_install_raises_pips_message_and_leaves_nothing_half_made(project: Path, tmp_path: Path):
    envs = tmp_path / "envs"
    (project / "requirements.txt").write_text(OFFLINE + "cfdeps==9.9\n")
    with pytest.raises(DependencyError) as failed:
        ensure_environment(project, "requirements.txt", envs)
    assert str(failed.value).splitlines() == [
        "ERROR: Could not find a version that satisfies the requirement cfdeps==9.9 (from versions: 1.0)",
        "ERROR: No matching distribution found for cfdeps==9.9",
    ]
    assert [p.name for p in envs.iterdir() if p.is_dir()] == []
    # Not remembered as failed: once the requirement can be met, the next call installs.
    make_wheel(project / "wheels", "cfdeps", "9.9", "VALUE = 99\n")
    assert ensure_environment(project, "requirements.txt", envs).installed


def test_the_key_follows_the_requirements_and_the_files_they_name(project: Path):
    requirements = project / "requirements.txt"
    key = environment_key(project, requirements)
    (project / "handler.py").write_text("changed code, same requirements\n")
    assert environment_key(project, requirements) == key
    (project / "requirements.txt").write_text(OFFLINE + "./wheels/cfdeps-1.0-py3-none-any.whl\n")
    by_path = environment_key(project, requirements)
    assert by_path != key
    make_wheel(project / "wheels", "cfdeps", "1.0", "VALUE = 2\n")  # same name, new bytes
    assert environment_key(project, requirements) != by_path


def test_no_requirements_file_means_no_environment(tmp_path: Path):
    assert ensure_environment(tmp_path, "requirements.txt", tmp_path / "envs") is None
    assert ensure_environment(tmp_path, None, tmp_path / "envs") is None
    assert not (tmp_path / "envs").exists()


@pytest.mark.parametrize(
    ("stderr", "stdout", "expected"),
    [
        ("Looking in links: x\nERROR: one\nmore\nERROR: two\n", "", "ERROR: one\nERROR: two"),
        ("", "a\n\nb\n", "a\nb"),
        ("", "", "pip failed without printing a reason"),
    ],
)
def test_pip_error_keeps_pips_own_lines(stderr: str, stdout: str, expected: str):
    assert pip_error(stderr, stdout) == expected


