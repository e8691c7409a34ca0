"""The floor: the smallest Starlette app on uvicorn that serves the iris model, nothing a real server adds.

It calls the same built-in `SklearnHandler` as our replica, the same way (sync, in Starlette's thread pool),
with the same uvicorn settings (httptools, uvloop, no access log), so ours / floor is what our admission
control, metrics, request ids and error handling cost. Runs from the project's own environment.

    .venv/bin/python bench/servers/starlette_floor.py --model iris.joblib --port 8080
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from cortex_flows.serving.handlers import SklearnHandler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args()
    handler = SklearnHandler(args.model)

    async def predict(request: Request) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(handler.handle_post, await request.json()))

    async def readyz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", readyz)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, http="httptools", loop="uvloop", access_log=False,
                log_level="warning")  # fmt: skip


if __name__ == "__main__":
    main()
