"""A Kubernetes API for tests: kmock's emulator served over real HTTP from a thread of its own, with a
small status simulator that plays the Deployment controller, and ways to make the API misbehave."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
from collections.abc import Callable
from typing import Any, Self

import kmock
from aiohttp import web

from cortex_flows.backends.kubernetes.api import KINDS

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
SECRETS = kmock.resource("", "v1", "secrets")
# kmock matches each request against every request it kept (its cost per request grows with them). It
# appends a request and matches it with no await between, and the front trims the log just before handing
# it a request, so the log stays this short however many requests wait in the front (latency, faults).
KEPT_REQUESTS = 4
_PROXY = re.compile(r"/namespaces/([^/]+)/services/([^/:]+)(:\w+)?/proxy(/|$)")


class KubeServer:
    """`with KubeServer() as kube:` -> `kube.url` answers the Kubernetes API until the block ends.

    Requests pass through a front server that can misbehave as a loaded API server does (`failure_rate`
    of calls answered 429/500/409 without being served; a 422 for writes of the objects in `invalid`) and
    answers the service proxy (`probe`) as a ready replica. Every 50 ms the simulator sets each Deployment's status
    to its spec (all replicas updated, ready and available), unless its name is in `stuck`, whose status
    gets the `ProgressDeadlineExceeded` condition a real controller reports.
    """

    def __init__(self) -> None:
        self.stuck: set[str] = set()
        self.failure_rate = 0.0  # share of API calls answered 429/500/409 before being served
        self.failures: list[int] = []
        self.invalid: dict[str, str] = {}  # object name -> message of a 422 for any write to it
        self.latency = 0.0  # seconds each call takes before it is served (a remote API server's round trip)
        self.proxied: list[tuple[str, str, str | None]] = []  # (method, service, X-Api-Key) through the proxy
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("kmock did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator:
            self.k = emulator
            for group, version, plural in KINDS.values():  # as a real cluster (with KEDA, Gateway API) serves
                emulator.resources[f"{group}/{version}/{plural}".lstrip("/")] = {}
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{path:.*}", self._front)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
            simulator = asyncio.create_task(self._simulate())
            self._ready.set()
            await self._stop.wait()
            simulator.cancel()
            await runner.cleanup()

    async def _front(self, request: web.Request) -> web.StreamResponse:
        """What the API server answers: the service proxy, injected faults, else kmock's answer."""
        body = await request.read()
        if self.latency:
            await asyncio.sleep(self.latency)
        if proxied := _PROXY.search(request.path):
            return self._replica(request, namespace=proxied[1], service=proxied[2])
        if request.method in ("POST", "PATCH", "PUT"):
            name = _name_of(body) or request.path.rsplit("/", 1)[-1]
            if name in self.invalid:
                return _status(422, "Invalid", self.invalid[name])
        if self.failure_rate and random.random() < self.failure_rate:
            code = random.choice((429, 500, 409))
            self.failures.append(code)
            reason = {429: "TooManyRequests", 500: "InternalError", 409: "Conflict"}[code]
            headers = {"Retry-After": "0"} if code == 429 else {}
            return _status(code, reason, f"injected {code}", headers)
        del self.k._requests[:-KEPT_REQUESTS]  # tests assert on objects, not requests: keep the recent ones
        return await self.k(request)

    def _replica(self, request: web.Request, namespace: str, service: str) -> web.Response:
        """A ready replica behind the service proxy; like ours, it answers a POST only with one of the API's
        keys when it has any (the API server keeps the Authorization header, so the key is `X-Api-Key`)."""
        self.proxied.append((request.method, service, request.headers.get("X-Api-Key")))
        api = re.sub(r"-r\d+$", "", service)
        secret = next((obj for (kind, ns, name), obj in list(self.k.objects.items())
                       if kind == SECRETS and ns == namespace and name == f"{api}-api-keys" and not obj.deleted), None)  # fmt: skip
        if request.method == "POST" and secret is not None:
            keys = json.loads(secret.raw["stringData"]["api-keys"])
            if request.headers.get("X-Api-Key") not in keys:
                return web.json_response({"error": "missing or unknown API key"}, status=401)
        return web.json_response({"status": "ready"})

    async def _simulate(self) -> None:
        while True:
            for key in list(self.k.objects.keys()):
                resource, _namespace, name = key
                if resource != DEPLOYMENTS:
                    continue
                obj = self.k.objects[key]
                if obj.deleted:
                    continue
                replicas = int((obj.raw.get("spec") or {}).get("replicas") or 0)
                if name in self.stuck:
                    status = {"replicas": replicas, "readyReplicas": 0, "conditions": [{
                        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                        "message": f'ReplicaSet "{name}" has timed out progressing.'}]}  # fmt: skip
                else:
                    status = {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
                              "availableReplicas": replicas}  # fmt: skip
                if obj.raw.get("status") != status:
                    obj.patch({"status": status})
            await asyncio.sleep(0.05)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop (to read or change the emulator's objects safely)."""
        return asyncio.run_coroutine_threadsafe(_as_coroutine(fn), self._loop).result(10)

    def objects(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every live object as (kind, name) -> its stored body, sorted keys (for byte comparisons)."""

        def read() -> dict[tuple[str, str], dict[str, Any]]:
            out = {}
            for (_, _, name), obj in list(self.k.objects.items()):
                if not obj.deleted:
                    raw = json.loads(json.dumps(obj.raw, sort_keys=True))
                    raw.pop("status", None)
                    out[(raw.get("kind", ""), name)] = raw
            return out

        return self.call(read)

    def kubeconfig(self, namespace: str = "ml") -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Config", "current-context": "kmock",
                "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": namespace}}],
                "users": [{"name": "kmock", "user": {"token": "kmock-token"}}]}  # fmt: skip


def _name_of(body: bytes) -> str | None:
    try:
        return json.loads(body)["metadata"]["name"]
    except (ValueError, KeyError, TypeError):
        return None


def _status(code: int, reason: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    status = {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason,
              "message": message}  # fmt: skip
    return web.json_response(status, status=code, headers=headers)


async def _as_coroutine(fn: Callable[[], Any]) -> Any:
    return fn()

