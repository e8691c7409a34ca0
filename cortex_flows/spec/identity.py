"""Spec identity, after Cortex (reference §1.5): which changes restart replicas, and which only re-tune.

`pod_hash` covers what a replica is built from (package, handler, model, config, resources, admission);
`spec_hash` adds what the control plane applies without restarting replicas (autoscaling, update
strategy, networking, canary policy). Both hash canonical JSON of validated models, whose defaults are
already resolved, so writing a default explicitly, omitting it, or reordering YAML keys never changes a
hash. Fields added after the first release (`ADDED_POD_FIELDS`, `ADDED_SPEC_FIELDS`) enter the identity
only when they differ from their default, so upgrading cortex-flows does not change the hashes of APIs
that do not use them (and roll their pods).

API keys (`networking.api_keys`) name a Secret block; the pod hash covers a slow digest of the keys it
holds (`keys_digest`, computed where the block is loaded), so new keys roll the replicas while the keys
themselves never enter a hash that is shown.

A TrafficSplitter has no pods: `splitter_spec_hash` covers all of its fields.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cortex_flows.spec.models import (
    Canary,
    Compute,
    Dependencies,
    RealtimeAPI,
    TrafficSplitter,
    UpdateStrategy,
)

POD_FIELDS = ("handler", "model_path", "config", "env", "dependencies", "compute", "pod")
# Dotted paths of fields added since the first release -> their defaults (as dumped to JSON). A block left
# out whole at its defaults takes its own added fields with it.
ADDED_POD_FIELDS = {"env": {}, "dependencies": Dependencies().model_dump(mode="json"), "handler.python_path": None}
SPEC_FIELDS = ("autoscaling", "update_strategy", "networking", "canary")
ADDED_SPEC_FIELDS = {
    "update_strategy.progress_deadline": UpdateStrategy().progress_deadline,
    "canary": Canary().model_dump(mode="json"),  # rollout policy: never restarts replicas
    "canary.min_agreement": None,
    "networking.api_keys": None,
}
HASH_LENGTH = 32  # hex characters, as Cortex truncates its spec ids


def pod_hash(api: RealtimeAPI, package_id: str, restart: str = "", keys_digest: str = "") -> str:
    """Changes exactly when running replicas must be replaced; `restart` is a refresh's token,
    `keys_digest` the digest of the API's keys (empty without keys)."""
    identity = _without_added_defaults(
        api.model_dump(mode="json", include={"name", "kind", *POD_FIELDS}), ADDED_POD_FIELDS
    )
    identity["compute"] = _compute_identity(api.compute)
    identity["package_id"] = package_id
    if restart:
        identity["restart"] = restart
    if keys_digest:
        identity["api_keys"] = keys_digest
    return _digest(identity)


def spec_hash(api: RealtimeAPI, package_id: str, restart: str = "", keys_digest: str = "") -> str:
    """Changes whenever anything deployable changes; equal spec hashes mean nothing to do."""
    identity = _without_added_defaults(api.model_dump(mode="json", include=set(SPEC_FIELDS)), ADDED_SPEC_FIELDS)
    identity["pod_hash"] = pod_hash(api, package_id, restart, keys_digest)
    return _digest(identity)


def splitter_spec_hash(splitter: TrafficSplitter) -> str:
    """Changes whenever the splitter's routing changes; the order its APIs are listed in does not count."""
    identity = splitter.model_dump(mode="json")
    identity["apis"].sort(key=lambda target: target["name"])
    return _digest(identity)


def _without_added_defaults(identity: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """Leave out fields added since the first release while they hold their defaults, so upgrading
    cortex-flows never changes the hashes of what runs.

    Outer paths go first: a block that holds its defaults (new fields included) leaves as a whole, and
    then the new fields inside it have nothing left to compare.
    """
    for path in sorted(added, key=lambda path: path.count(".")):
        *parents, name = path.split(".")
        parent = identity
        for key in parents:
            parent = parent.get(key, {})
        if name in parent and parent[name] == added[path]:
            del parent[name]
    return identity


def _compute_identity(compute: Compute) -> dict[str, int | None]:
    """Parsed quantities, so "0.2" and "200m" CPU are the same pod."""
    return {"cpu_millicores": compute.cpu_millicores, "gpu": compute.gpu, "mem_bytes": compute.mem_bytes}


def _digest(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]
