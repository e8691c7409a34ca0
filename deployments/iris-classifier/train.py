"""Train the example iris classifier on scikit-learn's bundled data set and save it beside this file."""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent


def train(out: Path = HERE / "model.joblib", seed: int = 0) -> float:
    """Fit, report held-out accuracy, save. Labels are species names, so predictions read as words."""
    iris = load_iris()
    labels = iris.target_names[iris.target]
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, labels, test_size=0.3, random_state=seed, stratify=labels
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    model.fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    joblib.dump(model, out)
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "model.joblib")
    args = parser.parse_args()
    print(f"held-out accuracy {train(args.out):.3f}; model saved to {args.out}")
