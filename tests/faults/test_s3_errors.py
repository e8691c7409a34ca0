"""S3 answering every other request 503 SlowDown (a proxy in front of moto's server): the package upload,
the check that it exists and the replica's download are retried, and the deploy converges."""

from __future__ import annotations

import http.client
import itertools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest
from prefect_aws import AwsCredentials

from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.deploy import deploy
from tests.conftest import MOTO_KEY, MOTO_REGION
from tests.helpers import example_project

SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
HOP_BY_HOP = {"connection", "transfer-encoding", "keep-alive"}


@pytest.fixture
def flaky_s3(moto_reset: str) -> Iterator[dict]:
    """A proxy to moto answering 503 SlowDown to every other request; records what it refused."""
    upstream = urlsplit(moto_reset)
    counter, refused = itertools.count(), []

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if next(counter) % 2 == 0:
                refused.append(f"{self.command} {self.path}")
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOW_DOWN)))
                self.end_headers()
                self.wfile.write(SLOW_DOWN)
                return
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            conn.request(self.command, self.path, body=body, headers=dict(self.headers))
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for name, value in resp.getheaders():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "refused": refused}
    server.shutdown()


def test_s3_slowing_down_every_other_request_is_retried_and_the_deploy_converges(
    prefect_api, local_cluster, aws_env, moto_s3, s3_bucket, flaky_s3, tmp_path
):
    AwsCredentials(
        aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_KEY, region_name=MOTO_REGION,
        aws_client_parameters={"endpoint_url": flaky_s3["url"]},
    ).save("flaky-s3", overwrite=True)  # fmt: skip
    CortexCluster(
        home=str(local_cluster["home"].root), gateway_port=local_cluster["port"],
        package_store=f"s3://{s3_bucket}/cortex", aws_credentials="flaky-s3",
    ).save("flaky-s3", overwrite=True)  # fmt: skip

    state = deploy(path=str(example_project(tmp_path)), cluster="flaky-s3", return_state=True)
    assert state.is_completed(), state.message
    url = state.result()["iris-classifier"]
    assert httpx.post(url, json={"features": [6.3, 3.3, 6.0, 2.5]}).json() == {"prediction": "virginica"}
    assert len(moto_s3.list_objects_v2(Bucket=s3_bucket)["Contents"]) == 1
    methods = {refused.split(" ")[0] for refused in flaky_s3["refused"]}
    assert {"PUT", "GET"} <= methods or {"PUT", "HEAD"} <= methods, flaky_s3["refused"]
    print(f"\n{len(flaky_s3['refused'])} S3 requests answered 503 SlowDown; deployed and serving")
