"""Handler loading and invocation, payload decoding, result encoding, the built-in sklearn handler."""

from __future__ import annotations

import asyncio
import math
import pickle
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cortex_flows.serving.codec import JSON, OCTET_STREAM, decode_payload, encode_result
from cortex_flows.serving.config import HandlerRef, ReplicaConfig
from cortex_flows.serving.handlers import (
    BadRequest,
    HandlerLoadError,
    Invoker,
    SklearnHandler,
    accepted_args,
    load_handler,
)
from tests.fixtures.serving.iris import SETOSA, VIRGINICA, train_iris_model

CALL = ("payload", "query_params", "headers")


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_iris_model(tmp_path_factory.mktemp("iris") / "model.joblib")


def python_config(project: Path, source: str, **fields: Any) -> ReplicaConfig:
    (project / "handler.py").write_text(textwrap.dedent(source))
    return ReplicaConfig(
        api_name="t", handler=HandlerRef(type="python", path="handler.py"), project_dir=str(project), **fields
    )


def load(config: ReplicaConfig, executor: ThreadPoolExecutor, tmp_path: Path) -> Invoker:
    return load_handler(config, Path(config.project_dir or tmp_path), tmp_path / "cache", executor)


def call(invoker: Invoker, payload: Any = None, query: Any = None, headers: Any = None) -> Any:
    return asyncio.run(invoker(payload, query, headers))


# --- signature inspection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (lambda payload: None, ("payload",)),
        (lambda headers, payload: None, ("payload", "headers")),
        (lambda: None, ()),
        (lambda payload, query_params, headers: None, CALL),
        (lambda *, query_params: None, ("query_params",)),
        (lambda payload, **kwargs: None, CALL),
        (lambda payload, extra=1: None, ("payload",)),
        (lambda payload, *args: None, ("payload",)),
    ],
)
def test_accepted_args_picks_what_the_signature_takes(func: Any, expected: tuple[str, ...]) -> None:
    assert accepted_args(func, CALL, what="f") == expected


def test_accepted_args_rejects_a_required_argument_we_cannot_supply() -> None:
    with pytest.raises(HandlerLoadError, match=r"f requires argument\(s\) python_client"):
        accepted_args(lambda payload, python_client: None, CALL, what="f")


@pytest.mark.parametrize(
    ("init", "expected"),
    [
        ("def __init__(self, config): self.seen = {'config': config}", {"config": {"k": 1}}),
        ("def __init__(self, model_dir): self.seen = {'model_dir': model_dir}", {"model_dir": "PROJECT"}),
        ("def __init__(self): self.seen = {}", {}),
        ("seen = {}", {}),  # no __init__ of its own
        (
            "def __init__(self, model_dir, config, **kw): self.seen = dict(kw, config=config, model_dir=model_dir)",
            {"config": {"k": 1}, "model_path": None, "model_dir": "PROJECT"},
        ),
    ],
)
def test_constructor_gets_only_the_arguments_it_accepts(
    tmp_path: Path, executor: ThreadPoolExecutor, init: str, expected: dict[str, Any]
) -> None:
    source = f"""
    class Handler:
        {init}
        def handle_post(self):
            return self.seen
    """
    invoker = load(python_config(tmp_path, source, config={"k": 1}), executor, tmp_path)
    expected = {k: str(tmp_path) if v == "PROJECT" else v for k, v in expected.items()}
    assert call(invoker) == expected


def test_model_path_resolves_against_the_project_and_model_dir_holds_it(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.bin").write_bytes(b"weights")
    source = """
    class Handler:
        def __init__(self, model_path, model_dir):
            self.paths = [model_path, model_dir]
        def handle_post(self):
            return self.paths
    """
    config = python_config(tmp_path, source, model_path="models/m.bin")
    assert call(load(config, executor, tmp_path)) == [
        str(tmp_path / "models" / "m.bin"),
        str(tmp_path / "models"),
    ]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("def handle_post(self, payload): return [payload]", [{"a": 1}]),
        (
            "def handle_post(self, query_params, payload): return [payload, query_params]",
            [{"a": 1}, {"q": "1"}],
        ),
        ("def handle_post(self, headers): return [headers]", [{"x-h": "v"}]),
        (
            "async def handle_post(self, payload, headers): return [payload, headers]",
            [{"a": 1}, {"x-h": "v"}],
        ),
        ("def handle_post(self, **kw): return sorted(kw)", ["headers", "payload", "query_params"]),
    ],
)
def test_handle_post_gets_only_the_arguments_it_accepts(
    tmp_path: Path, executor: ThreadPoolExecutor, method: str, expected: Any
) -> None:
    source = f"""
    class Handler:
        {method}
    """
    invoker = load(python_config(tmp_path, source), executor, tmp_path)
    assert call(invoker, {"a": 1}, {"q": "1"}, {"x-h": "v"}) == expected


