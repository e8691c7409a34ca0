"""Generated `cortex.yaml` files must load or fail with a `SpecError` naming the file and a field path.

Two families of cases: documents shaped like real specs (native, TrafficSplitter and Cortex-era APIs) with
mutations (wrong types, out-of-range numbers, unknown or missing fields, YAML 1.1 scalars, tags, weird
unicode), and raw text or bytes (invalid YAML and UTF-8, several documents, small alias bombs, deep nesting).
A spec that loads must also hash (every deploy computes its identity) and migrate to a spec that loads to
the same identity. A few cases of each family also go through the CLI's offline verbs, which must exit 2
with the same message, never a traceback.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cortex_flows.spec import (
    SpecError,
    load_spec,
    migrate_spec,
    pod_hash,
    spec_hash,
    splitter_spec_hash,
)
from cortex_flows.spec.load import MAX_DEPTH, MAX_VALUES
from tests.fuzz.settings import FUZZ

pytestmark = pytest.mark.timeout(120)

# --- documents shaped like real specs -----------------------------------------------------------------------

REALTIME = {
    "name": "iris-classifier",
    "kind": "RealtimeAPI",
    "handler": {"type": "python", "path": "handler.py", "class_name": "Handler", "python_path": "lib"},
    "model_path": "model.joblib",
    "config": {"model": "model.joblib", "threshold": 0.5, "labels": ["setosa", "virginica"]},
    "env": {"LOG_LEVEL": "info"},
    "dependencies": {"pip": "requirements.txt"},
    "compute": {"cpu": "200m", "gpu": 0, "mem": "512Mi"},
    "pod": {"max_concurrency": 4, "max_queue_length": 100},
    "autoscaling": {
        "min_replicas": 1, "max_replicas": 4, "init_replicas": 2, "target_in_flight": 2, "window": "1m",
        "downscale_stabilization_period": "5m", "upscale_stabilization_period": "1m",
        "max_downscale_factor": 0.75, "max_upscale_factor": 1.5, "downscale_tolerance": 0.05,
        "upscale_tolerance": 0.05,
    },
    "update_strategy": {"max_surge": "25%", "max_unavailable": 1, "progress_deadline": "10m"},
    "networking": {"endpoint": "/iris-classifier"},
    "canary": {
        "steps": [5, 25, 100], "bake": "1m", "analysis_interval": "30s", "min_samples": 100,
        "inconclusive": "extend", "max_extensions": 3, "max_error_rate_increase": 0.01, "max_latency_ratio": 1.5,
        "drift_test": "chi2", "drift_threshold": 0.01, "timezone": "UTC", "shadow": 0.1, "min_agreement": 0.9,
        "windows": [{"days": ["mon", "tue"], "start": "09:00", "end": "17:00", "timezone": "Europe/Berlin"}],
        "freeze": ["2024-12-24", "2024-12-20/2025-01-02"],
    },
}  # fmt: skip
SKLEARN = {"name": "iris-sklearn", "kind": "RealtimeAPI", "handler": {"type": "sklearn"}, "model_path": "model.joblib"}
S3_MODEL = {
    "name": "iris-s3", "kind": "RealtimeAPI", "handler": {"type": "sklearn"},
    "model_path": "s3://my-bucket/models/iris.joblib", "networking": {"endpoint": "/models/iris"},
}  # fmt: skip
SPLITTER = {
    "name": "iris-split", "kind": "TrafficSplitter", "networking": {"endpoint": "/split"},
    "apis": [{"name": "iris-classifier", "weight": 80}, {"name": "iris-sklearn", "weight": 20},
             {"name": "iris-s3", "weight": 10, "shadow": True}],
}  # fmt: skip
PREDICTOR_ERA = {
    "name": "iris-predictor", "kind": "RealtimeAPI",
    "predictor": {
        "type": "python", "path": "handler.py", "config": {"k": 1}, "env": {"A": "b"}, "python_path": "lib",
        "processes_per_replica": 2, "threads_per_process": 2, "image": "cortexlabs/python-predictor-cpu:0.25.0",
        "dependencies": {"pip": "requirements.txt", "conda": "conda-packages.txt"}, "log_level": "info",
    },
    "compute": {"cpu": 1, "mem": "1G", "gpu": 0, "inf": 0},
    "autoscaling": {"min_replicas": 1, "max_replicas": 3, "max_replica_concurrency": 64,
                    "target_replica_concurrency": 4},
    "update_strategy": {"max_surge": "25%", "max_unavailable": "25%"},
    "networking": {"endpoint": "iris", "api_gateway": "public"},
    "monitoring": {"model_type": "classification"},
}  # fmt: skip
HANDLER_ERA = {
    "name": "iris-handler", "kind": "RealtimeAPI",
    "handler": {"type": "python", "path": "handler.py", "processes_per_replica": 1, "threads_per_process": 4,
                "shm_size": "1Gi"},
    "networking": {"local_port": 8890},
}  # fmt: skip
KINDLESS = {"name": "iris-old", "predictor": {"type": "python", "path": "handler.py"}}
TEMPLATES = [REALTIME, SKLEARN, S3_MODEL, SPLITTER, PREDICTOR_ERA, HANDLER_ERA, KINDLESS]
REQUIRED = {"name", "kind", "handler", "predictor", "apis"}


class Raw(str):
    """YAML source written into a document as it is: `yes`, `2024-13-45`, `!!binary ...`, `*alias`."""


RAW_SCALARS = [
    "yes", "no", "on", "off", "y", "n", "Yes", "TRUE", "~", "null", "NULL", "", "2024-12-24", "2024-13-45",
    "2024-02-30", "2024-01-01 10:00:00", "2024-01-01T25:00:00Z", "0000-01-01", "1:30", "22:00", "190:20:30",
    "0x1F", "0o17", "017", "0b101", "1_000", ".inf", "-.inf", ".nan", "1e3", "1.0e+3", "1.5e+400",
    "9" * 5000, "0x" + "f" * 5000, ":".join(["59"] * 3000), "!!binary gAE=", "!!set {a, b}", "!!str 5",
    "!!int x", "!!float abc", "!!python/object/apply:os.system [echo]", "*undefined", "&anchor 1",
    "!!timestamp 2024-99-99", "!!omap [{a: 1}]", "!!pairs [{a: 1}, {a: 2}]", "'single'", '"caf\\u00e9"',
    '"\\ud83d\\ude00"', '"\\ud83d"', '"\\udc00x"', '"\\x00"', '"\\U0010FFFF"', "<<", "? x", "|", "@x",
    "!local x", "!!merge x",
]  # fmt: skip
FIELDISH = [
    "25%", "101%", "-5%", "5.5%", "0%", "0", "00", "1m", "10s", "15s", "0s", "1h30m", "90", "1.5m", "1m30",
    "9" * 40 + "s", "9" * 5000, "200m", "20m", "19m", "0.5", "1e3", "512Mi", "20Mi", "19Mi", "1Gi", "1iB",
    "9" * 60 + "Ei", "/iris", "iris", "/", "/a//b", "/a/../b", "/a?b", "/a#b", "/ä", "s3://b/k",
    "s3://Bad_Bucket/k", "s3://bucket/", "http://x/y", "../outside", "/etc/passwd", "handler.py",
    "missing.py", "lib", "lib/", "requirements.txt", "model.joblib", "a\x00b", "09:00", "24:00", "25:00",
    "9:00", "Europe/Berlin", "europe/berlin", "Mars/Olympus", "mon", "Mon", "funday", "2024-12-24",
    "2024-02-30", "2024-12-24/2024-12-20", "2024-12-20/2025-01-02", "chi2", "psi", "ks", "extend", "hold",
    "rollback", "RealtimeAPI", "TrafficSplitter", "BatchAPI", "python", "sklearn", "tensorflow", "onnx",
    "Handler", "class", "CORTEX_X", "1BAD", "a-b", "a" * 43, "-a", " ", "\t", "名前", "\u202eevil", "\ufeff",
    "\u2028", "\x85", "😀", "a" * 2000,
]  # fmt: skip
UNKNOWN_KEYS = [
    "nmae", "kidn", "handlr", "replicas", "type", "path", "predictor", "handler", "apis", "weight", "shadow",
    "max_replica_concurrency", "target_replica_concurrency", "processes_per_replica", "local_port",
    "api_gateway", "monitoring", "models", "model_path", "signature_key", "image", "node_groups", "inf",
    "conda", "shell", "endpoint", "steps", "days", "<<", "", " ", "ключ",
]  # fmt: skip

# Values that probe one kind of field: its bounds, units, spellings and sizes. A mutation of a field of that
# kind draws from its pool half of the time, so each field meets its own edge cases, not only random ones.
LONG_DIGITS = "9" * 5000
TRICKY = {
    "duration": ["0s", "10s", "15s", "1m30s", "1.5m", "90", 90, 0, -1, 1.0e300, 1e-9, "9" * 40 + "s", "1h1h",
                 "1d", "", "m", "10 s", "0.0000001s", math.inf, math.nan, True, "9" * 40 + "h", Raw(LONG_DIGITS),
                 LONG_DIGITS + "s"],
    "quantity": ["19m", "20m", "0.02", "0.019", "9" * 60, LONG_DIGITS, "1e3", "1Ei", "9" * 40 + "Ei",
                 LONG_DIGITS + "m", "0", -1, "512MiB", 10**30, 0.5, 1e300, "1.5Gi", "20Mi", "19Mi", True],
    "int_or_percent": ["0", "0%", "100%", "101%", LONG_DIGITS, "9" * 30, "-1", -1, 10**30, "5.5%",
                       "25 %", True, LONG_DIGITS + "%", "0" * 50 + "1%", 0.5],
    "count": [0, -1, 1, 2, 30000, 30001, 10**30, -(10**30), 2**63, 1.0, True, "1", Raw("0x10"), Raw("1:30")],
    "ratio": [0, 0.0, 1, 1.0, -0.0, 0.99999, 1.00001, 1e-300, 1e300, math.inf, math.nan, "0.5", True, 10**30],
    "name": ["a", "a" * 42, "a" * 43, "A", "1a", "a-", "a_b", "", "iris-classifier", "iris-split", "ïris",
             Raw("yes"), Raw("null"), 5],
    "text": ["", " ", "handler.py", "missing.py", "../outside.py", "/abs.py", "lib", "a\x00b", "s3://b/k",
             "s3://Bad_Bucket/k", "/iris", "/a//b", "/a/./b", "/", "iris", "/a?b", "Handler", "class", "名前",
             "Europe/Berlin", "europe/berlin", "Mars/Olympus", "a" * 5000],
    "clock": ["09:00", "9:00", "24:00", "23:60", "00:00", Raw("17:00"), Raw("24:01"), 540, "", "noon"],
    "freeze": [[Raw("2024-12-24")], ["2024-02-30"], ["2024-12-24/2024-12-20"], [Raw("2024-12-24 10:00:00")],
               ["2024-12-20/2025-01-02", "2024-12-24"], ["24-12-2024"], [20241224], "2024-12-24", [None]],
    "steps": [[], [100], [0, 100], [5, 5, 100], [5, 25], [101], [50, 100, 100], [Raw("yes")], "5,25,100",
              [5.5, 100], [LONG_DIGITS]],
    "days": [[], ["mon", "mon"], ["Mon"], ["funday"], "mon", [Raw("no")], [None]],
    "windows": [[], [{}], [{"start": "17:00", "end": "09:00"}], [{"start": "24:00"}], [{"end": "00:00"}],
                [{"start": "09:00", "end": "09:00"}], {"days": ["mon"]}, [{"timezone": "Mars/Olympus"}]],
    "apis": [[], [{"name": "x", "weight": 100, "shadow": True}], [{"name": "iris-split", "weight": 100}],
             [{"name": "a", "weight": 50}, {"name": "a", "weight": 50}], [{"name": "a", "weight": 101}],
             [{"name": "a", "weight": 100}, {"name": "b", "weight": 5, "shadow": True},
              {"name": "c", "weight": 5, "shadow": True}], [{"name": "iris-classifier"}], {"name": "a"}],
    "env": [{"CORTEX_X": "1"}, {"1BAD": "x"}, {"A": 1}, {"A": None}, {"": "x"}, {"A B": "x"}, {Raw("1"): "x"}],
    "config": [{}, None, [], "x", {"a": Raw("!!binary gAE=")}, {Raw("2024-01-01"): 1}, {"a": {"b": {"c": []}}}],
}  # fmt: skip
FIELD_KINDS = {
    **dict.fromkeys(["window", "downscale_stabilization_period", "upscale_stabilization_period",
                     "progress_deadline", "bake", "analysis_interval"], "duration"),
    **dict.fromkeys(["cpu", "mem"], "quantity"),
    **dict.fromkeys(["max_surge", "max_unavailable"], "int_or_percent"),
    **dict.fromkeys(["gpu", "max_concurrency", "max_queue_length", "min_replicas", "max_replicas",
                     "init_replicas", "min_samples", "max_extensions", "weight", "processes_per_replica",
                     "threads_per_process", "max_replica_concurrency", "local_port"], "count"),
    **dict.fromkeys(["target_in_flight", "max_downscale_factor", "max_upscale_factor", "downscale_tolerance",
                     "upscale_tolerance", "max_error_rate_increase", "max_latency_ratio", "drift_threshold",
                     "shadow", "min_agreement", "target_replica_concurrency", "threshold"], "ratio"),
    "name": "name",
    **dict.fromkeys(["path", "python_path", "model_path", "pip", "conda", "endpoint", "class_name", "timezone",
                     "image", "kind", "type"], "text"),
    **dict.fromkeys(["start", "end"], "clock"),
    **{key: key for key in ("freeze", "steps", "days", "windows", "apis", "env", "config")},
}  # fmt: skip

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 100, 30000, 30001, 10**30, -(10**30)]),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=30),
    st.sampled_from(FIELDISH),
    st.sampled_from(RAW_SCALARS).map(Raw),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | scalars, inner, max_size=3),
    max_leaves=6,
)


def _slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in a document, to pick where a mutation lands."""
    found: list[tuple[Any, Any]] = []
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found += [(node, key) for key in node]
            stack += list(node.values())
        elif isinstance(node, list):
            found += [(node, index) for index in range(len(node))]
            stack += node
    return found


