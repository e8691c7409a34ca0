"""The `CortexCluster` block: where a flow deploys APIs and which credential blocks it may load.

It holds no secrets itself, only the *names* of an `AwsCredentials` block (an S3 package store, EKS) and a
`KubernetesCredentials` block, which tasks load by name when they need them, so no credential ever
travels as a flow parameter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from prefect.blocks.core import Block
from pydantic import BeforeValidator, Field

from cortex_flows.backends.base import Backend
from cortex_flows.backends.local.home import LocalHome
from cortex_flows.spec.quantities import cpu_millicores, memory_bytes


def _cpu_quantity(value: object) -> object:
    """A CPU quantity as in cortex.yaml ("2", "1900m", 2); validated here, parsed where it is used."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        cpu_millicores(value)  # raises ValueError naming the text
    return value


def _memory_quantity(value: object) -> object:
    """A memory quantity as in cortex.yaml ("8Gi", "750Mi", bytes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        memory_bytes(value)
    return value


CpuQuantity = Annotated[str, BeforeValidator(_cpu_quantity)]
MemoryQuantity = Annotated[str, BeforeValidator(_memory_quantity)]


class CortexCluster(Block):
    """Where cortex-flows runs APIs, and the credential blocks its tasks may load by name.

    Attributes:
        backend: "local": one machine, run by the cortex-flows agent; "kubernetes": a cluster's API
            (the `kubernetes_*`, `eks_cluster`, `image`, `gateway_*`, `autoscaler` and `metrics` fields).
        home: State directory of the local agent.
        gateway_port: Port of the local gateway.
        package_store: Where packages are stored: a local directory or `s3://bucket/prefix`.
        aws_credentials: Name of the `AwsCredentials` block used for an S3 store and EC2 Auto Scaling.
        node_group: Name of the EC2 Auto Scaling group whose nodes run the APIs (`setup-autoscaling`
            sizes it); the `instance_*` fields describe one of its nodes.
        max_nodes: The most nodes `setup-autoscaling` may ask for; a larger need is an error.
        spot: Whether the group mixes in spot instances (`on_demand_*`, `spot_instance_types`).

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

    backend: Literal["local", "kubernetes"] = Field(
        default="local", description="Where APIs run: the local agent, or a Kubernetes cluster."
    )
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

    # The AWS node group that setup-autoscaling sizes (all optional: without node_group it sizes nothing).
    node_group: str | None = Field(
        default=None, description="Name of the EC2 Auto Scaling group of the cluster's nodes."
    )
    instance_type: str | None = Field(
        default=None, description="Instance type of the node group, e.g. m5.large."
    )
    instance_cpu: CpuQuantity | None = Field(
        default=None, description="CPU of one instance, e.g. 2 or 1900m (before the per-node reserve)."
    )
    instance_memory: MemoryQuantity | None = Field(
        default=None, description="Memory of one instance, e.g. 8Gi (before the per-node reserve)."
    )
    instance_gpu: int = Field(default=0, ge=0, description="GPUs of one instance.")
    node_reserved_cpu: CpuQuantity = Field(
        default="250m", description="CPU each node keeps from pods (kubelet, daemons, aws-node, kube-proxy)."
    )
    node_reserved_memory: MemoryQuantity = Field(
        default="750Mi", description="Memory each node keeps from pods (kubelet, eviction threshold, daemons)."
    )
    max_nodes: int | None = Field(
        default=None, ge=0, description="Most nodes setup-autoscaling may ask for; a larger need is an error."
    )
    spot: bool = Field(
        default=False, description="Mix spot instances into the group (a mixed-instances policy)."
    )
    spot_instance_types: list[str] = Field(
        default_factory=list, description="More instance types spot may use (at least as large as instance_type)."
    )
    on_demand_base_capacity: int = Field(
        default=0, ge=0, description="With spot: the first N instances are on-demand."
    )
    on_demand_percentage_above_base: int = Field(
        default=0, ge=0, le=100, description="With spot: percent of the instances above the base that are on-demand."
    )
    on_demand_price: float | None = Field(
        default=None, ge=0, description="Hourly on-demand price of instance_type in USD, for the cost estimate."
    )
    spot_price: float | None = Field(
        default=None, ge=0, description="Expected hourly spot price of instance_type in USD, for the cost estimate."
    )

    # Kubernetes (backend "kubernetes"): the cluster, the serving image, the gateway, autoscaling, metrics.
    namespace: str = Field(default="default", description="Kubernetes namespace of the APIs.")
    kubernetes_credentials: str | None = Field(
        default=None,
        description="Name of the KubernetesCredentials block (default: in-cluster config, else ~/.kube/config).",
    )
    eks_cluster: str | None = Field(
        default=None, description="EKS cluster name: its endpoint and a token come from the AwsCredentials block."
    )
    image: str = Field(default="cortex-flows-serving:latest", description="Serving image (see the Dockerfile).")
    gateway_name: str = Field(default="cortex-gateway", description="Gateway API Gateway the routes attach to.")
    gateway_namespace: str | None = Field(default=None, description="Namespace of that Gateway (default: namespace).")
    gateway_url: str = Field(default="http://localhost", description="Base URL clients reach the Gateway at.")
    autoscaler: Literal["keda", "hpa"] = Field(
        default="keda", description="Per-version autoscaling object: a KEDA ScaledObject, or an HPA on a custom metric."
    )
    metrics: Literal["prometheus", "cloudwatch"] = Field(
        default="prometheus", description="Where canary analysis reads per-version metrics."
    )
    prometheus_url: str = Field(
        default="http://prometheus-server.monitoring:80", description="Prometheus HTTP API (KEDA and canary analysis)."
    )

    def local_home(self) -> LocalHome:
        return LocalHome(Path(self.home).expanduser().resolve()) if self.home else LocalHome.default()

    def store_uri(self) -> str:
        return self.package_store or str(self.local_home().packages)

    def get_backend(self) -> Backend:
        """The Backend this cluster names (credentials are loaded when it first talks to the cluster)."""
        if self.backend == "kubernetes":
            from cortex_flows.kubernetes_access import kubernetes_backend

            return kubernetes_backend(self)
        from cortex_flows.backends.local.client import LocalBackend

        return LocalBackend(self.local_home(), self.gateway_port)
