"""Send one flower of each species to the deployed API and print what it answers."""

from __future__ import annotations

import argparse
import json
import os

import httpx

SAMPLES = {
    "setosa": [5.1, 3.5, 1.4, 0.2],
    "versicolor": [6.4, 3.2, 4.5, 1.5],
    "virginica": [6.3, 3.3, 6.0, 2.5],
}


def main() -> int:
    port = os.environ.get("CORTEX_FLOWS_GATEWAY_PORT", "8888")
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=f"http://127.0.0.1:{port}/iris-classifier")
    url = parser.parse_args().url
    wrong = 0
    for species, features in SAMPLES.items():
        body = json.dumps({"features": features})
        answer = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=10).json()
        print(f"POST {url} {body} -> {json.dumps(answer)}   (expected {species})")
        wrong += answer.get("prediction") != species
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
