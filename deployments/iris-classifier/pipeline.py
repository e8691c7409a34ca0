"""Train, evaluate, gate, deploy: the iris classifier's pipeline as one Prefect flow run.

The candidate model is trained into a hidden file beside the project's model (packages leave out dotfiles),
evaluated on the held-out split and gated against a floor and against what production serves now (the
`model-quality-<api>` table artifact recorded by the last successful deploy). Only a model that passes
replaces the project's model and ships: `deploy` for a new API, `canary_rollout` otherwise, as subflows.
A refusal is a decision: the run completes, nothing ships, the `gate-decision` artifact says why, and the
event `cortex.model.refused` (else `cortex.model.approved`) carries the figures for automations.

    python deployments/iris-classifier/pipeline.py      # against the local agent
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import joblib
import numpy as np
from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from prefect.events import emit_event
from prefect.runtime import flow_run

from cortex_flows.flows.canary import canary_rollout
from cortex_flows.flows.deploy import deploy
from cortex_flows.spec import load_spec
from cortex_flows.tasks.clusters import load_cluster

HERE = Path(__file__).resolve().parent


def _training_module() -> ModuleType:
    """train.py beside this file (the project directory is not a package)."""
    spec = importlib.util.spec_from_file_location("iris_train", HERE / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quality_key(api: str) -> str:
    """Key of the table artifact holding the quality of the model `api` serves."""
    return f"model-quality-{api}"


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def decide(accuracy: float, min_accuracy: float, production: float | None) -> GateDecision:
    """Pass only a model at least as accurate as the floor and as production (None: nothing in production)."""
    problems = []
    if accuracy < min_accuracy:
        problems.append(f"accuracy {accuracy:.4f} is below the minimum {min_accuracy:.4f}")
    if production is not None and accuracy < production:
        problems.append(f"accuracy {accuracy:.4f} is worse than production's {production:.4f}")
    if problems:
        return GateDecision(False, "; ".join(problems))
    against = "no production model yet" if production is None else f"production's {production:.4f}"
    return GateDecision(True, f"accuracy {accuracy:.4f} >= minimum {min_accuracy:.4f} and {against}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@task
def train(model_path: Path, seed: int, holdout: float, degrade: float) -> tuple[Path, str]:
    """Fit the classifier; `degrade` relabels that share of the training labels to another species at random.
    Writes the candidate atomically to a hidden file beside `model_path`; returns it and its sha256."""
    if not 0.0 <= degrade <= 1.0:
        raise ValueError(f"degrade must be within 0..1, got {degrade}")
    training = _training_module()
    x_train, _, y_train, _ = training.split(seed, holdout)
    y_train = np.array(y_train, copy=True)
    rng = np.random.default_rng(seed)
    species = np.unique(y_train)
    for i in rng.choice(len(y_train), round(degrade * len(y_train)), replace=False):
        y_train[i] = rng.choice(species[species != y_train[i]])
    model = training.make_model(seed)
    model.fit(x_train, y_train)
    candidate = model_path.with_name(f".{model_path.name}.candidate")
    _write_atomically(candidate, lambda out: joblib.dump(model, out))
    return candidate, _sha256(candidate)


def _write_atomically(target: Path, write: Any) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@task
def evaluate(candidate: Path, seed: int, holdout: float) -> float:
    """Accuracy of the candidate on the held-out split."""
    _, x_test, _, y_test = _training_module().split(seed, holdout)
    return float(joblib.load(candidate).score(x_test, y_test))


@task
def production_accuracy(api: str) -> dict[str, Any] | None:
    """The latest `model-quality-<api>` row (the deployed model's metric), or None if none was recorded."""
    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[quality_key(api)]))
        )
    if not found:
        return None
    data = found[0].data
    rows = json.loads(data) if isinstance(data, str) else data
    return rows[0] if rows else None


@task
def gate(accuracy: float, min_accuracy: float, production: dict[str, Any] | None) -> GateDecision:
    """The deploy decision (see `decide`)."""
    return decide(accuracy, min_accuracy, None if production is None else float(production["accuracy"]))


@task
async def is_deployed(api: str, cluster: str | None) -> bool:
    """Whether the cluster serves `api` already (then a new model goes out as a canary)."""
    return await load_cluster(cluster).get_backend().status(api) is not None


@task
async def current_revision(api: str, cluster: str | None) -> int | None:
    """The newest revision the cluster runs for `api`."""
    status = await load_cluster(cluster).get_backend().status(api)
    return None if status is None or status.current is None else status.current.revision


