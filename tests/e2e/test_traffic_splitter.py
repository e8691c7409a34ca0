"""TrafficSplitters as a user deploys them: weights hold over thousands of requests, a shadow API sees a
copy of the traffic without ever answering a client, a splitter's APIs cannot be deleted from under it,
and a splitter naming an API that is nowhere changes nothing."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cortex_flows.backends.local.client import LocalBackend
from cortex_flows.flows.deploy import deploy
from tests.helpers import cli, wait_for

HANDLER = """\
class Handler:
    def __init__(self, config):
        self.tag, self.constant = config["tag"], config.get("constant", False)

    def handle_post(self, payload):
        label = LABELS[payload["x"] % 3]
        return {"prediction": "setosa" if self.constant else label, "tag": self.tag}


LABELS = ["setosa", "versicolor", "virginica"]
"""
LABELS = ["setosa", "versicolor", "virginica"]
REQUESTS = 2000


def api(name: str, tag: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"},
            "config": {"tag": tag, **config}, "pod": {"max_concurrency": 8}}  # fmt: skip


def write(root: Path, items: list[dict[str, Any]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.py").write_text(HANDLER)
    (root / "cortex.yaml").write_text(yaml.safe_dump(items, sort_keys=False))
    return root


@pytest.fixture
def split(prefect_api, local_cluster, tmp_path) -> dict[str, Any]:
    """APIs a, b and c (c poses as a but always answers setosa) and a splitter: a 70%, b 30%, and 50% of
    the requests copied to c."""
    splitter = {"name": "split", "kind": "TrafficSplitter",
                "apis": [{"name": "a", "weight": 70}, {"name": "b", "weight": 30},
                         {"name": "c", "weight": 50, "shadow": True}]}  # fmt: skip
    project = write(tmp_path / "split", [api("a", "a"), api("b", "b"), api("c", "a", constant=True), splitter])
    urls = deploy(path=str(project))
    return {"project": project, "urls": urls, "env": {**local_cluster["env"], "PREFECT_API_URL": prefect_api}}


def test_weights_hold_and_the_shadow_never_answers_a_client(split):
    url = split["urls"]["split"]
    assert url.endswith("/split")
    with httpx.Client(timeout=30) as client:
        answers = [client.post(url, json={"x": i}) for i in range(REQUESTS)]
    assert {r.status_code for r in answers} == {200}
    assert [r.json()["prediction"] for r in answers] == [LABELS[i % 3] for i in range(REQUESTS)]  # never c's
    tags = Counter(r.json()["tag"] for r in answers)
    for tag, p in (("a", 0.7), ("b", 0.3)):
        tolerance = 4 * math.sqrt(REQUESTS * p * (1 - p))  # binomial, 4 standard deviations
        assert abs(tags[tag] - p * REQUESTS) <= tolerance, tags
    backend = LocalBackend()
    report = wait_for(lambda: _finished(backend, REQUESTS // 2), 30, what="every mirrored request compared")
    assert report.mirrored == REQUESTS // 2 and report.shadow_errors == 0
    assert 0.17 < report.agreement_rate < 0.3, report  # c agrees with a on 1 request in 3, never with b
    print(f"\nsplit over {REQUESTS} requests: a {tags['a']}, b {tags['b']} (70/30); shadow c: "
          f"{report.mirrored} mirrored, agreement {report.agreement_rate:.1%}")  # fmt: skip
    shown = cli("get", "split", env=split["env"])
    assert shown.returncode == 0, shown.stderr
    assert "70%" in shown.stdout and "50% mirrored" in shown.stdout and "/split" in shown.stdout


def test_an_api_a_splitter_uses_cannot_be_deleted(split):
    refused = cli("delete", "b", env=split["env"])
    assert refused.returncode == 1
    assert "TrafficSplitter 'split' sends traffic to it" in refused.stderr, refused.stderr
    assert httpx.post(split["urls"]["b"], json={"x": 1}).json()["tag"] == "b"  # still serving
    assert cli("delete", "split", env=split["env"]).returncode == 0
    assert httpx.post(split["urls"]["a"].replace("/a", "/split"), json={"x": 1}).status_code == 404
    assert cli("delete", "b", env=split["env"]).returncode == 0


def test_a_splitter_naming_an_api_that_is_nowhere_changes_nothing(split, tmp_path):
    splitter = {"name": "other", "kind": "TrafficSplitter",
                "apis": [{"name": "a", "weight": 50}, {"name": "ghost", "weight": 50}]}  # fmt: skip
    project = write(tmp_path / "other", [api("d", "d"), splitter])
    done = cli("deploy", str(project), env=split["env"])
    assert done.returncode != 0
    assert "'ghost' is not deployed" in done.stderr, done.stderr
    names = {s.name for s in asyncio.run(LocalBackend().list_apis())}
    assert names == {"a", "b", "c", "split"}  # neither d nor the splitter was created


def _finished(backend: LocalBackend, count: int) -> Any:
    report = asyncio.run(backend.shadow_report("split"))
    return report if report is not None and report.finished >= count else None
