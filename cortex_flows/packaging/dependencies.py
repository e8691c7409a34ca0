"""A project's pip requirements, installed once into a cached environment shared by replicas and versions.

An environment is keyed by the requirements text, the bytes of project files it names (local wheels,
nested `-r` files) and the interpreter, so a new version with unchanged requirements reuses the install.
It is a venv whose interpreter also sees this runtime's packages (one `.pth` line): pip skips what is
already satisfied and installs only what is missing or pinned differently, never touching the runtime's
own environment. Replicas put the venv's site-packages first on `sys.path`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import site
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

COMPLETE_MARKER = ".cortex-flows-complete"
PIP_TIMEOUT_SECONDS = 1800.0
_ERROR_PREFIX = "ERROR:"


class DependencyError(Exception):
    """pip could not install the requirements; the message is pip's own error lines."""


@dataclass(frozen=True)
class Environment:
    """An installed environment: where its packages are and whether this call installed them."""

    key: str
    site_packages: Path
    installed: bool


def environment_key(project_dir: Path, requirements: Path) -> str:
    """Hash of what decides an install's result: the requirements, the files they name, the interpreter."""
    digest = hashlib.sha256()
    digest.update(f"{sys.implementation.cache_tag}\n{sys.prefix}\n".encode())
    digest.update(requirements.read_bytes())
    for line in requirements.read_text(errors="replace").splitlines():
        for token in line.split("#", 1)[0].split():
            candidate = project_dir / token
            if candidate.is_file() and candidate.resolve().is_relative_to(project_dir.resolve()):
                digest.update(f"\n{token}\n".encode())
                digest.update(candidate.read_bytes())
    return digest.hexdigest()[:32]


def ensure_environment(project_dir: Path, requirements: str | None, envs_dir: Path) -> Environment | None:
    """The environment for the project's requirements file, installing it unless it exists; None when
    the project has no such file. Concurrent callers (replicas starting together) install it once."""
    if requirements is None or not (project_dir / requirements).is_file():
        return None
    req = project_dir / requirements
    key = environment_key(project_dir, req)
    env_dir = envs_dir / key
    site_packages = _site_packages(env_dir)
    if (env_dir / COMPLETE_MARKER).exists():
        return Environment(key, site_packages, installed=False)
    envs_dir.mkdir(parents=True, exist_ok=True)
    with open(envs_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (env_dir / COMPLETE_MARKER).exists():
            return Environment(key, site_packages, installed=False)
        shutil.rmtree(env_dir, ignore_errors=True)  # a partial install from an interrupted attempt
        venv.EnvBuilder(symlinks=True, with_pip=False).create(env_dir)
        (site_packages / "_cortex_flows_runtime.pth").write_text(
            "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages())
        )
        _pip_install(env_dir, req, project_dir, envs_dir / f"{key}.pip.log")
        (env_dir / COMPLETE_MARKER).touch()
    return Environment(key, site_packages, installed=True)


def activate(environment: Environment) -> None:
    """Put the environment's packages ahead of the runtime's (modules already imported stay as they are)."""
    before = list(sys.path)
    site.addsitedir(str(environment.site_packages))
    added = [path for path in sys.path if path not in before]
    sys.path[:] = added + before


def _site_packages(env_dir: Path) -> Path:
    return env_dir / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _pip_install(env_dir: Path, requirements: Path, project_dir: Path, log_file: Path) -> None:
    """Run pip in the project directory (requirements may name files relative to it, as in Cortex)."""
    command = [
        str(env_dir / "bin" / "python"), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
        "--progress-bar", "off", "-r", str(requirements),
    ]  # fmt: skip
    environ = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    try:
        done = subprocess.run(
            command, cwd=project_dir, env=environ, capture_output=True, text=True, timeout=PIP_TIMEOUT_SECONDS,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(env_dir, ignore_errors=True)
        raise DependencyError(f"pip install -r {requirements.name} took over {exc.timeout:.0f}s") from None
    log_file.write_text(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        shutil.rmtree(env_dir, ignore_errors=True)
        raise DependencyError(pip_error(done.stderr, done.stdout))


def pip_error(stderr: str, stdout: str = "") -> str:
    """pip's own error message: its `ERROR:` lines, else the last lines it printed."""
    errors = [line for line in stderr.splitlines() if line.startswith(_ERROR_PREFIX)]
    if errors:
        return "\n".join(errors)
    tail = [line for line in (stderr or stdout).splitlines() if line.strip()][-10:]
    return "\n".join(tail) or "pip failed without printing a reason"
