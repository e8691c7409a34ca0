"""The suite-wide secret check: no secret value saved in a block during the session may appear in what the
Prefect server recorded: flow run parameters, logs or artifacts. Run when the session's server stops."""

from __future__ import annotations

import json
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import LogFilter, LogFilterTextSearch
from prefect.logging.handlers import APILogWorker

MIN_LENGTH = 12  # shorter values (moto's "testing") are ordinary words, not secrets
PAGE = 200


def secret_values(client: SyncPrefectClient) -> set[str]:
    """Every secret field of every saved block document (the members of a JSON list or dict, too)."""
    values: set[str] = set()
    for document in client.read_block_documents(include_secrets=True):
        fields = (document.block_schema.fields if document.block_schema else {}) or {}
        for path in fields.get("secret_fields", []):
            values |= _strings(_at(document.data, path.split(".")))
    return {v for v in values if len(v) >= MIN_LENGTH}


def _at(data: Any, path: list[str]) -> Any:
    if not path:
        return data
    head, *rest = path
    if head == "*" and isinstance(data, dict):
        return [_at(value, rest) for value in data.values()]
    return _at(data[head], rest) if isinstance(data, dict) and head in data else None


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {value}
        return {value} | (_strings(parsed) if isinstance(parsed, list | dict) else set())
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_strings(v) for v in value))
    return set()


def leaks(client: SyncPrefectClient) -> list[str]:
    """Where a secret value shows up: '<place>: <first 6 characters>...'."""
    APILogWorker.drain_all()  # logs reach the server in batches
    secrets = secret_values(client)
    found = []
    for run in _all(client.read_flow_runs):
        text = json.dumps(run.parameters, default=str)
        found += [f"parameters of flow run {run.name}: {s[:6]}..." for s in secrets if s in text]
    for artifact in _all(client.read_artifacts):
        text = json.dumps(artifact.data, default=str) + (artifact.description or "")
        found += [f"artifact {artifact.key or artifact.id}: {s[:6]}..." for s in secrets if s in text]
    for secret in secrets:
        logged = client.read_logs(log_filter=LogFilter(text=LogFilterTextSearch(query=f'"{secret[:200]}"')), limit=5)
        found += [f"log of flow run {log.flow_run_id}: {secret[:6]}..." for log in logged if secret in log.message]
    return found


def _all(read: Any) -> list[Any]:
    items, offset = [], 0
    while page := read(limit=PAGE, offset=offset):
        items += page
        offset += PAGE
    return items
