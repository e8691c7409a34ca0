"""EKS access against moto over HTTP: the Configuration's endpoint, CA and bearer token, the token as
`aws eks get-token` makes it (its SigV4 signature recomputed here), renewal, and errors that name the
cluster without leaking the credentials or the token."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import logging
import os
import stat
import threading
import traceback
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import pytest
from botocore.client import BaseClient

from cortex_flows.aws import eks
from cortex_flows.aws.eks import ClusterNotFound, eks_configuration, eks_token
from tests.conftest import MOTO_REGION

SECRET_KEY = "cortexEksTestSecret/DoNotLeak+0123456789abcdef"
ACCESS_KEY = "AKIACORTEXEKSTEST"
CLUSTER = "models-prod"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # a GET's payload hash (S3 alone presigns UNSIGNED-PAYLOAD)


@pytest.fixture
def aws(aws_env: str) -> tuple[boto3.session.Session, str]:
    """A session from an AwsCredentials block (as the Kubernetes backend loads one) and moto's URL."""
    from prefect_aws import AwsCredentials

    creds = AwsCredentials(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=MOTO_REGION,
        aws_client_parameters={"endpoint_url": aws_env},
    )
    return creds.get_boto3_session(), aws_env


@pytest.fixture
def cluster(aws: tuple[boto3.session.Session, str]) -> dict:
    """An ACTIVE EKS cluster in moto (which takes any role ARN and subnet ids)."""
    session, url = aws
    client: BaseClient = session.client("eks", endpoint_url=url)
    return client.create_cluster(
        name=CLUSTER,
        roleArn="arn:aws:iam::123456789012:role/eks-cluster",
        resourcesVpcConfig={"subnetIds": ["subnet-0a", "subnet-0b"]},
    )["cluster"]


@pytest.fixture
def sts_only() -> Iterator[str]:
    """moto's STS alone on a loopback port: the shared server routes an unsigned-header GET to S3."""
    from moto.moto_server.werkzeug_app import create_backend_app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, create_backend_app("sts"), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def presigned_url(token: str) -> str:
    assert token.startswith("k8s-aws-v1.")
    body = token.removeprefix("k8s-aws-v1.")
    assert "=" not in body and "+" not in body and "/" not in body  # unpadded base64url
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


def sigv4_signature(url: str, headers: dict[str, str], secret: str) -> str:
    """The SigV4 query signature of a presigned GET, computed from the AWS spec (not botocore)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    fields = dict(query)
    signed = fields["X-Amz-SignedHeaders"].split(";")
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query) if k != "X-Amz-Signature"
    )
    values = {"host": parts.netloc, **{k.lower(): v for k, v in headers.items()}}
    canonical_headers = "".join(f"{name}:{values[name].strip()}\n" for name in signed)
    request = "\n".join(
        ["GET", parts.path or "/", canonical_query, canonical_headers, ";".join(signed), EMPTY_SHA256]
    )
    scope = fields["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", fields["X-Amz-Date"], scope, hashlib.sha256(request.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_configuration_reaches_the_cluster_with_its_ca_and_a_bearer_token(
    aws: tuple[boto3.session.Session, str], cluster: dict
) -> None:
    session, url = aws
    config = eks_configuration(session, CLUSTER, endpoint_url=url)

    assert config.host == cluster["endpoint"].rstrip("/")
    ca_file = Path(config.ssl_ca_cert)
    assert ca_file.read_bytes() == base64.b64decode(cluster["certificateAuthority"]["data"])
    assert stat.S_IMODE(os.stat(ca_file).st_mode) == 0o600
    auth = asyncio.run(config.auth_settings())["BearerToken"]
    assert (auth["in"], auth["key"]) == ("header", "authorization")
    scheme, token = auth["value"].split(" ")
    assert scheme == "Bearer"
    assert "x-k8s-aws-id" in presigned_url(token)
    assert eks_configuration(session, CLUSTER, endpoint_url=url).ssl_ca_cert == config.ssl_ca_cert  # reused


def test_token_is_a_presigned_get_caller_identity_url_that_signs_the_cluster_name() -> None:
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="eu-west-1"
    )
    url = presigned_url(eks_token(session, CLUSTER))  # signing is local: no endpoint needed

    parts = urlsplit(url)
    fields = dict(parse_qsl(parts.query))
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "sts.eu-west-1.amazonaws.com", "/")
    assert fields["Action"] == "GetCallerIdentity" and fields["Version"] == "2011-06-15"
    assert fields["X-Amz-Expires"] == "60"
    assert fields["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert fields["X-Amz-Credential"].startswith(f"{ACCESS_KEY}/")
    assert fields["X-Amz-Credential"].endswith("/eu-west-1/sts/aws4_request")
    assert fields["X-Amz-SignedHeaders"].split(";") == ["host", "x-k8s-aws-id"]
    assert SECRET_KEY not in url
    # The signature covers the header: right for this cluster, wrong for any other.
    assert fields["X-Amz-Signature"] == sigv4_signature(url, {"x-k8s-aws-id": CLUSTER}, SECRET_KEY)
    assert fields["X-Amz-Signature"] != sigv4_signature(url, {"x-k8s-aws-id": "other"}, SECRET_KEY)


def test_sts_answers_the_token_as_the_eks_authenticator_calls_it(sts_only: str) -> None:
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=MOTO_REGION
    )
    url = presigned_url(eks_token(session, CLUSTER, endpoint_url=sts_only))
    assert url.startswith(f"{sts_only}/?Action=GetCallerIdentity")

    request = urllib.request.Request(url, headers={"x-k8s-aws-id": CLUSTER})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read().decode()
    assert "<GetCallerIdentityResponse" in body and "<Arn>arn:aws:sts::123456789012:" in body


def test_the_hook_renews_an_old_token_and_keeps_copies_current(
    aws: tuple[boto3.session.Session, str], cluster: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    session, url = aws
    config = eks_configuration(session, CLUSTER, endpoint_url=url)
    token = config.api_key["BearerToken"]

    clone = copy.deepcopy(config)  # what Configuration.set_default keeps
    clone.api_key["BearerToken"] = "stale"
    assert asyncio.run(clone.get_api_key_with_prefix("BearerToken")) == f"Bearer {token}"

    monkeypatch.setattr(eks, "TOKEN_RENEW_SECONDS", 0)
    config.api_key["BearerToken"] = "expired"
    renewed = asyncio.run(config.get_api_key_with_prefix("BearerToken")).removeprefix("Bearer ")
    assert renewed != "expired"
    assert dict(parse_qsl(urlsplit(presigned_url(renewed)).query))["Action"] == "GetCallerIdentity"


def test_unknown_cluster_is_named_and_nothing_secret_is_said(
    aws: tuple[boto3.session.Session, str], cluster: dict, caplog: pytest.LogCaptureFixture
) -> None:
    session, url = aws
    caplog.set_level(logging.DEBUG)  # botocore's debug lines included
    token = eks_configuration(session, CLUSTER, endpoint_url=url).api_key["BearerToken"]
    with pytest.raises(ClusterNotFound) as caught:
        eks_configuration(session, "no-such-cluster", endpoint_url=url)

    message = str(caught.value)
    assert "'no-such-cluster'" in message and MOTO_REGION in message
    said = "".join(traceback.format_exception(caught.value)) + caplog.text
    assert f"EKS cluster {CLUSTER} ({MOTO_REGION})" in caplog.text  # the logs were captured
    hits = [secret for secret in (SECRET_KEY, token, token.removeprefix("k8s-aws-v1.")) if secret in said]
    assert hits == []
