"""KServe's Python ModelServer serving the iris model as a `kserve.Model` (V1 protocol), one worker, no gRPC.

Per-request logging (uvicorn's access log, KServe's latency and timing traces) is off, as in the other
servers. KServe binds 0.0.0.0 with no option to change it, so its uvicorn config is pinned to loopback.

    python bench/servers/kserve_server.py --model iris.joblib --port 8080   # POST /v1/models/iris:predict
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import joblib
import kserve
import uvicorn


class LoopbackConfig(uvicorn.Config):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "host": "127.0.0.1"})


class Iris(kserve.Model):
    def __init__(self, model_path: str) -> None:
        super().__init__("iris")
        self.model = joblib.load(model_path)
        self.ready = True

    def predict(self, payload: dict, headers: dict | None = None) -> dict:
        return {"predictions": self.model.predict(payload["instances"]).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args()
    uvicorn.Config = LoopbackConfig  # type: ignore[misc]  # read when KServe builds its REST server
    server = kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False, enable_latency_logging=False)
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([Iris(args.model)])


if __name__ == "__main__":
    main()
