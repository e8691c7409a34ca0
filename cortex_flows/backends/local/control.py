"""The agent's control API: loopback only, every request authenticated by the home's token file."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cortex_flows.backends.base import BackendError, NotFound, Outcome, SplitterSpec, VersionSpec
from cortex_flows.backends.local.agent import Agent


class ApplyBody(BaseModel):
    version: VersionSpec
    replicas: int
    secret_env: dict[str, str] | None = None


class TrafficBody(BaseModel):
    weights: dict[int, int]
    mirror: int | None = None
    mirror_share: float = 0.0


class ScaleBody(BaseModel):
    replicas: int
    arm: bool = False


def _error(status: int, message: str, transient: bool = False) -> JSONResponse:
    return JSONResponse({"error": message, "transient": transient}, status_code=status)


def control_app(agent: Agent, token: str, stop: asyncio.Event) -> Starlette:
    """Routes mirror the Backend protocol one to one."""

    def guarded(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _error(401, "missing or wrong agent token")
            try:
                return await fn(request)
            except NotFound as exc:
                return _error(404, str(exc))
            except BackendError as exc:
                return _error(exc.status or 500, str(exc), exc.transient)
            except (ValidationError, json.JSONDecodeError, ValueError) as exc:
                return _error(400, f"bad request: {exc}")

        return endpoint

    async def info(request: Request) -> Response:
        return JSONResponse({"apis": len(agent.names()), "gateway_port": agent.gateway.port})

    async def list_apis(request: Request) -> Response:
        return JSONResponse([agent.status(name).model_dump(mode="json") for name in agent.names()])

    async def get_api(request: Request) -> Response:
        return JSONResponse(agent.status(request.path_params["api"]).model_dump(mode="json"))

    async def delete_api(request: Request) -> Response:
        return JSONResponse({"deleted": await agent.delete_api(request.path_params["api"])})

    async def apply(request: Request) -> Response:
        body = ApplyBody.model_validate_json(await request.body())
        if body.version.revision != request.path_params["rev"]:
            raise ValueError("revision in path and body differ")
        await agent.apply_version(request.path_params["api"], body.version, body.replicas, body.secret_env)
        return JSONResponse({"ok": True})

    async def remove(request: Request) -> Response:
        outcome = Outcome(request.query_params.get("outcome", Outcome.SUPERSEDED))
        await agent.remove_version(request.path_params["api"], request.path_params["rev"], outcome)
        return JSONResponse({"ok": True})

    async def scale(request: Request) -> Response:
        body = ScaleBody.model_validate_json(await request.body())
        await agent.scale_version(request.path_params["api"], request.path_params["rev"], body.replicas, body.arm)
        return JSONResponse({"ok": True})

    async def outcome(request: Request) -> Response:
        value = Outcome(json.loads(await request.body())["outcome"])
        await agent.record_outcome(request.path_params["api"], request.path_params["rev"], value)
        return JSONResponse({"ok": True})

    async def traffic(request: Request) -> Response:
        body = TrafficBody.model_validate_json(await request.body())
        await agent.set_traffic(request.path_params["api"], body.weights, body.mirror, body.mirror_share)
        return JSONResponse({"ok": True})

    async def probe(request: Request) -> Response:
        body = await request.body()
        status, text = await agent.probe(
            request.path_params["api"], request.path_params["rev"], json.loads(body)["payload"] if body else None
        )
        return JSONResponse({"status": status, "body": text})

    async def metrics(request: Request) -> Response:
        result = await agent.version_metrics(request.path_params["api"], request.path_params["rev"])
        # model_dump_json, not JSONResponse: the +Inf latency bucket is not JSON, pydantic writes "Infinity"
        return Response(result.model_dump_json(), media_type="application/json")

    async def shadow(request: Request) -> Response:
        report = agent.shadow_report(request.path_params["api"])
        return Response("null" if report is None else report.model_dump_json(), media_type="application/json")

    async def splitter(request: Request) -> Response:
        body = SplitterSpec.model_validate_json(await request.body())
        if body.name != request.path_params["name"]:
            raise ValueError("splitter name in path and body differ")
        await agent.apply_splitter(body)
        return JSONResponse({"ok": True})

    async def history(request: Request) -> Response:
        revisions = agent.history(request.path_params["api"])
        return JSONResponse([r.model_dump(mode="json") for r in revisions])

    async def logs(request: Request) -> Response:
        tail = int(request.query_params.get("tail", "200"))
        return PlainTextResponse(agent.logs(request.path_params["api"], tail))

    async def shutdown(request: Request) -> Response:
        stop.set()
        return JSONResponse({"ok": True})

    api = "/v1/apis/{api:str}"
    version = api + "/versions/{rev:int}"
    routes = [
        Route("/v1/info", guarded(info)),
        Route("/v1/shutdown", guarded(shutdown), methods=["POST"]),
        Route("/v1/apis", guarded(list_apis)),
        Route(api, guarded(get_api)),
        Route(api, guarded(delete_api), methods=["DELETE"]),
        Route(api + "/traffic", guarded(traffic), methods=["PUT"]),
        Route(api + "/history", guarded(history)),
        Route(api + "/shadow", guarded(shadow)),
        Route("/v1/splitters/{name:str}", guarded(splitter), methods=["PUT"]),
        Route(api + "/logs", guarded(logs)),
        Route(version, guarded(apply), methods=["PUT"]),
        Route(version, guarded(remove), methods=["DELETE"]),
        Route(version + "/replicas", guarded(scale), methods=["PUT"]),
        Route(version + "/outcome", guarded(outcome), methods=["PUT"]),
        Route(version + "/probe", guarded(probe), methods=["POST"]),
        Route(version + "/metrics", guarded(metrics)),
    ]
    return Starlette(routes=routes)
