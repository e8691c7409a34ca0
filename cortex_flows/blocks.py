"""The `CortexCluster` block: where a flow deploys APIs and which credential blocks it may load.

It holds no secrets itself, only the *name* of an `AwsCredentials` block (for an S3 package store), which
tasks load by name when they need it, so no credential ever travels as a flow parameter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field

from cortex_flows.backends.base import Backend
from cortex_flows.backends.local.home import LocalHome


class CortexCluster(Block):
    """Where cortex-flows runs APIs, and the credential blocks its tasks may load by name.

    Attributes:
        backend: "local": one machine, run by the cortex-flows agent.
        home: State directory of the local agent.
        gateway_port: Port of the local gateway.
        package_store: Where packages are stored: a local directory or `s3://bucket/prefix`.
        aws_credentials: Name of the `AwsCredentials` block used for an S3 store.

    Example:
        Deploy to the cluster saved as "prod":
        ```python
        from cortex_flows.blocks import CortexCluster

        cluster = CortexCluster.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Cortex Cluster"
    _block_type_slug = "cortex-cluster"
    _description = "Where cortex-flows deploys model APIs and which credential blocks it uses."

    backend: Literal["local"] = Field(default="local", description="Where APIs run: the local agent.")
    home: str | None = Field(
        default=None, description="State directory of the local agent (default: $CORTEX_FLOWS_HOME or ~/.cortex-flows)."
    )
    gateway_port: int | None = Field(
        default=None, description="Port of the local gateway (default: $CORTEX_FLOWS_GATEWAY_PORT or 8888)."
    )
    package_store: str | None = Field(
        default=None, description="Package store: a local directory or s3://bucket/prefix (default: the home's packages/)."
    )
    aws_credentials: str | None = Field(
        default=None, description="Name of the AwsCredentials block for S3 and other AWS services."
    )

    def local_home(self) -> LocalHome:
        return LocalHome(Path(self.home).expanduser().resolve()) if self.home else LocalHome.default()

    def store_uri(self) -> str:
        return self.package_store or str(self.local_home().packages)

    def get_backend(self) -> Backend:
        """The Backend this cluster names (no credentials are loaded here)."""
        from cortex_flows.backends.local.client import LocalBackend

        return LocalBackend(self.local_home(), self.gateway_port)
