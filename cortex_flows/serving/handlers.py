"""Load the code that answers a replica's requests: a user's `class Handler` or the built-in sklearn one.

Cortex's interfaces are duck-typed by argument name: `__init__` may take any of `config`, `model_path`,
`model_dir`; the request method (`handle_post` of a handler-era `Handler`, or `predict` of a
predictor-era `PythonPredictor`) any of `payload`, `query_params`, `headers`; an optional `post_predict`
also `response`. We inspect signatures once at load time, so user classes declare only what they use
and the hot path pays nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import inspect
import logging
import os
import pickle
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from cortex_flows.serving.config import ReplicaConfig, S3Access

INIT_ARGS = ("config", "model_path", "model_dir")
CALL_ARGS = ("payload", "query_params", "headers")
POST_PREDICT_ARGS = ("response", "payload", "query_params", "headers")
REQUEST_METHODS = ("handle_post", "predict")  # handler era, predictor era

log = logging.getLogger("cortex_flows.serving")


class BadRequest(Exception):
    """The payload is not what the handler expects; answered with 400 and this message."""


class HandlerLoadError(Exception):
    """The handler cannot be loaded; the message is a one-line reason for the supervisor."""


def accepted_args(func: Callable[..., Any], offered: Iterable[str], *, what: str) -> tuple[str, ...]:
    """The names among `offered` that `func` accepts by keyword (all of them if it takes **kwargs).

    Raises HandlerLoadError if `func` requires an argument we cannot supply, so a mismatch is reported
    at load time rather than as a 500 on every request.
    """
    offered = tuple(offered)
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # e.g. a class without its own __init__
        return ()
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [
        p.name
        for p in params
        if p.default is p.empty and p.name not in offered and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if missing:
        raise HandlerLoadError(
            f"{what} requires argument(s) {', '.join(missing)}; only {', '.join(offered)} are supplied"
        )
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return offered
    names = {p.name for p in params if p.kind in by_keyword}
    return tuple(name for name in offered if name in names)


class Invoker:
    """Calls a handler's request method with the arguments it accepts: sync in a thread, async awaited."""

    def __init__(
        self,
        handle_post: Callable[..., Any],
        executor: Executor,
        *,
        what: str,
        post_predict: Callable[..., Any] | None = None,
    ) -> None:
        accepted = accepted_args(handle_post, CALL_ARGS, what=what)
        self._post_args = (
            accepted_args(post_predict, POST_PREDICT_ARGS, what=f"{what} post_predict") if post_predict else ()
        )
        wanted = {*accepted, *self._post_args}
        self.wants_query_params = "query_params" in wanted
        self.wants_headers = "headers" in wanted
        self._pass = tuple(name in accepted for name in CALL_ARGS)
        self._handle_post = handle_post
        self.post_predict = post_predict
        self._executor = executor

    async def __call__(
        self, payload: Any, query_params: dict[str, str] | None, headers: dict[str, str] | None
    ) -> Any:
        """Run the handler; the caller builds `query_params`/`headers` only if `wants_*` says so."""
        passed = zip(CALL_ARGS, (payload, query_params, headers), self._pass, strict=True)
        kwargs = {name: value for name, value, wanted in passed if wanted}
        return await self._run(self._handle_post, kwargs)

    async def after_response(
        self, response: Any, payload: Any, query_params: dict[str, str] | None, headers: dict[str, str] | None
    ) -> None:
        """Cortex's `post_predict`, called once the response is sent; a failure is logged, never raised."""
        if self.post_predict is None:
            return
        values = {"response": response, "payload": payload, "query_params": query_params, "headers": headers}
        try:
            await self._run(self.post_predict, {name: values[name] for name in self._post_args})
        except Exception:
            log.exception("post_predict raised")

    async def _run(self, method: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(method):
            return await method(**kwargs)
        call = functools.partial(method, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)


def load_handler(config: ReplicaConfig, project_dir: Path, cache_dir: Path, executor: Executor) -> Invoker:
    """Resolve the model, construct the handler and wrap its `handle_post`. Blocking: run in a thread."""
    model_path = resolve_model_path(config.model_path, project_dir, cache_dir, config.s3)
    if config.handler.type == "sklearn":
        if model_path is None:
            raise HandlerLoadError("handler type sklearn needs model_path")
        return Invoker(SklearnHandler(model_path).handle_post, executor, what="sklearn handler")
    if not config.handler.path:
        raise HandlerLoadError("handler type python needs handler.path")
    if config.handler.python_path:
        add_python_path(project_dir, config.handler.python_path)
    cls = import_handler_class(project_dir, config.handler.path, config.handler.class_name)
    model_dir = (
        project_dir if model_path is None else model_path if model_path.is_dir() else model_path.parent
    )
    offered = {
        "config": config.config,
        "model_path": None if model_path is None else str(model_path),
        "model_dir": str(model_dir),
    }
    name = cls.__name__
    kwargs = {arg: offered[arg] for arg in accepted_args(cls, INIT_ARGS, what=f"{name}.__init__")}
    try:
        instance = cls(**kwargs)
    except Exception as exc:
        raise HandlerLoadError(f"{name}.__init__ raised {type(exc).__name__}: {exc}") from exc
    method = next((m for m in REQUEST_METHODS if callable(getattr(instance, m, None))), None)
    if method is None:
        raise HandlerLoadError(f"class {name} has no handle_post (Handler) or predict (PythonPredictor) method")
    post_predict = getattr(instance, "post_predict", None)
    return Invoker(
        getattr(instance, method),
        executor,
        what=f"{name}.{method}",
        post_predict=post_predict if callable(post_predict) else None,
    )


def add_python_path(project_dir: Path, python_path: str) -> None:
    """Cortex's `python_path`: a project directory whose modules the handler imports as top-level ones."""
    directory = str((project_dir / python_path).resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)


def import_handler_class(project_dir: Path, rel_path: str, class_name: str) -> type:
    """Import `rel_path` as a module with the project dir importable, and return its handler class."""
    path = (project_dir / rel_path).resolve()
    if not path.is_file():
        raise HandlerLoadError(f"handler file {rel_path} not found in {project_dir}")
    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))
    # The file's own name lets the user's other modules (and pickles) import it; never shadow a module.
    module_name = path.stem if path.stem not in sys.modules else f"_cortex_handler_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"cannot import {rel_path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise HandlerLoadError(f"importing {rel_path} raised {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise HandlerLoadError(f"{rel_path} defines no class {class_name}")
    return cls


def resolve_model_path(
    model_path: str | None, project_dir: Path, cache_dir: Path, s3: S3Access | None
) -> Path | None:
    """A local path for the model: relative to the project, absolute, or downloaded from s3://."""
    if model_path is None:
        return None
    if model_path.startswith("s3://"):
        return download_s3_model(model_path, cache_dir, s3)
    path = Path(model_path).expanduser()
    path = path if path.is_absolute() else project_dir / path
    if not path.exists():
        raise HandlerLoadError(f"model_path {model_path} not found (looked at {path})")
    return path


def download_s3_model(uri: str, cache_dir: Path, s3: S3Access | None) -> Path:
    """Download an s3:// model once per object version (ETag) into the shared cache; atomic rename
    so replicas starting together never read a partial file."""
    from cortex_flows.aws.clients import s3_client

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key or key.endswith("/"):
        raise HandlerLoadError(f"model_path {uri} must name one object: s3://bucket/key")
    try:
        client = s3_client(endpoint_url=s3.endpoint_url if s3 else None, region=s3.region if s3 else None)
        etag = client.head_object(Bucket=bucket, Key=key)["ETag"]
        digest = hashlib.sha256(f"{uri}\n{etag}".encode()).hexdigest()[:32]
        target = cache_dir / "models" / digest / Path(key).name
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        client.download_file(bucket, key, str(partial))
        os.replace(partial, target)
    except Exception as exc:
        raise HandlerLoadError(f"cannot download model {uri}: {type(exc).__name__}: {exc}") from exc
    return target


EXPECTED_SKLEARN_PAYLOAD = (
    'expected a JSON object {"features": [x1, x2, ...]} or {"instances": [[x1, x2, ...], ...]}'
)


class SklearnHandler:
    """Built-in handler for a scikit-learn estimator saved with joblib (or pickle)."""

    def __init__(self, model_path: Path) -> None:
        self.model = load_model(model_path)
        if not callable(getattr(self.model, "predict", None)):
            raise HandlerLoadError(
                f"{model_path.name} holds a {type(self.model).__name__}, which has no predict"
            )
        self.n_features: int | None = getattr(self.model, "n_features_in_", None)

    def handle_post(self, payload: Any) -> dict[str, Any]:
        """`{"features": [...]}` -> `{"prediction": p}`; `{"instances": [[...], ...]}` -> `{"predictions": [...]}`."""
        if isinstance(payload, dict) and isinstance(payload.get("features"), list):
            return {"prediction": self._predict([payload["features"]])[0]}
        if (
            isinstance(payload, dict)
            and isinstance(instances := payload.get("instances"), list)
            and instances
            and all(isinstance(row, list) for row in instances)
        ):
            return {"predictions": self._predict(instances)}
        raise BadRequest(EXPECTED_SKLEARN_PAYLOAD)

    def _predict(self, rows: list[list[Any]]) -> list[Any]:
        if self.n_features is not None:
            for row in rows:
                if len(row) != self.n_features:
                    raise BadRequest(f"expected {self.n_features} features per row, got {len(row)}")
        try:
            predictions = self.model.predict(rows)
        except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: an integer beyond float range
            raise BadRequest(f"the model rejected the input: {exc}") from exc
        return json_safe(predictions)


def load_model(path: Path) -> Any:
    """joblib first (it reads plain pickles too); pickle as the fallback for what joblib refuses."""
    import joblib

    try:
        return joblib.load(path)
    except Exception as joblib_error:
        with contextlib.suppress(Exception), path.open("rb") as file:
            return pickle.load(file)
        raise HandlerLoadError(
            f"cannot load model {path.name}: {type(joblib_error).__name__}: {joblib_error}"
        ) from joblib_error


def json_safe(value: Any) -> Any:
    """numpy arrays and scalars -> Python lists and scalars; anything else unchanged."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value