@st.composite
def plausible_documents(draw: st.DrawFn) -> list[Any]:
    """1-3 APIs from the templates, optional fields dropped at random, then up to 4 mutations."""
    doc = []
    for template in draw(st.lists(st.sampled_from(TEMPLATES), min_size=1, max_size=3)):
        optional = [key for key in template if key not in REQUIRED]
        kept = draw(st.lists(st.booleans(), min_size=len(optional), max_size=len(optional)))
        doc.append({k: copy.deepcopy(v) for k, v in template.items() if k not in optional or kept[optional.index(k)]})
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        slots = _slots(doc)
        if not slots:
            break
        known = [(c, k) for c, k in slots if isinstance(k, str) and k in FIELD_KINDS]
        container, key = draw(st.sampled_from(known if known and draw(st.booleans()) else slots))
        operation = draw(st.sampled_from(["scalar", "scalar", "scalar", "junk", "delete", "add", "wrap", "swap"]))
        if operation == "scalar":
            kind = FIELD_KINDS.get(key) if isinstance(key, str) else None
            tricky = kind is not None and draw(st.booleans())
            container[key] = copy.deepcopy(draw(st.sampled_from(TRICKY[kind]))) if tricky else draw(scalars)
        elif operation == "junk":
            container[key] = draw(junk)
        elif operation == "delete":
            del container[key]
        elif operation == "add" and isinstance(container[key], dict):
            container[key][draw(st.sampled_from(UNKNOWN_KEYS) | scalars)] = draw(junk)
        elif operation == "wrap":
            container[key] = [container[key]] if draw(st.booleans()) else {"value": container[key]}
        elif operation == "swap":  # a value that is valid somewhere else in a spec
            source, name = draw(st.sampled_from(_slots(REALTIME) + _slots(PREDICTOR_ERA)))
            container[key] = copy.deepcopy(source[name])
    return doc