@task
def install(candidate: Path, model_path: Path) -> None:
    """Put the gated candidate in place as the project's model (atomic rename, same directory)."""
    os.replace(candidate, model_path)


@flow(name="train-and-deploy", log_prints=True)
def train_and_deploy(
    path: str = str(HERE),
    cluster: str | None = None,
    min_accuracy: float = 0.9,
    seed: int = 0,
    holdout: float = 0.3,
    degrade: float = 0.0,
    notify: str | None = None,
) -> dict[str, Any]:
    """Train the iris classifier, evaluate it on held-out data and deploy it if it passes the gate.

    Args:
        path: The project directory (its `cortex.yaml` names the API and its `model_path`).
        cluster: Name of a `CortexCluster` block; the local agent when omitted.
        min_accuracy: The least held-out accuracy a model may ship with.
        seed, holdout: The train/test split (and the model's random state).
        degrade: Share of training labels relabelled at random (0..1): a deliberately worse model.
        notify: A Prefect notification block ('<block-type-slug>/<block-name>') told if the rollout rolls back.

    Returns:
        {"deployed": False, "reason"} on a refusal, else {"deployed": True, "outcome", "revision",
        "accuracy", "model_sha256"}.
    """
    logger = get_run_logger()
    project = load_spec(path)
    api = project.select(None)
    if api.model_path is None or "://" in api.model_path:
        raise ValueError(f"{api.name}: the pipeline needs a local model_path in {project.file}")
    model_path = project.project_dir / api.model_path
    run_id = str(flow_run.id)

    candidate, sha = train(model_path, seed, holdout, degrade)
    accuracy = evaluate(candidate, seed, holdout)
    production = production_accuracy(api.name)
    decision = gate(accuracy, min_accuracy, production)
    shown = (
        "none yet"
        if production is None
        else f"{production['accuracy']:.4f} (model {production['model_sha256'][:12]})"
    )
    logger.info("training run %s: model %s, accuracy %.4f: %s", run_id, sha[:12], accuracy, decision.reason)
    verdict = "passed" if decision.passed else "refused"
    create_markdown_artifact(
        key="gate-decision",
        markdown="\n".join([
            f"# Gate {verdict}: {api.name}", "", decision.reason, "",
            "| | |", "|---|---|", f"| accuracy (held out) | {accuracy:.4f} |", f"| minimum | {min_accuracy:.4f} |",
            f"| production | {shown} |", f"| model sha256 | `{sha}` |", f"| training flow run | `{run_id}` |",
        ]),
        description=f"train-and-deploy gate for {api.name}",
    )  # fmt: skip
    emit_event(
        event=f"cortex.model.{'approved' if decision.passed else 'refused'}",
        resource={"prefect.resource.id": f"cortex.model.{sha[:12]}", "prefect.resource.name": f"model {sha[:12]}"},
        related=[{"prefect.resource.id": f"cortex.api.{api.name}", "prefect.resource.role": "api"}],
        payload={"api": api.name, "accuracy": accuracy, "min_accuracy": min_accuracy, "reason": decision.reason,
                 "production": None if production is None else production["accuracy"], "model_sha256": sha},
    )  # fmt: skip
    if not decision.passed:
        Path(candidate).unlink(missing_ok=True)
        return {"deployed": False, "reason": decision.reason, "accuracy": accuracy, "model_sha256": sha}

    install(candidate, model_path)
    first = not is_deployed.submit(api.name, cluster).result()  # async tasks: submit from this sync flow
    context = f"model {sha[:12]} from training run {run_id}"
    with tags(f"training-run:{run_id}", f"model:{sha[:12]}"):
        if first:
            deploy.with_options(flow_run_name=f"deploy {api.name}: {context}")(
                path=path, cluster=cluster, notify=notify
            )
            result = {"outcome": "deployed"}
        else:
            result = canary_rollout.with_options(flow_run_name=f"canary {api.name}: {context}")(
                path=path, api=api.name, cluster=cluster, notify=notify
            )
    revision = result.get("revision")
    if revision is None:  # the deploy flow returns endpoints: ask the backend
        revision = current_revision.submit(api.name, cluster).result()
    create_table_artifact(
        key=quality_key(api.name),
        table=[{"model_sha256": sha, "accuracy": accuracy, "training_run": run_id, "revision": revision}],
        description=f"quality of the model {api.name} serves",
    )
    logger.info("%s r%s serves %s (%s)", api.name, revision, context, result["outcome"])
    return {"deployed": True, "outcome": result["outcome"], "revision": revision, "accuracy": accuracy,
            "model_sha256": sha}  # fmt: skip


if __name__ == "__main__":
    print(train_and_deploy())
