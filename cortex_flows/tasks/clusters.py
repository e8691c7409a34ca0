"""Blocks loaded by name inside tasks: the cluster, and the AWS credentials it names."""

from __future__ import annotations

from botocore.client import BaseClient
from prefect_aws import AwsCredentials

from cortex_flows.blocks import CortexCluster
from cortex_flows.serving.config import S3Access


def load_cluster(name: str | None) -> CortexCluster:
    """The named CortexCluster block, or the local default (no Prefect API round trip needed)."""
    return CortexCluster() if name is None else CortexCluster.load(name, _sync=True)


def _credentials(cluster: CortexCluster) -> AwsCredentials | None:
    if cluster.aws_credentials is None:
        return None
    return AwsCredentials.load(cluster.aws_credentials, _sync=True)


def s3_client(cluster: CortexCluster) -> BaseClient:
    creds = _credentials(cluster)
    if creds is None:
        import boto3

        return boto3.session.Session().client("s3")
    return creds.get_client("s3")


def replica_aws_access(cluster: CortexCluster) -> tuple[S3Access | None, dict[str, str] | None]:
    """How replicas reach AWS: the S3 endpoint for our own downloads, and the environment boto3 reads,
    so user code that builds its own clients works as it did inside Cortex. The environment travels
    only through the backend's secret channel."""
    creds = _credentials(cluster)
    if creds is None:
        return None, None
    endpoint_url = creds.aws_client_parameters.endpoint_url if creds.aws_client_parameters else None
    secret_key = creds.aws_secret_access_key.get_secret_value() if creds.aws_secret_access_key else None
    env = {
        name: value
        for name, value in (
            ("AWS_ACCESS_KEY_ID", creds.aws_access_key_id),
            ("AWS_SECRET_ACCESS_KEY", secret_key),
            ("AWS_SESSION_TOKEN", creds.aws_session_token),
            ("AWS_DEFAULT_REGION", creds.region_name),
            ("AWS_REGION", creds.region_name),
            ("AWS_ENDPOINT_URL", endpoint_url),
        )
        if value
    }
    return S3Access(endpoint_url=endpoint_url, region=creds.region_name), env
