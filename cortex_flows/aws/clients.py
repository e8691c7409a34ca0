"""boto3 clients with bounded retries and timeouts, and a classifier for errors worth retrying.

Credentials come from boto3's default chain (environment variables such as AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, or a pod's web identity) unless the caller passes a session,
e.g. one built from a Prefect AwsCredentials block.
"""

from __future__ import annotations

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 4},
    connect_timeout=5,
    read_timeout=60,
)

_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "IDPCommunicationError",
    }
)


def s3_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    session: boto3.session.Session | None = None,
) -> BaseClient:
    """An S3 client; a fresh session by default, because boto3's shared default one is not thread-safe."""
    session = session or boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=CLIENT_CONFIG)


def is_transient_aws_error(exc: BaseException) -> bool:
    """True for faults a later retry may clear: throttling, 5xx, timeouts, dropped connections.

    Client errors such as AccessDenied or NoSuchBucket are False: retrying them only delays the report.
    """
    if isinstance(exc, BotoConnectionError | HTTPClientError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = error.get("Code", "")
        return code in _THROTTLING_CODES or code in _TRANSIENT_CODES or status == 429 or status >= 500
    return False
