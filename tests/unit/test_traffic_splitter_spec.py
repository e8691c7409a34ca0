"""The TrafficSplitter kind in cortex.yaml: loading, validation messages, identity; canary.min_agreement."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cortex_flows.spec import (
    SPEC_FILE_NAME,
    ProjectSpec,
    RealtimeAPI,
    SpecError,
    SplitTarget,
    TrafficSplitter,
    load_spec,
    pod_hash,
    spec_hash,
    splitter_spec_hash,
)

PACKAGE = "a" * 64
API: dict[str, Any] = {
    "name": "iris",
    "kind": "RealtimeAPI",
    "handler": {"type": "python", "path": "handler.py"},
}
SPLIT: dict[str, Any] = {
    "name": "my-split",
    "kind": "TrafficSplitter",
    "apis": [{"name": "a", "weight": 60}, {"name": "b", "weight": 40}],
}
# Hashes of RealtimeAPIs computed before TrafficSplitter and canary.min_agreement existed (canary -> hashes)
PINNED: list[tuple[dict[str, Any] | None, tuple[str, str]]] = [
    (None, ("cbffdadee3a4cfbb43e8c2d7ddc30761", "755e51081af5b0359fc008f48147b5c3")),
    ({"steps": [10, 100]}, ("cbffdadee3a4cfbb43e8c2d7ddc30761", "47e68a545505f04a7aab76475f591059")),
    ({"shadow": 0.1}, ("cbffdadee3a4cfbb43e8c2d7ddc30761", "66fa5f596d947ceacb8f050573b5b1a8")),
    (
        {"bake": "5m", "windows": [{"start": "09:00", "end": "17:00"}]},
        ("cbffdadee3a4cfbb43e8c2d7ddc30761", "ad0fea0ba01ef2e675c6f16e9656cfcb"),
    ),
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "handler.py").write_text("class Handler: ...\n")
    return tmp_path


def load(project: Path, *items: dict[str, Any]) -> ProjectSpec:
    """Write `items` as the project's cortex.yaml and load it through the public loader."""
    (project / SPEC_FILE_NAME).write_text(yaml.safe_dump(list(items), sort_keys=False))
    return load_spec(project)


def split(**overrides: Any) -> dict[str, Any]:
    return {**SPLIT, **overrides}


def targets(*weights: tuple[str, int] | tuple[str, int, bool]) -> list[dict[str, Any]]:
    """Split targets from (name, weight) or (name, weight, shadow)."""
    return [{"name": t[0], "weight": t[1], **({"shadow": t[2]} if len(t) == 3 else {})} for t in weights]


def problems(project: Path, *items: dict[str, Any]) -> list[str]:
    """Every rendered problem line, checking that each names the spec file."""
    with pytest.raises(SpecError) as info:
        load(project, *items)
    lines = str(info.value).splitlines()
    file = project / SPEC_FILE_NAME
    assert all(line.startswith(f"{file}: ") for line in lines)
    return [line.removeprefix(f"{file}: ") for line in lines]


def splitter(project: Path, **overrides: Any) -> TrafficSplitter:
    found = load(project, split(**overrides)).splitters
    assert len(found) == 1
    return found[0]


# --- loading ---------------------------------------------------------------------------------------------


def test_a_splitter_loads_beside_its_apis_in_file_order(project: Path) -> None:
    text = """\
- name: a
  kind: RealtimeAPI
  handler: {type: python, path: handler.py}
- name: my-split
  kind: TrafficSplitter
  networking:
    endpoint: /predict
  apis:
    - name: a
      weight: 80
    - name: b
      weight: 20
    - name: c
      weight: 10
      shadow: true
- name: b
  kind: RealtimeAPI
  handler: {type: python, path: handler.py}
"""
    (project / SPEC_FILE_NAME).write_text(text)
    spec = load_spec(project / SPEC_FILE_NAME)
    assert [(type(a).__name__, a.name) for a in spec.apis] == [
        ("RealtimeAPI", "a"),
        ("TrafficSplitter", "my-split"),
        ("RealtimeAPI", "b"),
    ]
    assert [a.name for a in spec.realtime_apis] == ["a", "b"]
    [s] = spec.splitters
    assert spec.select("b").name == "b"
    with pytest.raises(ValueError, match="RealtimeAPIs: a, b"):
        spec.select("my-split")  # a canary rolls out versions; a splitter has none
    assert (s.endpoint, s.networking.endpoint, s.weights) == ("/predict", "/predict", {"a": 80, "b": 20})
    assert s.shadow == SplitTarget(name="c", weight=10, shadow=True)
    assert s.apis[0] == SplitTarget(name="a", weight=80, shadow=False)


