"""An API's revision history as an audit trail: what changed between revisions (pure, no I/O).

`revision_rows` feeds both `cortex-flows history NAME` and the `revisions-NAME` table artifact that
every deploy, rollback and refresh leaves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cortex_flows.backends.base import Revision

COLUMNS = ("revision", "outcome", "created", "package", "spec hash", "changes")
FIRST = "first revision"
UNCHANGED = "no spec change"
NOT_KEPT = "spec not kept"
KEYS_CHANGED = "API keys changed"  # the spec hash covers a digest of the keys, never the keys


def _flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted path -> leaf value; lists and empty dicts are leaves (compared whole)."""
    leaves: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            leaves.update(_flatten(value, f"{path}."))
        else:
            leaves[path] = value
    return leaves


def spec_diff(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """The fields that differ from `before` to `after`, sorted by path: `path: old -> new`, or
    `path: added new` / `path: removed old`. `before=None` counts every field as added."""
    old, new = _flatten(before or {}), _flatten(after)
    changes = []
    for path in sorted(old.keys() | new.keys()):
        if path not in old:
            changes.append(f"{path}: added {new[path]!r}")
        elif path not in new:
            changes.append(f"{path}: removed {old[path]!r}")
        elif old[path] != new[path]:
            changes.append(f"{path}: {old[path]!r} -> {new[path]!r}")
    return changes


def _minutes(when: datetime) -> str:
    """ISO time in UTC to the minute (naive times are taken as UTC)."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%MZ")


def _changes(revision: Revision, older: Revision | None) -> str:
    if older is None:
        return FIRST
    if revision.version is None or older.version is None:
        return NOT_KEPT
    changes = spec_diff(older.version.spec, revision.version.spec)
    if revision.package_id != older.package_id:
        changes.append(f"package: {older.package_id[:12]} -> {revision.package_id[:12]}")
    if not changes and revision.version.restart != older.version.restart:
        changes.append("restarted (refresh)")
    if not changes and revision.spec_hash != older.spec_hash:  # the one other input of the hash
        changes.append(KEYS_CHANGED)
    return "; ".join(changes) or UNCHANGED


def revision_rows(revisions: list[Revision]) -> list[dict[str, str]]:
    """One row per revision (keys: `COLUMNS`) in the given order, newest first; "changes" compares each
    revision with the next older one in the list."""
    return [
        {
            "revision": str(r.revision),
            "outcome": r.outcome.value,
            "created": _minutes(r.created),
            "package": r.package_id[:12],
            "spec hash": r.spec_hash[:12],
            "changes": _changes(r, revisions[i + 1] if i + 1 < len(revisions) else None),
        }
        for i, r in enumerate(revisions)
    ]