@st.composite
def one_field_documents(draw: st.DrawFn) -> list[Any]:
    """A whole template with one field of a known kind set to one of that kind's edge cases."""
    doc = [copy.deepcopy(draw(st.sampled_from([REALTIME, PREDICTOR_ERA, SPLITTER, HANDLER_ERA])))]
    container, key = draw(st.sampled_from([(c, k) for c, k in _slots(doc) if isinstance(k, str) and k in FIELD_KINDS]))
    container[key] = copy.deepcopy(draw(st.sampled_from(TRICKY[FIELD_KINDS[key]])))
    return doc


def _yaml_float(value: float) -> str:
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text and "." not in text:  # YAML 1.1 floats need a dot: 1e+16 would be a string
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def render_flow(value: Any) -> str:
    """YAML flow style, with `Raw` values verbatim and strings as JSON (escapes included)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _yaml_float(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{render_flow(k)}: {render_flow(v)}" for k, v in value.items()) + "}"
    return "[" + ", ".join(render_flow(item) for item in value) + "]"


def _has_raw(value: Any) -> bool:
    if isinstance(value, Raw):
        return True
    if isinstance(value, dict):
        return any(_has_raw(k) or _has_raw(v) for k, v in value.items())
    return isinstance(value, list) and any(map(_has_raw, value))


@st.composite
def plausible_texts(draw: st.DrawFn) -> str:
    """A mutated document as YAML text: block style through PyYAML's dumper, or flow style per API."""
    import yaml

    doc = draw(one_field_documents() | plausible_documents())
    if not _has_raw(doc) and draw(st.booleans()):
        return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()), sort_keys=False)
    if not isinstance(doc, list) or not doc:
        return render_flow(doc)
    return "".join(f"- {render_flow(api)}\n" for api in doc)