def test_defaults_endpoint_and_no_shadow(project: Path) -> None:
    s = splitter(project)
    assert s.model_dump() == {
        "name": "my-split",
        "kind": "TrafficSplitter",
        "apis": [{"name": "a", "weight": 60, "shadow": False}, {"name": "b", "weight": 40, "shadow": False}],
        "networking": {"endpoint": "/my-split"},
    }
    assert (s.endpoint, s.weights, s.shadow) == ("/my-split", {"a": 60, "b": 40}, None)


def test_a_single_api_with_all_traffic_and_zero_weight_targets(project: Path) -> None:
    assert splitter(project, apis=targets(("a", 100))).weights == {"a": 100}
    assert splitter(project, apis=targets(("a", 100), ("b", 0))).weights == {"a": 100, "b": 0}


def test_a_shadow_may_mirror_every_request(project: Path) -> None:
    s = splitter(project, apis=targets(("a", 100), ("b", 100, True)))
    assert (s.weights, s.shadow) == ({"a": 100}, SplitTarget(name="b", weight=100, shadow=True))


def test_targets_not_in_the_file_are_not_an_error(project: Path) -> None:
    """They may be deployed already; deploying checks that."""
    spec = load(project, API, split(apis=targets(("iris", 50), ("deployed-elsewhere", 50))))
    assert spec.splitters[0].weights == {"iris": 50, "deployed-elsewhere": 50}


def test_models_are_frozen_and_a_dump_validates_back(project: Path) -> None:
    s = splitter(project, apis=targets(("a", 100), ("b", 5, True)))
    with pytest.raises(ValueError, match="frozen"):
        s.name = "other"  # type: ignore[misc]
    again = TrafficSplitter.model_validate(s.model_dump(mode="json"))
    assert again == s
    assert splitter_spec_hash(again) == splitter_spec_hash(s)


# --- one failing case per validation ---------------------------------------------------------------------

FAILURES = [
    # the splitter
    ({"apis": targets(("a", 60), ("b", 30))}, "my-split.apis: non-shadow weights must sum to 100, got 90 (a: 60, b: 30)"),
    ({"apis": targets(("a", 60), ("b", 50), ("c", 5, True))}, "my-split.apis: non-shadow weights must sum to 100, got 110 (a: 60, b: 50)"),
    ({"apis": targets(("a", 100, True))}, "my-split.apis: must include an API that is not the shadow: the shadow's responses never reach clients"),
    ({"apis": []}, "my-split.apis: must list at least one RealtimeAPI, e.g. [{name: my-api, weight: 100}]"),
    ({"apis": None}, "my-split.apis: expected a list, got null"),
    ({"apis": {"a": 100}}, "my-split.apis: expected a list, got a mapping"),
    ({"apis": targets(("a", 100), ("b", 10, True), ("c", 20, True))}, "my-split.apis[2].shadow: at most one API can be the shadow, and apis[1] (b) already is"),
    ({"apis": targets(("a", 50), ("a", 50))}, "my-split.apis[1].name: duplicate target 'a' (also at apis[0]); list each API once"),
    ({"apis": targets(("a", 50), ("my-split", 50))}, "my-split.apis[1].name: a splitter cannot send traffic to itself; name the RealtimeAPIs it splits between, got 'my-split'"),
    ({"api": []}, "my-split.api: unknown field 'api' (did you mean 'apis'?); allowed: name, kind, apis, networking"),
    ({"networking": {"endpoint": "predict"}}, "my-split.networking.endpoint: must start with '/', got 'predict'"),
    ({"networking": {"api_gateway": "public"}}, "my-split.networking.api_gateway: unknown field 'api_gateway'; allowed: endpoint"),
    ({"name": "My_Split"}, "[0].name: must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, ending with a letter or digit, at most 42 characters), got 'My_Split'"),
    # a target
    ({"apis": targets(("a", 101))}, "my-split.apis[0].weight: must be >= 0 and <= 100, got 101"),
    ({"apis": targets(("a", -1))}, "my-split.apis[0].weight: must be >= 0 and <= 100, got -1"),
    ({"apis": [{"name": "a", "weight": "100"}]}, "my-split.apis[0].weight: expected an integer, got '100'"),
    ({"apis": [{"name": "a", "weight": 99.5}]}, "my-split.apis[0].weight: expected an integer, got 99.5"),
    ({"apis": [{"name": "a", "weight": True}]}, "my-split.apis[0].weight: expected an integer, got true (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"),
    ({"apis": [{"name": "a"}]}, "my-split.apis[0].weight: is required"),
    ({"apis": [{"weight": 100}]}, "my-split.apis[0].name: is required"),
    ({"apis": [{"name": "A", "weight": 100}]}, "my-split.apis[0].name: must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, ending with a letter or digit, at most 42 characters), got 'A'"),
    ({"apis": [*targets(("a", 100)), {"name": "b", "weight": 10, "shadow": "true"}]}, "my-split.apis[1].shadow: expected true or false, got 'true'"),
    ({"apis": targets(("a", 100), ("b", 0, True))}, "my-split.apis[1].weight: must be between 1 and 100 for the shadow (the percent of requests mirrored to it), got 0"),
    ({"apis": ["a"]}, "my-split.apis[0]: expected a mapping, got 'a'"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "line"), FAILURES, ids=[case[1].split(":")[0] for case in FAILURES])
