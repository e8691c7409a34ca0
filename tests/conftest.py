"""moto in server mode: one real HTTP endpoint on loopback per session, wiped before each test that asks.

Shared by every integration test that talks to AWS; see reference/testing.md §3.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.client import BaseClient
from botocore.config import Config

MOTO_REGION = "us-east-1"
MOTO_KEY = "testing"  # moto accepts any credentials; these are not secrets


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """URL of a ThreadedMotoServer on a free loopback port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # verbose=False does not silence requests
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_reset(moto_server: str) -> str:
    """Wipe all moto state so each test starts from an empty account; returns the server URL."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
    return moto_server


@pytest.fixture
def aws_env(
    moto_reset: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """Environment credentials for moto (as a replica gets them), isolated from any ~/.aws files."""
    missing = tmp_path_factory.mktemp("aws") / "none"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", MOTO_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MOTO_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", MOTO_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", MOTO_REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_reset


@pytest.fixture
def moto_s3(moto_reset: str) -> BaseClient:
    """An S3 client on the moto server with explicit test credentials and no retries (fast failures)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=moto_reset,
        region_name=MOTO_REGION,
        aws_access_key_id=MOTO_KEY,
        aws_secret_access_key=MOTO_KEY,
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )


@pytest.fixture
def s3_bucket(moto_s3: BaseClient) -> str:
    """An empty bucket in a freshly reset moto."""
    name = "cortex-flows-test"
    moto_s3.create_bucket(Bucket=name)
    return name


GROUP = "cortex-nodes"


@pytest.fixture
def autoscaling(aws_env: str) -> BaseClient:
    """An autoscaling client on a fresh moto, with the group `cortex-nodes` (min 0, max 1, desired 0) on a
    launch template."""
    kwargs = {"endpoint_url": aws_env, "region_name": MOTO_REGION, "aws_access_key_id": MOTO_KEY,
              "aws_secret_access_key": MOTO_KEY}  # fmt: skip
    boto3.client("ec2", **kwargs).create_launch_template(
        LaunchTemplateName="cortex-node",
        LaunchTemplateData={"ImageId": "ami-12c6146b", "InstanceType": "m5.large"},
    )
    client = boto3.client("autoscaling", **kwargs)
    client.create_auto_scaling_group(
        AutoScalingGroupName=GROUP, LaunchTemplate={"LaunchTemplateName": "cortex-node", "Version": "$Latest"},
        MinSize=0, MaxSize=1, DesiredCapacity=0, AvailabilityZones=["us-east-1a"],
    )  # fmt: skip
    return client


def group_of(client: BaseClient) -> dict[str, Any]:
    group = client.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])["AutoScalingGroups"][0]
    return {"min": group["MinSize"], "max": group["MaxSize"], "desired": group["DesiredCapacity"],
            "policy": group.get("MixedInstancesPolicy")}  # fmt: skip


# -- Prefect and the local backend --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect test server for the session (starting one costs ~10 s); yields its API URL. When the
    session ends, no secret value saved in a block may appear in its runs' parameters, logs or artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from tests.secret_scan import leaks

    with prefect_test_harness(server_startup_timeout=90):
        yield str(PREFECT_API_URL.value())
        with get_client(sync_client=True) as client:  # what the session's runs recorded, before it goes
            found = leaks(client)
        assert not found, f"secret values saved in blocks surfaced in Prefect: {found[:10]}"


@pytest.fixture
def local_cluster(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A private agent home and gateway port for one test; the agent is stopped afterwards."""
    with running_local_cluster(tmp_path_factory.mktemp("cortex-home"), monkeypatch) as cluster:
        yield cluster


@contextlib.contextmanager
def running_local_cluster(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """The local backend's settings for an agent home (its agent starts on first use), and that agent
    stopped on the way out."""
    from cortex_flows.backends.local.client import stop_agent
    from cortex_flows.backends.local.home import LocalHome

    port = free_port()
    monkeypatch.setenv("CORTEX_FLOWS_HOME", str(home))
    monkeypatch.setenv("CORTEX_FLOWS_GATEWAY_PORT", str(port))
    env = {"CORTEX_FLOWS_HOME": str(home), "CORTEX_FLOWS_GATEWAY_PORT": str(port)}
    try:
        yield {"home": LocalHome(home), "port": port, "gateway": f"http://127.0.0.1:{port}", "env": env}
    finally:
        stop_agent(LocalHome(home), timeout=20)


class Webhook:
    """A webhook receiver on a free loopback port, saved as a Prefect `CustomWebhookNotificationBlock` whose
    bearer token is one of the block's secrets: what a team's chat or pager integration looks like."""

    def __init__(self) -> None:
        import json
        import threading
        import uuid
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.token = f"hook-secret-{uuid.uuid4().hex}"
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.append({"authorization": self.headers.get("Authorization"), **body})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/ml-oncall"
        self.name = f"oncall-{uuid.uuid4().hex[:8]}"

    def save(self) -> str:
        """Save the block; returns the reference a flow's `notify` parameter takes."""
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        CustomWebhookNotificationBlock(
            name="ml on-call", url=self.url, json_data={"subject": "{{subject}}", "text": "{{body}}"},
            headers={"Authorization": "Bearer {{token}}"}, secrets={"token": self.token},
        ).save(self.name)  # fmt: skip
        return f"custom-webhook/{self.name}"


@pytest.fixture
def webhook(prefect_api: str) -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()
