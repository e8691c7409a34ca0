"""The peers' environments: one virtualenv each under bench/.venv-peers, never in the project's own deps.

Each peer gets its own venv, so one peer's pins cannot break another's, and one that fails to install
leaves the others measurable. Peers get the project's exact scikit-learn, so every server unpickles and
runs the same model with the same code. A venv is reinstalled only when its requirements change.

    .venv/bin/python bench/peer_envs.py   # create or refresh them all, print what each has
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from harness import error_line

DIR = Path(__file__).resolve().parent / ".venv-peers"
PACKAGES = {  # env name: (the package whose version is reported, its requirement)
    "bentoml": ("bentoml", "bentoml>=1.4,<2"),
    "kserve": ("kserve", "kserve>=0.21,<0.22"),
    "ray": ("ray", "ray[serve]>=2.60,<3"),
    "chart": ("matplotlib", "matplotlib>=3.11,<4"),  # draws the chart; no server
}
INSTALL_TIMEOUT = 900.0


@dataclass
class PeerEnv:
    name: str
    python: Path | None  # None: not installed, `error` says why
    version: str = ""
    error: str = ""

    def bin(self, script: str) -> str:
        assert self.python is not None
        return str(self.python.parent / script)


def requirements(name: str) -> list[str]:
    model = [f"scikit-learn=={version('scikit-learn')}", f"joblib=={version('joblib')}"]
    return [PACKAGES[name][1], *([] if name == "chart" else model)]


def ensure(name: str) -> PeerEnv:
    """The env `name`, created or reinstalled if its requirements changed; errors are returned, not raised."""
    venv = DIR / name
    python = venv / "bin" / "python"
    stamp, log = venv / ".requirements", venv / "install.log"
    wanted = "\n".join(requirements(name))
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        stamp.unlink(missing_ok=True)
        try:
            if not python.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
            pip = [str(python), "-m", "pip", "install", "--quiet", *requirements(name)]
            with log.open("w") as out:
                done = subprocess.run(pip, check=False, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT)
        except (OSError, subprocess.SubprocessError) as exc:
            return PeerEnv(name, None, error=f"install: {exc}".splitlines()[0])
        if done.returncode:
            return PeerEnv(name, None, error=f"pip install: {error_line(log.read_text(errors='replace'))}")
        stamp.write_text(wanted)
    package = PACKAGES[name][0]
    found = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                           check=False, capture_output=True, text=True)  # fmt: skip
    if found.returncode:
        return PeerEnv(name, None, error=error_line(found.stderr))
    return PeerEnv(name, python, version=found.stdout.strip())


if __name__ == "__main__":
    for env_name in PACKAGES:
        env = ensure(env_name)
        print(f"{env_name:8s} {env.version or 'MISSING: ' + env.error}")
