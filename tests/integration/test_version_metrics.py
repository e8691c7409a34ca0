"""Per-version metrics from a real agent: two revisions splitting traffic, each counted exactly, and a
version's counts never shrinking when its replicas are scaled down or killed (no Prefect)."""

from __future__ import annotations

import itertools
import math
import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from cortex_flows.backends.base import NotFound, Outcome, VersionMetrics
from cortex_flows.backends.local.client import LocalBackend, start_agent
from cortex_flows.backends.local.scrape import INTERVAL_ENV
from cortex_flows.backends.versions import version_spec
from cortex_flows.packaging.store import LocalStore
from cortex_flows.rollout.analysis import Decision, Status, Thresholds, analyse
from cortex_flows.rollout.plan import Action, DeployPlan
from cortex_flows.spec import parse_spec
from tests.helpers import wait_for
from tests.integration.test_local_backend import run, stored, wait_ready

# v1 answers with the bare class (as Cortex's examples did); v2 with {"prediction": ...}, other classes,
# and a 500 for payloads that ask for one.
HANDLER = '''
class Handler:
    def __init__(self, config):
        self.tag = config["tag"]

    def handle_post(self, payload):
        if self.tag == "v2":
            if payload.get("fail"):
                raise RuntimeError("the candidate breaks")
            return {"prediction": payload["label"].upper()}
        return payload["label"]
'''
LABELS = ("setosa", "versicolor", "virginica")


def deploy(backend: LocalBackend, tmp_path: Path, revision: int, replicas: int) -> None:
    root = tmp_path / f"iris-v{revision}"
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.py").write_text(HANDLER)
    text = (
        "- name: iris\n  kind: RealtimeAPI\n  handler: {type: python, path: handler.py}\n"
        f"  config: {{tag: v{revision}}}\n  pod: {{max_concurrency: 8}}\n"
    )
    api = parse_spec(text, root / "cortex.yaml", root).apis[0]
    package = stored(root, LocalStore(backend.home.packages), tmp_path / f"build-{revision}")
    spec = version_spec(api, package, DeployPlan(Action.CREATE, revision, 1))
    run(backend.apply_version("iris", spec, replicas))
    wait_ready(backend, "iris", revision)


