"""Ray Serve serving the iris model: a local Ray on loopback, one replica behind Serve's HTTP proxy.

Ray Serve has no way to serve HTTP from the replica itself, so every request crosses the proxy actor, as
ours crosses the gateway. The replica's access log is off, as in the other servers. The whole process
group is stopped from outside (SIGTERM), which takes Ray's own processes with it.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 python bench/servers/ray_serve.py --model iris.joblib --port 8080
"""

from __future__ import annotations

import argparse
import threading

import joblib
import ray
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1, logging_config={"enable_access_log": False})
class Iris:  # max_ongoing_requests is set in main(), from --max-ongoing
    def __init__(self, model_path: str) -> None:
        self.model = joblib.load(model_path)

    async def __call__(self, request: Request) -> dict:
        payload = await request.json()
        return {"predictions": self.model.predict(payload["instances"]).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--temp-dir", required=True, help="Ray's session files (sockets, logs)")
    parser.add_argument("--max-ongoing", type=int, default=16, help="requests the replica admits at once")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2, log_to_driver=False,
             _temp_dir=args.temp_dir)  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = Iris.options(max_ongoing_requests=args.max_ongoing).bind(args.model)
    serve.run(app, route_prefix="/predict")
    threading.Event().wait()


if __name__ == "__main__":
    main()
