"""The revision history as an audit trail: spec diffs and the rows of `history` and its artifact."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cortex_flows.backends.base import Outcome, Revision, VersionSpec
from cortex_flows.rollout.history import COLUMNS, revision_rows, spec_diff
from cortex_flows.serving.config import HandlerRef, ReplicaConfig

SPEC = {
    "name": "iris",
    "config": {"note": "v1", "model": "model.joblib"},
    "autoscaling": {"min_replicas": 1, "max_replicas": 4},
    "networking": {"endpoint": "/iris"},
}


def test_spec_diff_of_nested_fields_is_sorted_dotted_paths():
    after = {
        **SPEC,
        "config": {**SPEC["config"], "note": "v2"},
        "autoscaling": {"min_replicas": 1, "max_replicas": 10},
    }
    assert spec_diff(SPEC, after) == ["autoscaling.max_replicas: 4 -> 10", "config.note: 'v1' -> 'v2'"]


def test_spec_diff_marks_added_and_removed_fields():
    after = {**SPEC, "config": {"model": "model.joblib", "tag": "b"}, "compute": {"cpu": "200m"}}
    assert spec_diff(SPEC, after) == [
        "compute.cpu: added '200m'",
        "config.note: removed 'v1'",
        "config.tag: added 'b'",
    ]


def test_spec_diff_compares_lists_whole():
    before = {"steps": [5, 25, 100], "deep": {"list": ["a"]}}
    after = {"steps": [5, 50, 100], "deep": {"list": ["a"]}}
    assert spec_diff(before, after) == ["steps: [5, 25, 100] -> [5, 50, 100]"]


def test_spec_diff_without_change_or_before():
    assert spec_diff(SPEC, dict(SPEC)) == []
    assert spec_diff({}, {}) == []
    assert spec_diff(None, {"a": {"b": 1}, "c": []}) == ["a.b: added 1", "c: added []"]
    assert spec_diff({"a": {"b": 1}}, {"a": 2}) == ["a: added 2", "a.b: removed 1"]


def _revision(n: int, spec: dict, outcome: Outcome, *, package: str = "a" * 64, restart: str = "",
              kept: bool = True, spec_hash: str | None = None) -> Revision:  # fmt: skip
    spec_hash = spec_hash or f"{n}" * 64
    version = VersionSpec(
        revision=n, endpoint="/iris", package_id=package, spec_hash=spec_hash, pod_hash="p",
        replica=ReplicaConfig(api_name="iris", handler=HandlerRef(type="sklearn")), spec=spec, restart=restart,
    )  # fmt: skip
    created = datetime(2024, 5, 1, 12, n, 30, tzinfo=timezone(timedelta(hours=2)))
    return Revision(revision=n, package_id=package, spec_hash=spec_hash, created=created, outcome=outcome,
                    version=version if kept else None)  # fmt: skip


def test_revision_rows_newest_first_with_changes_against_the_next_older():
    v2 = {**SPEC, "config": {**SPEC["config"], "note": "v2"}}
    history = [
        _revision(4, v2, Outcome.LIVE, restart="r1"),
        _revision(3, v2, Outcome.SUPERSEDED, package="b" * 64),
        _revision(2, v2, Outcome.SUPERSEDED),
        _revision(1, SPEC, Outcome.SUPERSEDED),
    ]
    rows = revision_rows(history)
    assert [tuple(r) for r in rows] == [COLUMNS] * 4
    assert rows[0] == {
        "revision": "4",
        "outcome": "live",
        "created": "2024-05-01T10:04Z",
        "package": "a" * 12,
        "spec hash": "4" * 12,
        "changes": f"package: {'b' * 12} -> {'a' * 12}",
    }
    assert rows[1]["changes"] == f"package: {'a' * 12} -> {'b' * 12}"
    assert rows[2]["changes"] == "config.note: 'v1' -> 'v2'"
    assert rows[3]["changes"] == "first revision"


def test_revision_rows_refresh_keys_unchanged_and_unkept_specs():
    history = [
        _revision(5, SPEC, Outcome.FAILED, kept=False),
        _revision(4, SPEC, Outcome.LIVE, restart="r2", spec_hash="k" * 64),
        _revision(3, SPEC, Outcome.SUPERSEDED, restart="r2"),
        _revision(2, SPEC, Outcome.ROLLED_BACK, restart="r1", spec_hash="1" * 64),  # the same version again
        _revision(1, SPEC, Outcome.SUPERSEDED, restart="r1"),
    ]
    assert [r["changes"] for r in revision_rows(history)] == [
        "spec not kept", "API keys changed", "restarted (refresh)", "no spec change", "first revision",
    ]  # fmt: skip
    assert revision_rows(history)[3]["outcome"] == "rolled-back"
    assert revision_rows([]) == []


def test_naive_created_times_are_utc():
    r = _revision(1, SPEC, Outcome.LIVE).model_copy(update={"created": datetime(2024, 5, 1, 9, 7, 59)})
    assert revision_rows([r])[0]["created"] == "2024-05-01T09:07Z"