# --- raw text and bytes -------------------------------------------------------------------------------------

TOKENS = [
    "- ", "name: ", "kind: ", "RealtimeAPI", "TrafficSplitter", "handler: ", "{type: python, path: handler.py}",
    "apis: ", "predictor: ", "\n", "\n  ", "  ", "{", "}", "[", "]", ", ", ": ", "&a ", "*a", "<<: *a", "---\n",
    "...\n", "!!binary ", "!!python/object:os.system ", "%YAML 1.1\n---\n", "%TAG ! tag:x,2000:\n", "? ", "|\n  ",
    ">\n  ", "'", '"', "# c\n", "\t", "yes", "~", "2024-13-45", "0x1F", "1:2:3", "\\", "\ufeff", "\x00", "\x85",
    "\u2028", "é", "😀", "\r\n", "\r", "\x1b[31m", "\ud7ff", "\ue000", "\uffff",
]  # fmt: skip
VALID_TEXT = (
    "- name: iris-classifier\n  kind: RealtimeAPI\n  handler:\n    type: python\n    path: handler.py\n"
    "  config: {model: model.joblib}\n  pod: {max_concurrency: 4}\n  canary:\n    freeze: [2024-12-24]\n"
    "    windows: [{days: [mon], start: '09:00', end: '17:00'}]\n"
    "- name: iris-split\n  kind: TrafficSplitter\n  apis: [{name: iris-classifier, weight: 100}]\n"
)


