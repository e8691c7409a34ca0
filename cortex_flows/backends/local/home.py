"""The local backend's state directory: where the agent keeps desired state, logs, packages and its token.

`CORTEX_FLOWS_HOME` (default `~/.cortex-flows`) selects it, so several agents with different homes and
gateway ports can run side by side.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

DEFAULT_GATEWAY_PORT = 8888
HOME_ENV = "CORTEX_FLOWS_HOME"
PORT_ENV = "CORTEX_FLOWS_GATEWAY_PORT"


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cortex-flows").expanduser().resolve()


def default_gateway_port() -> int:
    return int(os.environ.get(PORT_ENV) or DEFAULT_GATEWAY_PORT)


def write_private(path: Path, text: str) -> None:
    """Write a file only the user can read, atomically (never a moment with wider permissions)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class AgentInfo:
    """What a running agent publishes about itself in `agent.json`."""

    pid: int
    control_port: int
    gateway_port: int

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"


@dataclass(frozen=True)
class LocalHome:
    """Paths inside one agent's home."""

    root: Path

    @classmethod
    def default(cls) -> LocalHome:
        return cls(default_home())

    def ensure(self) -> LocalHome:
        for d in (self.root, self.logs, self.packages, self.cache, self.replicas, self.secrets, self.locks):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        os.chmod(self.secrets, 0o700)
        return self

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def info_file(self) -> Path:
        return self.root / "agent.json"

    @property
    def token_file(self) -> Path:
        return self.root / "agent.token"

    @property
    def agent_log(self) -> Path:
        return self.root / "agent.log"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def packages(self) -> Path:
        return self.root / "packages"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def replicas(self) -> Path:
        return self.root / "replicas"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def locks(self) -> Path:
        return self.root / "locks"  # one per API, held while a flow changes it

    def token(self, create: bool = False) -> str | None:
        """The control API's bearer token; the agent creates it (mode 0600) at start."""
        if self.token_file.exists():
            return self.token_file.read_text().strip()
        if not create:
            return None
        token = secrets.token_urlsafe(32)
        write_private(self.token_file, token)
        return token

    def read_info(self) -> AgentInfo | None:
        try:
            data = json.loads(self.info_file.read_text())
            return AgentInfo(int(data["pid"]), int(data["control_port"]), int(data["gateway_port"]))
        except (OSError, ValueError, KeyError):
            return None

    def write_info(self, info: AgentInfo) -> None:
        write_private(
            self.info_file,
            json.dumps({"pid": info.pid, "control_port": info.control_port, "gateway_port": info.gateway_port}),
        )
