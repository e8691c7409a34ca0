"""Cortex projects deploy unchanged: predictor- and handler-era specs and classes, written the way Cortex's
own examples were (the class downloads a pickled model from S3 with boto3), against moto's server."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import httpx
import pytest
from prefect_aws import AwsCredentials
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from cortex_flows.blocks import CortexCluster
from cortex_flows.flows.deploy import deploy
from tests.helpers import cli

SAMPLE = {"sepal_length": 5.2, "sepal_width": 3.6, "petal_length": 1.5, "petal_width": 0.3}
MODEL_KEY = "sklearn/iris-classifier/model.pkl"
SECRET = "cortex-era-s3cr3t-4e1b"

# Cortex v0.25's examples/sklearn/iris-classifier, with only the download path made per process.
PREDICTOR_PY = """\
import os
import json
import pickle
import tempfile

import boto3

labels = ["setosa", "versicolor", "virginica"]


class PythonPredictor:
    def __init__(self, config):
        s3 = boto3.client("s3")
        path = os.path.join(tempfile.gettempdir(), f"iris-model-{os.getpid()}.pkl")
        s3.download_file(config["bucket"], config["key"], path)
        with open(path, "rb") as file:
            self.model = pickle.load(file)

    def predict(self, payload):
        measurements = [
            payload["sepal_length"],
            payload["sepal_width"],
            payload["petal_length"],
            payload["petal_width"],
        ]
        label_id = self.model.predict([measurements])[0]
        return labels[label_id]
"""

PREDICTOR_YAML = """\
- name: iris-classifier
  kind: RealtimeAPI
  predictor:
    type: python
    path: predictor.py
    config:
      bucket: {bucket}
      key: {key}
    image: quay.io/cortexlabs/python-predictor-cpu:0.25.0
    log_level: info
  compute:
    cpu: 0.2
    mem: 200M
  networking:
    api_gateway: public
  monitoring:
    model_type: classification
"""

# Cortex v0.35: `handler:` and `class Handler` with `handle_post`.
HANDLER_PY = PREDICTOR_PY.replace("class PythonPredictor", "class Handler").replace(
    "def predict(self, payload)", "def handle_post(self, payload)"
)

HANDLER_YAML = """\
- name: iris-handler
  kind: RealtimeAPI
  handler:
    type: python
    path: handler.py
    config:
      bucket: {bucket}
      key: {key}
    processes_per_replica: 1
    threads_per_process: 2
  compute:
    cpu: 200m
    mem: 200Mi
  autoscaling:
    min_replicas: 1
    max_replicas: 2
    max_replica_concurrency: 16
"""


def write_project(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


@pytest.fixture
def moto_cluster(prefect_api, local_cluster, moto_reset, moto_s3, s3_bucket) -> dict:
    """A cluster whose AWS credentials block points at moto, holding a pickled iris model."""
    iris = load_iris()
    model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    moto_s3.put_object(Bucket=s3_bucket, Key=MODEL_KEY, Body=pickle.dumps(model))
    AwsCredentials(
        aws_access_key_id="AKIDCORTEX", aws_secret_access_key=SECRET, region_name="us-east-1",
        aws_client_parameters={"endpoint_url": moto_reset},
    ).save("moto-era-creds", overwrite=True)  # fmt: skip
    CortexCluster(
        home=str(local_cluster["home"].root), gateway_port=local_cluster["port"], aws_credentials="moto-era-creds",
    ).save("moto-era", overwrite=True)  # fmt: skip
    env = {**local_cluster["env"], "PREFECT_API_URL": prefect_api}
    return {**local_cluster, "bucket": s3_bucket, "env": env, "cluster": "moto-era"}


def predict(url: str) -> httpx.Response:
    return httpx.post(url, json=SAMPLE, timeout=30)


def test_predictor_era_project_deploys_unchanged_and_reports_what_does_not_apply(moto_cluster, tmp_path):
    project = write_project(
        tmp_path / "predictor-era",
        {
            "predictor.py": PREDICTOR_PY,
            "cortex.yaml": PREDICTOR_YAML.format(bucket=moto_cluster["bucket"], key=MODEL_KEY),
        },
    )

    done = cli("deploy", str(project), "--cluster", moto_cluster["cluster"], env=moto_cluster["env"])

    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    for field in ("predictor.image", "predictor.log_level", "networking.api_gateway", "monitoring"):
        reports = [line for line in output.splitlines() if f"iris-classifier.{field}:" in line]
        assert len(reports) == 1, (field, output)
        assert "not applicable here" in reports[0]
    response = predict(f"{moto_cluster['gateway']}/iris-classifier")
    assert response.status_code == 200 and response.json() == "setosa"
    home = moto_cluster["home"]
    assert SECRET not in output + home.agent_log.read_text()
    assert all(SECRET not in log.read_text() for log in home.logs.rglob("*.log"))


def test_handler_era_project_and_its_migration_behave_identically(moto_cluster, tmp_path):
    legacy = HANDLER_YAML.format(bucket=moto_cluster["bucket"], key=MODEL_KEY)
    project = write_project(tmp_path / "handler-era", {"handler.py": HANDLER_PY, "cortex.yaml": legacy})
    state = deploy(path=str(project), cluster=moto_cluster["cluster"], return_state=True)
    assert state.is_completed(), state.message
    url = state.result()["iris-handler"]
    assert predict(url).json() == "setosa"

    migrated = cli("migrate", str(project), env=moto_cluster["env"])
    assert migrated.returncode == 0, migrated.stderr
    assert "max_concurrency: 2" in migrated.stdout and "processes_per_replica" not in migrated.stdout
    (project / "cortex.yaml").write_text(migrated.stdout)

    # The same API from the native spec is the same deployment: nothing to roll.
    again = deploy(path=str(project), cluster=moto_cluster["cluster"], return_state=True)
    assert again.is_completed(), again.message
    status = json.loads(cli("get", "iris-handler", "--output", "json", env=moto_cluster["env"]).stdout)
    assert [v["revision"] for v in status["versions"]] == [1]

    # And deployed from scratch, it answers the same.
    assert cli("delete", "iris-handler", env=moto_cluster["env"]).returncode == 0
    fresh = deploy(path=str(project), cluster=moto_cluster["cluster"], return_state=True)
    assert fresh.is_completed(), fresh.message
    response = predict(fresh.result()["iris-handler"])
    assert response.status_code == 200 and response.json() == "setosa"


def test_misspelled_historical_field_is_an_error_naming_it(moto_cluster, tmp_path):
    typo = HANDLER_YAML.replace("threads_per_process", "threads_per_proces").format(
        bucket=moto_cluster["bucket"], key=MODEL_KEY
    )
    project = write_project(tmp_path / "typo", {"handler.py": HANDLER_PY, "cortex.yaml": typo})

    done = cli("deploy", str(project), env=moto_cluster["env"])

    assert done.returncode == 2
    assert "iris-handler.handler.threads_per_proces" in done.stderr
    assert "did you mean 'threads_per_process'" in done.stderr
    assert not moto_cluster["home"].state_file.exists()