def alias_bomb(width: int, depth: int) -> str:
    """Billion laughs, kept small: each level lists the one before `width` times."""
    levels = [f"    l0: &l0 [{', '.join(['lol'] * width)}]"]
    levels += [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    return "- name: bomb\n  kind: RealtimeAPI\n  handler: {type: python, path: handler.py}\n  config:\n" + (
        "\n".join(levels) + "\n"
    )


def alias_chain(length: int, merge: bool) -> str:
    """Anchors that each nest (or merge) the one before: deep values from a shallow file."""
    if merge:
        lines = [f"    m{i}: &m{i} {{{f'<<: *m{i - 1}, ' if i else ''}k{i}: {i}}}" for i in range(length)]
    else:
        lines = [f"    c{i}: &c{i} [{f'*c{i - 1}' if i else '0'}]" for i in range(length)]
    return "- name: chain\n  kind: RealtimeAPI\n  handler: {type: python, path: handler.py}\n  config:\n" + (
        "\n".join(lines) + "\n"
    )


def splice(text: str, start: int, length: int, insert: str) -> str:
    start %= len(text) + 1
    return text[:start] + insert + text[start + length :]


raw_texts = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
    st.builds(splice, st.just(VALID_TEXT), st.integers(0, 10**4), st.integers(0, 20),
              st.text(max_size=10) | st.sampled_from(TOKENS)),
    st.builds(lambda n, cut: (VALID_TEXT + "---\n") * n + VALID_TEXT[:cut], st.integers(1, 3), st.integers(0, 400)),
    st.builds(alias_bomb, st.integers(2, 9), st.integers(1, 3)),  # valid: kept small, as migrating expands it
    st.builds(alias_bomb, st.integers(7, 9), st.integers(7, 12)),  # refused long before it expands
    st.builds(alias_chain, st.integers(1, MAX_DEPTH + 20), st.booleans()),
    st.builds(lambda n, open_: open_ * n + "1" + {"[": "]", "{a: ": "}"}[open_] * n,
              st.integers(1, 3 * MAX_DEPTH), st.sampled_from(["[", "{a: "])),
    st.builds(lambda n: "- " + "{a: " * n + "1", st.integers(1, 3 * MAX_DEPTH)),
)  # fmt: skip
raw_bytes = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda codec: VALID_TEXT.replace("iris", "írís").encode(codec), st.sampled_from(
        ["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252", "utf-8-sig"])),
    st.builds(lambda start, junk_bytes: VALID_TEXT.encode()[:start] + junk_bytes + VALID_TEXT.encode()[start:],
              st.integers(0, len(VALID_TEXT)), st.binary(min_size=1, max_size=8)),
)  # fmt: skip

