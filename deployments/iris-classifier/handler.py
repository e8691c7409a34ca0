"""Serve the iris classifier: features in, species out."""

from __future__ import annotations

from pathlib import Path

import joblib


class Handler:
    def __init__(self, config: dict, model_dir: str) -> None:
        self.model = joblib.load(Path(model_dir) / config.get("model", "model.joblib"))

    def handle_post(self, payload: dict) -> dict:
        features = payload["features"]
        return {"prediction": str(self.model.predict([features])[0])}
