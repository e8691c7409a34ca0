"""Train the example iris classifier on scikit-learn's bundled data set and save it beside this file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent


def split(seed: int = 0, holdout: float = 0.3) -> list[Any]:
    """Iris features and species names, split into x_train, x_test, y_train, y_test (stratified)."""
    iris = load_iris()
    labels = iris.target_names[iris.target]
    return train_test_split(iris.data, labels, test_size=holdout, random_state=seed, stratify=labels)


def make_model(seed: int = 0) -> Pipeline:
    """The unfitted classifier: standardised features into a logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


def train(out: Path = HERE / "model.joblib", seed: int = 0) -> float:
    """Fit, report held-out accuracy, save. Labels are species names, so predictions read as words."""
    x_train, x_test, y_train, y_test = split(seed)
    model = make_model(seed)
    model.fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    joblib.dump(model, out)
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "model.joblib")
    args = parser.parse_args()
    print(f"held-out accuracy {train(args.out):.3f}; model saved to {args.out}")