# --- the checks ---------------------------------------------------------------------------------------------

FILE_LEVEL = ("line ", "invalid YAML", "the file is empty", "expected a list of APIs", "the list of APIs is empty",
              "not UTF-8 text")  # fmt: skip
# Words of Python, PyYAML or pydantic internals: a message holding one says nothing a user can act on.
UNCLEAR = ("Traceback", "Input should be", "Keys should be", "Value error", "object at 0x", "[type=",
           "integer string conversion", "embedded null", "datetime.date(", "decimal.", "pydantic", "NoneType",
           "<class ", "Error(", "invalid literal", "[Errno")  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project holding every file the templates name."""
    directory = tmp_path_factory.mktemp("fuzz-project")
    (directory / "handler.py").write_text("class Handler:\n    def handle_post(self, payload):\n        return 1\n")
    (directory / "model.joblib").write_bytes(b"not really a model")
    (directory / "requirements.txt").write_text("")
    (directory / "conda-packages.txt").write_text("")
    (directory / "lib").mkdir()
    return directory


def write_spec(project: Path, content: str | bytes) -> Path:
    file = project / "cortex.yaml"
    file.write_bytes(content.encode() if isinstance(content, str) else content)
    return file


def check_spec(file: Path) -> None:
    """Load `file`: it is valid (and then hashes and migrates) or a `SpecError` with clear, located lines."""
    try:
        spec = load_spec(file)
    except SpecError as exc:
        assert exc.problems, "a SpecError without problems"
        for problem in exc.problems:
            line = problem.render(exc.file)
            assert line.startswith(f"{file}: "), line
            assert problem.message.strip() and "\n" not in problem.message, repr(line)
            assert problem.path or problem.message.startswith(FILE_LEVEL), f"no field path: {line}"
            assert not [word for word in UNCLEAR if word in problem.message], f"unclear message: {line}"
        return
    identity = _identity(spec)
    migrated_file = file.with_name("migrated.yaml")
    migrated_file.write_text(migrate_spec(file), encoding="utf-8")
    assert _identity(load_spec(migrated_file)) == identity, "the migrated spec deploys something else"


def _identity(spec: Any) -> list[str]:
    hashes = [pod_hash(api, "package") + spec_hash(api, "package") for api in spec.realtime_apis]
    return hashes + [splitter_spec_hash(splitter) for splitter in spec.splitters]


def test_templates_are_valid_specs(project: Path) -> None:
    """The mutations start from specs that load, so what fails is what the mutations broke."""
    for template in TEMPLATES:
        spec = load_spec(write_spec(project, "- " + render_flow(template) + "\n"))
        assert [api.name for api in spec.apis] == [template["name"]]
    spec = load_spec(write_spec(project, VALID_TEXT))
    assert [api.name for api in spec.apis] == ["iris-classifier", "iris-split"]


@settings(FUZZ, max_examples=500)
@given(text=plausible_texts())
def test_plausible_specs_load_or_fail_clearly(project: Path, text: str) -> None:
    check_spec(write_spec(project, text))


@settings(FUZZ, max_examples=300)
@given(text=raw_texts)
def test_raw_yaml_text_loads_or_fails_clearly(project: Path, text: str) -> None:
    check_spec(write_spec(project, text))


@settings(FUZZ, max_examples=100)
@given(data=raw_bytes)
def test_raw_bytes_load_or_fail_clearly(project: Path, data: bytes) -> None:
    check_spec(write_spec(project, data))


API = "- {name: a, kind: RealtimeAPI, handler: {type: python, path: handler.py}, %s}\n"
# Cases the fuzzing found, kept as they were found: each loads or fails with a clear, located message.
FOUND = {
    "yaml-int-beyond-4300-digits": API % f"pod: {{max_concurrency: {LONG_DIGITS}}}",
    "yaml-sexagesimal-beyond-4300-digits": API % f"config: {{t: {':'.join(['59'] * 3000)}}}",
    "yaml-date-not-in-calendar": API % "canary: {freeze: [2024-13-45]}",
    "yaml-time-out-of-range": API % "config: {t: 2024-01-01 25:61:00}",
    "yaml-nested-5000-deep": "[" * 5000,
    "yaml-binary-in-config": API % "config: {x: !!binary gAE=}",
    "yaml-set-in-config": API % "config: {x: !!set {a, b}}",
    "yaml-alias-cycle": API % "config: &c {x: *c}",
    "yaml-surrogate-pair-escape": API % 'config: {"\\ud83d\\ude00": "\\ud83d\\ude00"}',
    "yaml-lone-surrogate-escape": API % 'config: {x: "\\udc00"}',
    "non-string-key-of-an-api": "- {name: a, kind: RealtimeAPI, handler: {type: python, path: handler.py}, 5: x}\n",
    "date-key-of-a-block": "- {name: a, kind: RealtimeAPI, handler: {type: python, path: h.py, 2024-01-01: x}}\n",
    "splitter-named-by-a-list": "- {name: [], kind: TrafficSplitter, apis: 0}\n",
    "cortex-conda-file-name-too-long": f"- {{name: a, predictor: {{type: python, path: handler.py, "
    f"dependencies: {{conda: {'a' * 5000}}}}}}}\n",
    "duration-beyond-decimal-precision": API % f"autoscaling: {{window: '{'9' * 40}s'}}",
    "duration-1e300-seconds": API % "canary: {bake: 1.0e+300}",
    "cpu-beyond-4300-digits": API % f"compute: {{cpu: '{LONG_DIGITS}'}}",
    "memory-beyond-4300-digits": API % f"compute: {{mem: '{LONG_DIGITS}Ei'}}",
    "surge-beyond-4300-digits": API % f"update_strategy: {{max_surge: '{LONG_DIGITS}'}}",
    "surge-superscript-digit": API % "update_strategy: {max_surge: '²'}",
    "handler-path-with-nul": "- {name: a, kind: RealtimeAPI, handler: {type: python, path: \"hand\\0ler.py\"}}\n",
    "model-path-with-nul": API % 'model_path: "model\\0.joblib"',
    "python-path-too-long": f"- {{name: a, kind: RealtimeAPI, handler: {{type: python, path: handler.py, "
    f"python_path: {'a' * 5000}}}}}\n",
    "model-path-too-long": API % f"model_path: {'a' * 5000}",
}


@pytest.mark.parametrize("text", FOUND.values(), ids=FOUND.keys())
def test_found_cases_load_or_fail_clearly(project: Path, text: str) -> None:
    check_spec(write_spec(project, text))


def test_alias_bombs_and_chains_are_refused_quickly(project: Path) -> None:
    """Aliases cannot make a small file expand past the bounds, nest past them, or contain itself."""
    cases = {
        alias_bomb(9, 9): f"more than {MAX_VALUES} values",
        alias_chain(MAX_DEPTH + 5, merge=False): f"nested more than {MAX_DEPTH} levels deep",
        alias_chain(2000, merge=True): f"more than {MAX_VALUES} values",
        "- &a {name: a, kind: RealtimeAPI, handler: *a}\n": "contains itself through a YAML alias",
        "[" * 5000: f"nested more than {MAX_DEPTH} levels deep",
    }
    for text, message in cases.items():
        with pytest.raises(SpecError, match=message):
            load_spec(write_spec(project, text))


# --- the CLI ------------------------------------------------------------------------------------------------

CLI_VERBS = (["migrate"], ["render"], ["plan"])  # each validates the spec offline and changes nothing


def _collect(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """The first `count` cases hypothesis draws from `strategy` (derandomized: the same every run)."""
    drawn: list[Any] = []

    @settings(FUZZ, max_examples=count)
    @given(value=strategy)
    def draw(value: Any) -> None:
        drawn.append(value)

    draw()
    return drawn[:count]


def _run_cli(project: Path, home: Path, verb: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CORTEX_FLOWS_HOME": str(home), "NO_COLOR": "1"}
    command = [sys.executable, "-m", "cortex_flows.cli", *verb, str(project)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_cli_exits_2_with_the_spec_error(tmp_path: Path) -> None:
    """A few cases of each family through `migrate`, `render` and `plan`: exit 2 and the loader's message."""
    families: list[tuple[st.SearchStrategy[Any], Callable[[Any], bytes]]] = [
        (plausible_texts(), str.encode),
        (raw_texts, str.encode),
        (raw_bytes, bytes),
    ]
    cases: list[tuple[Path, list[str]]] = []
    for number, (strategy, encode) in enumerate(families):
        for index, case in enumerate(_collect(strategy, 3)):
            project = tmp_path / f"project-{number}-{index}"
            project.mkdir()
            (project / "handler.py").write_text("class Handler:\n    pass\n")
            write_spec(project, encode(case))
            cases.append((project, CLI_VERBS[(number + index) % len(CLI_VERBS)]))
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda case: _run_cli(case[0], tmp_path / "home", case[1]), cases))
    invalid = 0
    for (project, verb), result in zip(cases, results, strict=True):
        assert "Traceback" not in result.stderr, result.stderr
        try:
            load_spec(project)
        except SpecError as exc:
            invalid += 1
            assert (result.returncode, result.stderr.strip()) == (2, str(exc)), (verb, project)
        else:
            assert result.returncode in (0, 2), (verb, result.stderr)
            assert result.returncode == 0 or verb == ["plan"], (verb, result.stderr)
    assert invalid >= len(cases) // 2, "the CLI cases should be mostly invalid specs"
