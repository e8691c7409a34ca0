"""The deploy flow with an S3 package store (moto's server over real HTTP), credentials from blocks."""

from __future__ import annotations

import asyncio
import json

import httpx
from prefect.client.orchestration import get_client
from prefect_aws import AwsCredentials

from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.deploy import deploy
from tests.helpers import example_project

SECRET = "s3cr3t-never-shown-9f2c"


async def _flow_run(flow_run_id):
    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


def test_s3_store_uploads_once_replica_fetches_and_secrets_stay_secret(
    prefect_api, local_cluster, moto_reset, moto_s3, s3_bucket, tmp_path
):
    AwsCredentials(
        aws_access_key_id="AKIDTEST", aws_secret_access_key=SECRET, region_name="us-east-1",
        aws_client_parameters={"endpoint_url": moto_reset},
    ).save("moto-creds", overwrite=True)  # fmt: skip
    CortexCluster(
        home=str(local_cluster["home"].root), gateway_port=local_cluster["port"],
        package_store=f"s3://{s3_bucket}/cortex", aws_credentials="moto-creds",
    ).save("s3-test", overwrite=True)  # fmt: skip
    project = example_project(tmp_path)

    state = deploy(path=str(project), cluster="s3-test", return_state=True)
    assert state.is_completed(), state.message
    url = state.result()["iris-classifier"]
    assert httpx.post(url, json={"features": [6.3, 3.3, 6.0, 2.5]}).json() == {"prediction": "virginica"}

    keys = [o["Key"] for o in moto_s3.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert len(keys) == 1 and keys[0].startswith("cortex/packages/") and keys[0].endswith(".tar.gz")
    sha = keys[0].removeprefix("cortex/packages/").removesuffix(".tar.gz")
    home = local_cluster["home"]
    assert (home.cache / sha / ".cortex-package").read_text().strip() == sha  # fetched, verified, extracted
    assert not list(home.packages.glob("*.tar.gz"))  # nothing went to the local store

    # An autoscaling-only change: same package, applied in place, nothing uploaded again.
    spec = project / "cortex.yaml"
    spec.write_text(spec.read_text().replace("max_replicas: 4", "max_replicas: 5"))
    assert deploy(path=str(project), cluster="s3-test", return_state=True).is_completed()
    assert [o["Key"] for o in moto_s3.list_objects_v2(Bucket=s3_bucket)["Contents"]] == keys

    run = asyncio.run(_flow_run(state.state_details.flow_run_id))
    places = {
        "flow parameters": json.dumps(run.parameters),
        "state file": home.state_file.read_text(),
        "agent log": home.agent_log.read_text(),
        **{f"replica log {p.name}": p.read_text() for p in home.logs.rglob("*.log")},
        **{f"replica config {p.name}": p.read_text() for p in home.replicas.glob("*.json")},
    }
    leaks = [where for where, text in places.items() if SECRET in text]
    assert leaks == []
    assert (home.secrets.stat().st_mode & 0o077) == 0
