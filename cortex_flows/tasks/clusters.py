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
    """How replicas reach S3: the endpoint (not secret) and the keys, which travel only as process
    environment through the backend's secret channel."""
    creds = _credentials(cluster)
    if creds is None:
        return None, None
    params = creds.aws_client_parameters
    env = {}
    if creds.aws_access_key_id:
        env["AWS_ACCESS_KEY_ID"] = creds.aws_access_key_id
    if creds.aws_secret_access_key:
        env["AWS_SECRET_ACCESS_KEY"] = creds.aws_secret_access_key.get_secret_value()
    if creds.aws_session_token:
        env["AWS_SESSION_TOKEN"] = creds.aws_session_token
    access = S3Access(endpoint_url=params.endpoint_url if params else None, region=creds.region_name)
    return access, env
