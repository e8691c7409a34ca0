"""Build a `KubernetesBackend` from a `CortexCluster` block: how to reach the cluster and its metrics.

It sits beside `blocks.py`, above the backends, because it loads Prefect blocks (KubernetesCredentials,
AwsCredentials) by name; the backend below only receives a `configure` callable. Credentials are loaded
when the backend first talks to the cluster (inside a task), and kept for a few minutes: an EKS token
lives 15 minutes, and loading a block costs a Prefect API call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import Configuration

from cortex_flows.backends.base import VersionMetrics
from cortex_flows.backends.kubernetes.backend import KubernetesBackend, MetricsReader
from cortex_flows.backends.kubernetes.manifests import KubeTarget

if TYPE_CHECKING:
    from cortex_flows.blocks import CortexCluster

CONFIG_TTL_SECONDS = 300.0


def kubernetes_backend(cluster: CortexCluster) -> KubernetesBackend:
    target = KubeTarget(
        namespace=cluster.namespace, image=cluster.image, gateway=cluster.gateway_name,
        gateway_namespace=cluster.gateway_namespace, autoscaler=cluster.autoscaler,
        prometheus_url=cluster.prometheus_url,
    )  # fmt: skip
    return KubernetesBackend(target, _configurer(cluster), cluster.gateway_url, _metrics(cluster))


def _configurer(cluster: CortexCluster) -> Callable[[], Awaitable[Configuration]]:
    cached: list[tuple[float, Configuration]] = []

    async def configure() -> Configuration:
        if cached and time.monotonic() - cached[0][0] < CONFIG_TTL_SECONDS:
            return cached[0][1]
        configuration = await _load(cluster)
        cached[:] = [(time.monotonic(), configuration)]
        return configuration

    return configure


async def _load(cluster: CortexCluster) -> Configuration:
    """EKS (endpoint and token from the AwsCredentials block), a KubernetesCredentials block's kubeconfig,
    or, with neither, the pod's in-cluster account, else ~/.kube/config."""
    configuration = Configuration()
    if cluster.eks_cluster:
        from cortex_flows.aws.eks import eks_configuration

        session, endpoint, region = await _aws(cluster)
        return await asyncio.to_thread(
            eks_configuration, session, cluster.eks_cluster, endpoint_url=endpoint, region=region
        )
    if cluster.kubernetes_credentials:
        from prefect_kubernetes.credentials import KubernetesCredentials

        creds = await KubernetesCredentials.aload(cluster.kubernetes_credentials)
        if creds.cluster_config is not None:
            await kube_config.load_kube_config_from_dict(
                config_dict=creds.cluster_config.config, context=creds.cluster_config.context_name,
                client_configuration=configuration,
            )  # fmt: skip
            return configuration
    try:
        kube_config.load_incluster_config(client_configuration=configuration)
    except kube_config.ConfigException:
        await kube_config.load_kube_config(client_configuration=configuration)
    return configuration


async def _aws(cluster: CortexCluster) -> tuple[object, str | None, str | None]:
    """A boto3 session from the cluster's AwsCredentials block (or the default chain)."""
    import boto3

    if not cluster.aws_credentials:
        return boto3.session.Session(), None, None
    from prefect_aws import AwsCredentials

    creds = await AwsCredentials.aload(cluster.aws_credentials)
    params = creds.aws_client_parameters
    return creds.get_boto3_session(), params.endpoint_url if params else None, creds.region_name


def _metrics(cluster: CortexCluster) -> MetricsReader:
    """Read lazily: only canary analysis needs a metrics source."""
    if cluster.metrics == "cloudwatch":

        async def from_cloudwatch(api: str, revision: int, started: datetime) -> VersionMetrics:
            from cortex_flows.backends.kubernetes.metrics import cloudwatch_version_metrics

            session, endpoint, region = await _aws(cluster)
            client = session.client("cloudwatch", endpoint_url=endpoint, region_name=region)  # type: ignore[attr-defined]
            return await asyncio.to_thread(
                cloudwatch_version_metrics, client, api, revision, namespace=cluster.namespace,
                cluster=cluster.eks_cluster or "", started=started, now=datetime.now(UTC),
            )  # fmt: skip

        return from_cloudwatch

    async def from_prometheus(api: str, revision: int, started: datetime) -> VersionMetrics:
        import httpx

        from cortex_flows.backends.kubernetes.metrics import prometheus_version_metrics

        async with httpx.AsyncClient(timeout=30) as client:
            return await prometheus_version_metrics(
                client, cluster.prometheus_url, api, revision, namespace=cluster.namespace, started=started
            )

    return from_prometheus
