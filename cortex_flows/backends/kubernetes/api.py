"""A small Kubernetes REST layer over `kubernetes_asyncio`: server-side apply, get, list, delete of the
few kinds the backend manages, with retries of transient API errors.

One generic path per kind instead of the typed per-kind APIs: every object the backend writes is a plain
dict from `manifests`, and applying, reading and deleting them is the same request whatever the kind.
Transient answers (429 with its Retry-After, 5xx, 409 conflicts on update, timeouts, dropped
connections) are retried with backoff; anything else (422 validation, 403, 400) fails at once with the
API server's own message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, ApiException

from cortex_flows.backends.base import BackendError, NotFound

log = logging.getLogger("cortex_flows.kubernetes")

FIELD_MANAGER = "cortex-flows"
# kind -> (group, version, plural); group "" is the core API (/api/v1)
KINDS: dict[str, tuple[str, str, str]] = {
    "ConfigMap": ("", "v1", "configmaps"),
    "Secret": ("", "v1", "secrets"),
    "Service": ("", "v1", "services"),
    "Pod": ("", "v1", "pods"),
    "Deployment": ("apps", "v1", "deployments"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects"),
    "HTTPRoute": ("gateway.networking.k8s.io", "v1", "httproutes"),
    "Lease": ("coordination.k8s.io", "v1", "leases"),
}
RETRIES = 6
BACKOFF_SECONDS = 0.2  # doubled per attempt, with jitter; a Retry-After header takes precedence
MAX_BACKOFF_SECONDS = 10.0
TRANSIENT_STATUS = frozenset({409, 429, 500, 502, 503, 504})


class KubeApi:
    """The namespaced objects of one cluster, through an open `ApiClient`."""

    def __init__(self, client: ApiClient, namespace: str, *, retries: int = RETRIES) -> None:
        self.client = client
        self.namespace = namespace
        self.retries = retries
        self.calls = 0  # requests sent, retries included (for the benchmark's calls per deploy)

    def path(self, kind: str, name: str | None = None, sub: str = "") -> str:
        group, version, plural = KINDS[kind]
        base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        path = f"{base}/namespaces/{self.namespace}/{plural}"
        return f"{path}/{name}{sub}" if name else path

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply (field manager `cortex-flows`, forced); creates the object if it is missing.

        A real API server creates on apply; the fallback to create covers servers that do not (and the
        409 of a create racing another writer is retried as an apply)."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        for _ in range(3):
            try:
                return await self.request(
                    "PATCH", self.path(kind, name), obj, query, "application/apply-patch+yaml"
                )
            except NotFound:
                pass
            try:
                return await self.request("POST", self.path(kind), obj, retry_conflict=False)
            except BackendError as exc:
                if exc.status != 409:
                    raise
        raise BackendError(f"{kind}/{name}: kept disappearing and reappearing while applied", transient=True)

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", self.path(kind, name))
        except NotFound:
            return None

    async def list(self, kind: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects of `kind` carrying all `labels` (also filtered here: some servers ignore selectors)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        found = await self.request("GET", self.path(kind), query=[("labelSelector", selector)])
        items = found.get("items") or []
        return [o for o in items if labels.items() <= ((o.get("metadata") or {}).get("labels") or {}).items()]

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create; None when the object exists already (a 409 here is an answer, not a conflict)."""
        try:
            return await self.request("POST", self.path(obj["kind"]), obj, retry_conflict=False)
        except BackendError as exc:
            if exc.status == 409:
                return None
            raise

    async def merge(self, kind: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request(
            "PATCH", self.path(kind, name), patch, content_type="application/merge-patch+json"
        )

    async def delete(self, kind: str, name: str) -> bool:
        """Delete with foreground cascade (dependents first); False if it was not there."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}
        try:
            await self.request("DELETE", self.path(kind, name), body)
        except NotFound:
            return False
        return True

    async def text(self, path: str, query: list[tuple[str, str]] | None = None) -> str:
        """A GET answered with plain text (pod logs)."""
        return str(await self.request("GET", path, query=query, raw=True))

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        *,
        retry_conflict: bool = True,
        raw: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call with the retry policy; the decoded JSON answer (text when `raw`)."""
        attempt = 0
        while True:
            self.calls += 1
            try:
                answer = await self.client.call_api(
                    path, method, query_params=query or [], body=body,
                    header_params={"Content-Type": content_type, "Accept": "application/json, */*", **(headers or {})},
                    response_types_map={200: "str", 201: "str", 202: "str"}, auth_settings=["BearerToken"],
                    _return_http_data_only=True, _preload_content=False, _request_timeout=30,
                )  # fmt: skip
                text = await answer.text()
                if answer.status < 400:
                    return text if raw else (json.loads(text) if text else {})
                error = _error(method, path, answer.status, answer.reason or "", text)
                retry_after = _retry_after(answer.headers)
            except ApiException as exc:
                error = _error(method, path, int(exc.status or 0), exc.reason or "", exc.body or "")
                retry_after = _retry_after(exc.headers or {})
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = BackendError(f"{method} {path}: {type(exc).__name__}: {exc}", transient=True)
                retry_after = None
            retryable = error.transient and (retry_conflict or error.status != 409)
            if not retryable or attempt >= self.retries:
                raise error
            delay = (
                retry_after
                if retry_after is not None
                else BACKOFF_SECONDS * 2**attempt * random.uniform(0.5, 1.5)
            )
            log.info("kubernetes: %s; retrying in %.2fs", error, delay)
            await asyncio.sleep(min(delay, MAX_BACKOFF_SECONDS))
            attempt += 1


def _error(method: str, path: str, status: int, reason: str, body: str) -> BackendError:
    """The API server's Status message, as it wrote it."""
    try:
        message = json.loads(body or "{}").get("message") or reason
    except (ValueError, AttributeError):
        message = reason
    text = f"{method} {path}: {status} {reason}: {message}"
    if status == 404:
        return NotFound(text, status=404)
    return BackendError(text, status=status, transient=status in TRANSIENT_STATUS)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
