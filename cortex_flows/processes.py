"""Process liveness, shared by the agent's client (is the agent up?) and replicas (is my parent up?)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs. An exited child of ours is reaped here; any zombie counts as gone."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: the kill probe is all we have
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
