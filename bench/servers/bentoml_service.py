"""BentoML serving the iris model: one worker, a sync API (BentoML runs it in its thread pool), access log off.

    BENCH_MODEL=iris.joblib bentoml serve bentoml_service:Iris --working-dir bench/servers --host 127.0.0.1 --port 8080
"""

from __future__ import annotations

import os

import bentoml
import joblib


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Iris:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_MODEL"])

    @bentoml.api
    def predict(self, instances: list[list[float]]) -> dict:
        return {"predictions": self.model.predict(instances).tolist()}