def test_invalid_splitter_is_reported_with_file_path_and_message(
    project: Path, overrides: dict[str, Any], line: str
) -> None:
    assert line in problems(project, split(**overrides))


def test_unknown_field_in_a_target_suggests_the_right_one(project: Path) -> None:
    found = problems(project, split(apis=[{"name": "a", "wieght": 100}]))
    assert found == [
        "my-split.apis[0].weight: is required",
        "my-split.apis[0].wieght: unknown field 'wieght' (did you mean 'weight'?); allowed: name, weight, shadow",
    ]


def test_the_problems_of_one_splitter_are_reported_together(project: Path) -> None:
    found = problems(project, split(apis=targets(("a", 50), ("a", 30), ("b", 5, True), ("c", 5, True))))
    assert found == [
        "my-split.apis[1].name: duplicate target 'a' (also at apis[0]); list each API once",
        "my-split.apis[3].shadow: at most one API can be the shadow, and apis[2] (b) already is",
        "my-split.apis: non-shadow weights must sum to 100, got 80 (a: 50, a: 30)",
    ]


def test_a_splitter_cannot_target_a_splitter_of_the_same_file(project: Path) -> None:
    inner = split(name="inner", apis=targets(("iris", 100)))
    outer = split(name="outer", apis=targets(("iris", 50), ("inner", 50)))
    found = problems(project, API, inner, outer)
    assert found == [
        "outer.apis[1].name: 'inner' is a TrafficSplitter; splitters can only send traffic to RealtimeAPIs"
    ]


def test_a_splitter_target_that_is_an_invalid_splitter_still_counts_as_one(project: Path) -> None:
    inner = split(name="inner", apis=targets(("iris", 90)))
    outer = split(name="outer", apis=targets(("inner", 100)))
    assert problems(project, API, inner, outer) == [
        "inner.apis: non-shadow weights must sum to 100, got 90 (iris: 90)",
        "outer.apis[0].name: 'inner' is a TrafficSplitter; splitters can only send traffic to RealtimeAPIs",
    ]


def test_splitters_and_apis_share_one_namespace_of_names(project: Path) -> None:
    found = problems(project, API, split(name="iris", networking={"endpoint": "/split"}))
    assert found == [
        "[1].name: duplicate API name 'iris' (also used by the API at [0]); names must be unique"
    ]


def test_splitters_and_apis_share_one_namespace_of_endpoints(project: Path) -> None:
    assert problems(project, API, split(networking={"endpoint": "/iris"})) == [
        "my-split.networking.endpoint: duplicate endpoint '/iris' (also used by iris); endpoints must be unique"
    ]
    assert problems(project, split(name="one"), split(name="two", networking={"endpoint": "/one"})) == [
        "two.networking.endpoint: duplicate endpoint '/one' (also used by one); endpoints must be unique"
    ]


