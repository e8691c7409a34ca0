"""Reach an EKS cluster's API server with the IAM identity of a boto3 session, as `aws eks get-token` does.

EKS authenticates a bearer token that is a presigned STS `GetCallerIdentity` URL: the API server's
authenticator GETs it (with the `x-k8s-aws-id` header naming the cluster, which the signature covers, so
a token for one cluster is useless on another) and maps the caller's ARN to Kubernetes groups. Signing is
local (no network call), and EKS accepts a token for 15 minutes after its X-Amz-Date whatever its
X-Amz-Expires says, so the Configuration built here renews it before then on the next request.

Sessions come from an AwsCredentials block (`get_boto3_session()`, with the block's `endpoint_url` and
`region_name`) or from boto3's default chain, as in `cortex_flows.aws.clients`. Neither the token nor the
credentials are ever logged or put in an exception message.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import boto3
from kubernetes_asyncio.client import Configuration

from cortex_flows.aws.clients import CLIENT_CONFIG

log = logging.getLogger(__name__)

TOKEN_PREFIX = "k8s-aws-v1."
CLUSTER_ID_HEADER = "x-k8s-aws-id"
URL_EXPIRES_SECONDS = 60  # what aws-cli signs; EKS itself honours the token for 15 min after signing
TOKEN_RENEW_SECONDS = 14 * 60  # aws-cli's expirationTimestamp: client-go renews a minute before EKS stops
API_KEY = "BearerToken"  # the key kubernetes_asyncio's auth_settings reads for the Authorization header

_ca_files: dict[bytes, str] = {}
_ca_lock = threading.Lock()


class ClusterNotFound(LookupError):
    """No EKS cluster of that name in the session's account and region."""


class ClusterNotReady(RuntimeError):
    """The cluster exists but has no API endpoint yet (it is still being created, or is failing)."""


def eks_token(
    session: boto3.session.Session,
    cluster_name: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> str:
    """A bearer token for the cluster: `k8s-aws-v1.` + unpadded base64url of a presigned STS
    GetCallerIdentity GET URL (60 s) with `x-k8s-aws-id: <cluster_name>` among its signed headers."""
    sts = session.client(
        "sts", region_name=_region(session, region), endpoint_url=endpoint_url, config=CLIENT_CONFIG
    )
    # The header is not an STS parameter: take it out before validation, put it in before signing.
    sts.meta.events.register("provide-client-params.sts.GetCallerIdentity", _take_cluster_id)
    sts.meta.events.register("before-sign.sts.GetCallerIdentity", _sign_cluster_id)
    url = sts.generate_presigned_url(
        "get_caller_identity",
        Params={CLUSTER_ID_HEADER: cluster_name},
        ExpiresIn=URL_EXPIRES_SECONDS,
        HttpMethod="GET",
    )
    return TOKEN_PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


def eks_configuration(
    session: boto3.session.Session,
    cluster_name: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> Configuration:
    """A kubernetes_asyncio Configuration for the cluster: its endpoint, its CA (in a private file, as the
    client's SSL context wants a path) and a bearer token that a refresh hook renews before it expires.

    Raises ClusterNotFound (naming the cluster and region) when there is no such cluster, ClusterNotReady
    when it has no endpoint yet; other AWS errors propagate as botocore raises them.
    """
    region = _region(session, region)
    eks = session.client("eks", region_name=region, endpoint_url=endpoint_url, config=CLIENT_CONFIG)
    try:
        cluster = eks.describe_cluster(name=cluster_name)["cluster"]
    except eks.exceptions.ResourceNotFoundException as exc:
        raise ClusterNotFound(
            f"EKS cluster {cluster_name!r} not found in region {region}: check the CortexCluster block's "
            "eks_cluster, or the region and account of its AwsCredentials block"
        ) from exc
    endpoint = cluster.get("endpoint")
    ca_data = (cluster.get("certificateAuthority") or {}).get("data")
    if not endpoint or not ca_data:
        raise ClusterNotReady(
            f"EKS cluster {cluster_name!r} in region {region} has no API endpoint yet "
            f"(status {cluster.get('status', 'unknown')}): wait until it is ACTIVE"
        )

    token = eks_token(session, cluster_name, endpoint_url=endpoint_url, region=region)
    configuration = Configuration(host=endpoint.rstrip("/"))  # the client appends "/api/...": no "//"
    configuration.ssl_ca_cert = _ca_file(base64.b64decode(ca_data))
    configuration.api_key_prefix = {API_KEY: "Bearer"}
    configuration.api_key = {API_KEY: token}
    configuration.refresh_api_key_hook = _renewer(session, cluster_name, endpoint_url, region, token)
    log.info("EKS cluster %s (%s): API server %s", cluster_name, region, configuration.host)
    return configuration


def _renewer(
    session: boto3.session.Session, cluster_name: str, endpoint_url: str | None, region: str, token: str
) -> Callable[[Configuration], Awaitable[None]]:
    """kubernetes_asyncio calls the hook before every request: re-sign once the token is old, in a thread
    (refreshing assumed-role credentials may call STS). A closure, so deep copies of the Configuration
    share it, and each copy picks up the current token on its next request."""
    issued = time.monotonic()

    async def renew(configuration: Configuration) -> None:
        nonlocal token, issued
        if time.monotonic() - issued >= TOKEN_RENEW_SECONDS:
            token = await asyncio.to_thread(
                eks_token, session, cluster_name, endpoint_url=endpoint_url, region=region
            )
            issued = time.monotonic()
            log.debug("renewed the token for EKS cluster %s", cluster_name)
        if configuration.api_key.get(API_KEY) != token:
            configuration.api_key[API_KEY] = token

    return renew


def _region(session: boto3.session.Session, region: str | None) -> str:
    region = region or session.region_name
    if not region:
        raise ValueError("no AWS region: set region_name on the AwsCredentials block (or AWS_DEFAULT_REGION)")
    return region


def _take_cluster_id(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    if CLUSTER_ID_HEADER in params:
        context[CLUSTER_ID_HEADER] = params.pop(CLUSTER_ID_HEADER)


def _sign_cluster_id(request: Any, **_: Any) -> None:
    if CLUSTER_ID_HEADER in request.context:
        request.headers[CLUSTER_ID_HEADER] = request.context[CLUSTER_ID_HEADER]


def _ca_file(ca: bytes) -> str:
    """A 0600 temp file holding the CA, one per distinct CA for the process, removed at exit."""
    with _ca_lock:
        path = _ca_files.get(ca)
        if path is None or not os.path.exists(path):
            fd, path = tempfile.mkstemp(prefix="cortex-flows-eks-ca-", suffix=".crt")  # mode 0600
            with os.fdopen(fd, "wb") as f:
                f.write(ca)
            if not _ca_files:
                atexit.register(_remove_ca_files)
            _ca_files[ca] = path
        return path


def _remove_ca_files() -> None:
    with _ca_lock:
        for path in _ca_files.values():
            with contextlib.suppress(OSError):
                os.remove(path)
        _ca_files.clear()