def replica_pids(home: Path, api: str, revision: int) -> list[int]:
    """Processes of a version's replicas (their config file is named `<api>-r<rev>-<id>.config.json`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"cortex_flows.serving" in cmd and str(home).encode() in cmd and f"/{api}-r{revision}-".encode() in cmd:
            pids.append(int(proc.name))
    return pids


class Expected:
    """What each revision answered, from the responses' `X-Cortex-Revision` headers."""

    def __init__(self) -> None:
        self.status: dict[int, Counter[str]] = {1: Counter(), 2: Counter()}
        self.classes: dict[int, Counter[str]] = {1: Counter(), 2: Counter()}

    def send(self, client: httpx.Client, url: str, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            label = LABELS[i % 3]
            if i % 37 == 36:  # now and then a body that is not JSON: a 400, the client's fault
                resp = client.post(url, content=b'{"label": ', headers={"content-type": "application/json"})
            else:
                resp = client.post(url, json={"label": label, "fail": i % 7 == 3})
            revision = int(resp.headers["x-cortex-revision"])
            self.status[revision][str(resp.status_code)] += 1
            if resp.status_code == 200:
                self.classes[revision][resp.json()["prediction"] if revision == 2 else resp.json()] += 1

    def check(self, m: VersionMetrics, revision: int) -> None:
        status = self.status[revision]
        assert m.by_status == dict(status), revision
        assert m.requests == status.total()
        assert m.errors == sum(n for code, n in status.items() if code.startswith("5"))
        assert m.classes == dict(self.classes[revision])
        bounds = [le for le, _ in m.latency_buckets]
        counts = [n for _, n in m.latency_buckets]
        assert bounds == sorted(bounds) and math.isinf(bounds[-1]) and len(bounds) > 2
        assert counts == sorted(counts), "buckets are cumulative"
        assert counts[-1] == m.requests, "every request here was admitted, so +Inf holds them all"


def assert_monotonic(history: list[VersionMetrics]) -> None:
    for earlier, later in itertools.pairwise(history):
        assert later.started == earlier.started
        assert later.requests >= earlier.requests and later.errors >= earlier.errors
        for field in ("by_status", "classes"):
            before, after = getattr(earlier, field), getattr(later, field)
            assert all(after.get(k, 0) >= n for k, n in before.items()), (field, before, after)
        assert all(n2 >= n1 for (_, n1), (_, n2) in zip(earlier.latency_buckets, later.latency_buckets, strict=True))


def metrics(backend: LocalBackend, revision: int) -> VersionMetrics:
    return run(backend.version_metrics("iris", revision))


@pytest.fixture
def backend(local_cluster, monkeypatch: pytest.MonkeyPatch) -> LocalBackend:
    # No background scrapes: what survives a scale-down must come from the scrape before the stop.
    monkeypatch.setenv(INTERVAL_ENV, "0")
    start_agent(local_cluster["home"], local_cluster["port"])
    return LocalBackend(local_cluster["home"], local_cluster["port"])


@pytest.mark.timeout(60)
def test_each_version_counts_exactly_what_it_answered_and_never_less(backend, local_cluster, tmp_path):
    deploy(backend, tmp_path, 1, replicas=1)
    deploy(backend, tmp_path, 2, replicas=2)
    run(backend.set_traffic("iris", {1: 70, 2: 30}))
    base = {rev: metrics(backend, rev) for rev in (1, 2)}
    assert (base[1].requests, base[2].requests, base[2].replicas_seen) == (0, 0, 2)
    history: dict[int, list[VersionMetrics]] = {1: [base[1]], 2: [base[2]]}
    expected = Expected()
    url = f"{local_cluster['gateway']}/iris"

    with httpx.Client(timeout=10) as client:
        expected.send(client, url, 200)
        assert abs(expected.status[1].total() - 140) <= 2  # smooth weighted round robin: 70/30
        for rev in (1, 2):
            history[rev].append(metrics(backend, rev))
            expected.check(history[rev][-1], rev)
        assert expected.status[2]["500"] > 0 and expected.status[1]["500"] == 0
        assert history[1][-1].classes.keys() == set(LABELS)  # v1's bare strings count as classes
        assert history[2][-1].classes.keys() == {label.upper() for label in LABELS}

        # Scale v2 down right after more traffic, with no scrape in between: the stopping replica is
        # scraped after it drained, so what it answered stays counted.
        expected.send(client, url, 100, start=200)
        run(backend.scale_version("iris", 2, 1))
        assert len(replica_pids(backend.home.root, "iris", 2)) == 1
        history[2].append(metrics(backend, 2))
        expected.check(history[2][-1], 2)
        assert history[2][-1].replicas_seen == 1

        # SIGKILL v1's only replica: its counts stay (carried), and its restarted process adds to them.
        expected.send(client, url, 60, start=300)
        history[1].append(metrics(backend, 1))
        expected.check(history[1][-1], 1)
        (pid,) = replica_pids(backend.home.root, "iris", 1)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pid not in replica_pids(backend.home.root, "iris", 1), 10, what="the kill")
        history[1].append(metrics(backend, 1))
        expected.check(history[1][-1], 1)
        wait_for(lambda: metrics(backend, 1).replicas_seen == 1 and run(backend.status("iris")).ready == 2,
                 20, what="v1's replica to restart")  # fmt: skip
        expected.send(client, url, 60, start=360)
        for rev in (1, 2):
            history[rev].append(metrics(backend, rev))
            expected.check(history[rev][-1], rev)

    for rev in (1, 2):
        assert_monotonic(history[rev])

    # The window's counts feed canary analysis: v2 errs on 1 in 7 and answers other classes.
    stable, candidate = (history[rev][-1].since(base[rev]) for rev in (1, 2))
    assert (stable.requests, candidate.requests) == (history[1][-1].requests, history[2][-1].requests)
    step = history[2][-1].since(history[2][-2])
    assert step.requests == expected.status[2].total() - history[2][-2].requests
    verdict = analyse(stable.as_arm(), candidate.as_arm(), Thresholds(min_samples=20), final_step=False)
    failed = {c.name for c in verdict.checks if c.status is Status.FAIL}
    assert verdict.decision is Decision.ROLLBACK and {"error_rate", "class_drift"} <= failed, verdict.reasons
    assert verdict.stats["candidate_p95"] is not None and verdict.stats["stable_p95"] is not None

    with pytest.raises(NotFound):
        run(backend.version_metrics("iris", 7))
    run(backend.remove_version("iris", 2, Outcome.ROLLED_BACK))
    with pytest.raises(NotFound):
        run(backend.version_metrics("iris", 2))


@pytest.mark.timeout(60)
def test_background_scrapes_keep_what_a_killed_replica_answered(local_cluster, monkeypatch, tmp_path):
    monkeypatch.setenv(INTERVAL_ENV, "0.2")
    start_agent(local_cluster["home"], local_cluster["port"])
    backend = LocalBackend(local_cluster["home"], local_cluster["port"])
    deploy(backend, tmp_path, 1, replicas=2)
    expected = Expected()
    with httpx.Client(timeout=10) as client:
        expected.send(client, f"{local_cluster['gateway']}/iris", 50)
    pids = replica_pids(backend.home.root, "iris", 1)
    assert len(pids) == 2
    # No version_metrics call before the kill: only a background scrape can have seen the dead process.
    time.sleep(1.0)  # five scrape intervals
    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: pids[0] not in replica_pids(backend.home.root, "iris", 1), 10, what="the kill")
    after = metrics(backend, 1)
    expected.check(after, 1)
    assert after.replicas_seen == 1