def test_a_split_target_validates_on_its_own() -> None:
    with pytest.raises(ValueError, match="must be between 1 and 100 for the shadow"):
        SplitTarget(name="a", weight=0, shadow=True)
    assert SplitTarget(name="a", weight=0).shadow is False


# --- identity ----------------------------------------------------------------------------------------------


def test_splitter_hash_is_32_hex_and_stable_across_spellings(project: Path) -> None:
    base = splitter_spec_hash(splitter(project))
    assert re.fullmatch(r"[0-9a-f]{32}", base)
    assert splitter_spec_hash(splitter(project)) == base
    same = {
        "networking": {"endpoint": "/my-split"},
        "apis": [{"shadow": False, "weight": 40, "name": "b"}, {"weight": 60, "name": "a"}],
        "kind": "TrafficSplitter",
    }
    assert splitter_spec_hash(splitter(project, **same)) == base


@pytest.mark.parametrize(
    "overrides",
    [{"apis": targets(("a", 50), ("b", 50))}, {"apis": targets(("a", 60), ("c", 40))},
     {"apis": targets(("a", 60), ("b", 40), ("c", 10, True))}, {"networking": {"endpoint": "/v2"}},
     {"name": "other-split"}],
)  # fmt: skip
def test_splitter_hash_changes_with_routing(project: Path, overrides: dict[str, Any]) -> None:
    assert splitter_spec_hash(splitter(project, **overrides)) != splitter_spec_hash(splitter(project))


def test_the_shadow_share_changes_the_splitter_hash(project: Path) -> None:
    five = splitter(project, apis=targets(("a", 100), ("b", 5, True)))
    ten = splitter(project, apis=targets(("a", 100), ("b", 10, True)))
    assert splitter_spec_hash(five) != splitter_spec_hash(ten)


@pytest.mark.parametrize(("canary", "pinned"), PINNED, ids=["no-canary", "steps", "shadow", "windows"])
def test_realtime_api_hashes_are_unchanged(
    project: Path, canary: dict[str, Any] | None, pinned: tuple[str, str]
) -> None:
    """With a splitter in the same file and canary.min_agreement omitted or written at its default."""
    item = API if canary is None else {**API, "canary": canary}
    for written in (item, {**item, "canary": {**(canary or {}), "min_agreement": None}}):
        api = load(project, written, split(apis=targets(("iris", 100)))).realtime_apis[0]
        assert (pod_hash(api, PACKAGE), spec_hash(api, PACKAGE)) == pinned


# --- canary.min_agreement ------------------------------------------------------------------------------------


def realtime(project: Path, **canary: Any) -> RealtimeAPI:
    return load(project, {**API, "canary": canary}).realtime_apis[0]


def test_min_agreement_defaults_to_none_and_keeps_what_is_written(project: Path) -> None:
    assert realtime(project).canary.min_agreement is None
    assert realtime(project, shadow=0.1, min_agreement=0.95).canary.min_agreement == 0.95
    assert realtime(project, min_agreement=1).canary.min_agreement == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [(0, "must be > 0 and <= 1, got 0"), (1.5, "must be > 0 and <= 1, got 1.5"), (-0.1, "must be > 0 and <= 1, got -0.1"),
     (True, "expected a number, got true (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"),
     ("95%", "expected a number, got '95%'")],
)  # fmt: skip
def test_min_agreement_errors(project: Path, value: object, message: str) -> None:
    found = problems(project, {**API, "canary": {"min_agreement": value}})
    assert [line for line in found if line.startswith("iris.canary.min_agreement: ")] == [
        f"iris.canary.min_agreement: {message}"
    ]


@pytest.mark.parametrize("canary", [{}, {"steps": [10, 100]}])
def test_setting_min_agreement_changes_only_the_spec_hash(project: Path, canary: dict[str, Any]) -> None:
    before = realtime(project, **canary)
    after = realtime(project, **canary, min_agreement=0.9)
    assert pod_hash(after, PACKAGE) == pod_hash(before, PACKAGE)
    assert spec_hash(after, PACKAGE) != spec_hash(before, PACKAGE)
    stricter = realtime(project, **canary, min_agreement=0.99)
    assert spec_hash(stricter, PACKAGE) != spec_hash(after, PACKAGE)
