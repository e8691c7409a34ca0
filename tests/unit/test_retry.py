"""Which failures the infrastructure tasks retry."""

from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from cortex_flows.backends.base import BackendError, NotFound
from cortex_flows.packaging.errors import PackageError
from cortex_flows.spec import SpecError
from cortex_flows.tasks.retry import is_transient


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://127.0.0.1/")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))


@pytest.mark.parametrize(
    "exc",
    [
        BackendError("agent busy", transient=True),
        status_error(429),
        status_error(503),
        status_error(409),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        TimeoutError(),
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ],
)
def test_transient_failures_are_retried(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        BackendError("bad weights", status=400),
        NotFound("no such api"),
        status_error(400),
        status_error(404),
        client_error("NoSuchBucket", 404),
        client_error("AccessDenied", 403),
        PackageError("hash mismatch"),
        SpecError(Path("cortex.yaml"), []),
        ValueError("bug"),
    ],
)
def test_other_failures_fail_at_once(exc):
    assert not is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        client_error("Throttling", 400),  # EC2 Auto Scaling's throttling error (query protocol, HTTP 400)
        client_error("RequestLimitExceeded", 400),  # EC2's
        client_error("SomethingNew", 429),
        client_error("SomethingElse", 502),
    ],
)
def test_aws_throttling_is_retried(exc):
    assert is_transient(exc)


def test_unknown_node_group_fails_at_once():
    from cortex_flows.aws.autoscaling import NodeGroupNotFound

    assert not is_transient(NodeGroupNotFound("Auto Scaling group 'x' not found"))
    assert not is_transient(client_error("ValidationError", 400))


def test_autoscaling_clients_leave_retries_to_the_task():
    """botocore would retry throttling itself, invisibly; with one attempt per call the task's policy does."""
    from cortex_flows.aws.autoscaling import autoscaling_client

    client = autoscaling_client(region="us-east-1", endpoint_url="http://127.0.0.1:1")
    assert client.meta.config.retries["total_max_attempts"] == 1
