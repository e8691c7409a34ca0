"""`cortex-flows render`: the Kubernetes objects of a project as YAML, offline, as a user runs it."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from cortex_flows.packaging.build import build_package
from tests.helpers import EXAMPLE, cli


def _iris(tmp_path: Path) -> Path:
    """A copy of the example; render never loads the model, so an untrained checkout gets a stand-in."""
    project = tmp_path / "iris-classifier"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    if not (project / "model.joblib").exists():
        (project / "model.joblib").write_bytes(b"not trained")
    return project


def test_render_prints_the_objects_of_a_deploy(tmp_path: Path) -> None:
    project = _iris(tmp_path)
    done = cli("render", str(project))
    assert done.returncode == 0, done.stderr
    docs = list(yaml.safe_load_all(done.stdout))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "HTTPRoute"]
    assert {d["metadata"]["namespace"] for d in docs} == {"default"}
    # The package id is the one a deploy uploads: the project without its spec file
    sha = build_package(project, tmp_path / "built", exclude=["/cortex.yaml"]).sha256
    replica = yaml.safe_load(docs[0]["data"]["replica.json"])
    assert replica["package"] == {"uri": f"s3://PACKAGE-STORE/packages/{sha}.tar.gz", "sha256": sha}
    assert docs[1]["metadata"]["annotations"]["cortex-flows.dev/package-id"] == sha
    # Another process (another hash seed) prints the same bytes
    assert cli("render", str(project)).stdout == done.stdout


def test_render_options(tmp_path: Path) -> None:
    project = _iris(tmp_path)
    done = cli(
        "render", str(project / "cortex.yaml"), "--namespace", "ml", "--image", "registry.example/serving:1",
        "--autoscaler", "hpa", "--store", "s3://bucket/team",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    docs = list(yaml.safe_load_all(done.stdout))
    assert [d["kind"] for d in docs][4] == "HorizontalPodAutoscaler"
    assert {d["metadata"]["namespace"] for d in docs} == {"ml"}
    pod = docs[1]["spec"]["template"]["spec"]
    assert {c["image"] for c in [*pod["initContainers"], *pod["containers"]]} == {
        "registry.example/serving:1"
    }
    assert yaml.safe_load(docs[0]["data"]["replica.json"])["package"]["uri"].startswith(
        "s3://bucket/team/packages/"
    )


def test_render_bad_spec_exits_2(tmp_path: Path) -> None:
    (tmp_path / "cortex.yaml").write_text("- name: Bad_Name\n  kind: RealtimeAPI\n")
    done = cli("render", str(tmp_path))
    assert done.returncode == 2
    assert done.stdout == ""
    assert "name" in done.stderr and "handler" in done.stderr
    store = cli("render", str(_iris(tmp_path)), "--store", "/var/packages")
    assert store.returncode == 2 and "--store must be an S3 location" in store.stderr