def test_sync_handlers_run_in_a_worker_thread_and_async_ones_on_the_loop(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    source = """
    import threading
    class Handler:
        def handle_post(self):
            return threading.current_thread().name
    class AsyncHandler:
        async def handle_post(self):
            return threading.current_thread().name
    """
    config = python_config(tmp_path, source)
    assert call(load(config, executor, tmp_path)) != "MainThread"
    config.handler.class_name = "AsyncHandler"
    assert call(load(config, executor, tmp_path)) == "MainThread"


def test_the_project_dir_is_importable_from_the_handler(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    (tmp_path / "helpers_for_handler_test.py").write_text("VALUE = 42\n")
    source = """
    import helpers_for_handler_test
    class Handler:
        def handle_post(self):
            return helpers_for_handler_test.VALUE
    """
    assert call(load(python_config(tmp_path, source), executor, tmp_path)) == 42


@pytest.mark.parametrize(
    ("source", "class_name", "reason"),
    [
        (
            "class Handler:\n    def handle_post(self): pass\n",
            "Missing",
            "handler.py defines no class Missing",
        ),
        ("raise ImportError('no torch')\n", "Handler", "importing handler.py raised ImportError: no torch"),
        (
            "class Handler:\n    def __init__(self):\n        raise ValueError('bad weights')\n",
            "Handler",
            "Handler.__init__ raised ValueError: bad weights",
        ),
        (
            "class Handler:\n    pass\n",
            "Handler",
            r"class Handler has no handle_post \(Handler\) or predict \(PythonPredictor\) method",
        ),
        (
            "class P:\n    def predict(self): pass\n    def post_predict(self, tracker): pass\n",
            "P",
            r"P.predict post_predict requires argument\(s\) tracker",
        ),
        (
            "class Handler:\n    def __init__(self, tf_client): pass\n",
            "Handler",
            r"Handler.__init__ requires argument\(s\) tf_client",
        ),
    ],
)
def test_load_failures_have_a_readable_reason(
    tmp_path: Path, executor: ThreadPoolExecutor, source: str, class_name: str, reason: str
) -> None:
    config = python_config(tmp_path, source)
    config.handler.class_name = class_name
    with pytest.raises(HandlerLoadError, match=reason):
        load(config, executor, tmp_path)


def test_missing_handler_file_and_model_are_load_errors(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    config = ReplicaConfig(
        api_name="t", handler=HandlerRef(type="python", path="nope.py"), project_dir=str(tmp_path)
    )
    with pytest.raises(HandlerLoadError, match=r"handler file nope\.py not found"):
        load(config, executor, tmp_path)
    config = python_config(tmp_path, "class Handler: pass", model_path="absent.joblib")
    with pytest.raises(HandlerLoadError, match=r"model_path absent\.joblib not found"):
        load(config, executor, tmp_path)


# --- predictor era: PythonPredictor.predict and post_predict ---------------------------------------------


def test_a_python_predictor_is_called_through_predict(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    source = """
    class PythonPredictor:
        def __init__(self, config):
            self.scale = config["scale"]
        def predict(self, payload, query_params):
            return payload["x"] * self.scale + int(query_params.get("add", 0))
    """
    config = python_config(tmp_path, source, config={"scale": 3})
    config.handler.class_name = "PythonPredictor"
    assert call(load(config, executor, tmp_path), {"x": 2}, {"add": "1"}) == 7


def test_handle_post_wins_over_predict_when_a_class_has_both(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    source = """
    class Handler:
        def handle_post(self): return "handle_post"
        def predict(self): return "predict"
    """
    assert call(load(python_config(tmp_path, source), executor, tmp_path)) == "handle_post"


def test_post_predict_runs_after_the_response_with_the_arguments_it_takes(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    source = """
    class PythonPredictor:
        def __init__(self):
            self.seen = []
        def predict(self, payload):
            return {"label": payload["x"]}
        def post_predict(self, response, headers):
            self.seen.append((response, headers))
    """
    config = python_config(tmp_path, source)
    config.handler.class_name = "PythonPredictor"
    invoker = load(config, executor, tmp_path)
    assert invoker.wants_headers and not invoker.wants_query_params

    async def request() -> Any:
        result = await invoker({"x": 1}, None, {"h": "v"})
        await invoker.after_response(result, {"x": 1}, None, {"h": "v"})
        return result

    assert asyncio.run(request()) == {"label": 1}
    assert invoker.post_predict.__self__.seen == [({"label": 1}, {"h": "v"})]


def test_a_failing_post_predict_is_logged_not_raised(
    tmp_path: Path, executor: ThreadPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    source = """
    class Handler:
        def handle_post(self): return 1
        async def post_predict(self): raise RuntimeError("tracker down")
    """
    invoker = load(python_config(tmp_path, source), executor, tmp_path)
    asyncio.run(invoker.after_response(1, None, None, None))
    assert "post_predict raised" in caplog.text and "tracker down" in caplog.text


def test_python_path_makes_a_project_directory_importable(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "python_path_helper.py").write_text("VALUE = 'from lib'\n")
    source = """
    import python_path_helper
    class Handler:
        def handle_post(self): return python_path_helper.VALUE
    """
    config = python_config(tmp_path, source)
    config.handler.python_path = "lib"
    assert call(load(config, executor, tmp_path)) == "from lib"


# --- payloads and results -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"a": [1, 2]}', b"application/json", {"a": [1, 2]}),
        (b'{"a": 1}', b"application/json; charset=utf-8", {"a": 1}),
        (b'{"a": 1}', None, {"a": 1}),
        (b'{"a": 1}', b"application/vnd.api+json", {"a": 1}),
        (b"", None, None),
        (b"caf\xc3\xa9", b"text/plain", "café"),
        (b"caf\xe9", b"text/plain; charset=latin-1", "café"),
        (b"\x00\x01", b"application/octet-stream", b"\x00\x01"),
        (b"<x/>", b"application/xml", b"<x/>"),
        (b'{"a": 1}', b"application/x-www-form-urlencoded", {"a": 1}),
        (b"a=1&b=2", b"application/x-www-form-urlencoded", b"a=1&b=2"),
        (b"{not json", b"application/x-www-form-urlencoded", b"{not json"),
    ],
)
def test_decode_payload(body: bytes, content_type: bytes | None, expected: Any) -> None:
    assert decode_payload(body, content_type) == expected


@pytest.mark.parametrize(
    ("body", "content_type"), [(b"{bad", b"application/json"), (b"\xff", None), (b"\xff", b"text/plain")]
)
def test_undecodable_payloads_are_bad_requests(body: bytes, content_type: bytes | None) -> None:
    with pytest.raises(BadRequest):
        decode_payload(body, content_type)


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"a": [1, "é"]}, (JSON, '{"a":[1,"é"]}'.encode())),
        ([1, 2], (JSON, b"[1,2]")),
        ("text", (JSON, b'"text"')),
        (3, (JSON, b"3")),
        (2.5, (JSON, b"2.5")),
        (True, (JSON, b"true")),
        (None, (JSON, b"null")),
        (b"\x00raw", (OCTET_STREAM, b"\x00raw")),
        (
            {"p": np.float32(0.5), "v": np.arange(3), "c": np.str_("x")},
            (JSON, b'{"p":0.5,"v":[0,1,2],"c":"x"}'),
        ),
    ],
)
def test_encode_result(result: Any, expected: tuple[bytes, bytes]) -> None:
    assert encode_result(result) == expected


@pytest.mark.parametrize(("result", "error"), [({"x": object()}, TypeError), ({"x": math.nan}, ValueError)])
def test_unencodable_results_raise(result: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_result(result)


# --- built-in sklearn handler ---------------------------------------------------------------------------


def sklearn_invoker(model: Path, executor: ThreadPoolExecutor, tmp_path: Path) -> Invoker:
    config = ReplicaConfig(api_name="iris", handler=HandlerRef(type="sklearn"), model_path=str(model))
    return load(config, executor, tmp_path)


def test_sklearn_single_and_batch_predictions_are_json_safe(
    iris_model: Path, executor: ThreadPoolExecutor, tmp_path: Path
) -> None:
    invoker = sklearn_invoker(iris_model, executor, tmp_path)
    single = call(invoker, {"features": SETOSA})
    assert single == {"prediction": "setosa"}
    assert type(single["prediction"]) is str
    batch = call(invoker, {"instances": [SETOSA, VIRGINICA]})
    assert batch == {"predictions": ["setosa", "virginica"]}
    assert encode_result(batch) == (JSON, b'{"predictions":["setosa","virginica"]}')


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([5.1, 3.5, 1.4, 0.2], "expected a JSON object"),
        ({"feature": SETOSA}, "expected a JSON object"),
        ({"features": "5.1,3.5"}, "expected a JSON object"),
        ({"instances": []}, "expected a JSON object"),
        ({"instances": [SETOSA, 1.0]}, "expected a JSON object"),
        (None, "expected a JSON object"),
        ({"features": [1.0, 2.0]}, "expected 4 features per row, got 2"),
        ({"features": ["a", "b", "c", "d"]}, "the model rejected the input"),
    ],
)
def test_sklearn_bad_payloads_are_bad_requests(
    iris_model: Path, executor: ThreadPoolExecutor, tmp_path: Path, payload: Any, message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        call(sklearn_invoker(iris_model, executor, tmp_path), payload)


def test_sklearn_loads_plain_pickles_and_rejects_non_models(iris_model: Path, tmp_path: Path) -> None:
    import joblib

    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(pickle.dumps(joblib.load(iris_model)))
    assert SklearnHandler(pickled).handle_post({"features": SETOSA}) == {"prediction": "setosa"}
    (tmp_path / "garbage.joblib").write_bytes(b"not a model")
    with pytest.raises(HandlerLoadError, match=r"cannot load model garbage\.joblib"):
        SklearnHandler(tmp_path / "garbage.joblib")
    (tmp_path / "dict.joblib").write_bytes(pickle.dumps({"weights": [1]}))
    with pytest.raises(HandlerLoadError, match="holds a dict, which has no predict"):
        SklearnHandler(tmp_path / "dict.joblib")


def test_sklearn_needs_a_model_path(executor: ThreadPoolExecutor, tmp_path: Path) -> None:
    config = ReplicaConfig(api_name="iris", handler=HandlerRef(type="sklearn"))
    with pytest.raises(HandlerLoadError, match="needs model_path"):
        load(config, executor, tmp_path)
