"""API keys: reading them from a Secret block's value, the constant-time check, the digest the pod hash
covers, the `networking.api_keys` field, and the replica app answering 401 while probes stay open."""

from __future__ import annotations

import asyncio
import hmac
import json
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cortex_flows.serving import auth
from cortex_flows.serving.admission import Admission
from cortex_flows.serving.app import ReplicaApp
from cortex_flows.serving.auth import ApiKeys, ApiKeysError, api_keys_env, keys_digest, parse_api_keys
from cortex_flows.serving.config import HandlerRef, ReplicaConfig
from cortex_flows.serving.handlers import load_handler
from cortex_flows.serving.metrics import ReplicaMetrics
from cortex_flows.spec import SpecError, parse_spec, pod_hash, spec_hash
from cortex_flows.spec.models import RealtimeAPI

KEY = "k-3f9a1c77e2b54d0a"
OTHER = "k-other-0b8e44"
PACKAGE = "a" * 64

# --- the keys a Secret block's value holds ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "keys"),
    [
        ([KEY, OTHER], (KEY, OTHER)),
        (json.dumps([KEY, OTHER]), (KEY, OTHER)),  # a JSON list saved as a string
        (KEY, (KEY,)),  # one key
        ("12345678", ("12345678",)),  # a string JSON reads as a number is still one key
        ([KEY, OTHER, KEY], (KEY, OTHER)),  # duplicates count once
        ((KEY,), (KEY,)),
    ],
)
def test_a_secret_value_gives_its_keys(value: object, keys: tuple[str, ...]) -> None:
    assert parse_api_keys(value) == keys
    assert parse_api_keys(api_keys_env(keys)[auth.API_KEYS_ENV]) == keys  # what a replica reads back


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "holds no key; expected a JSON list of strings or one string"),
        ("[]", "holds no key; expected a JSON list of strings or one string"),
        ({"key": KEY}, "expected a JSON list of strings or one string, got dict"),
        ([KEY, 7], "key 2 of 2 is not a string (got int)"),
        ([KEY, ""], "key 2 of 2 is empty"),
        ("", "key 1 of 1 is empty"),
        ([f"{KEY} trailing"], "key 1 of 1 has characters other than printable ASCII without spaces"),
        ([f"{KEY}\n"], "key 1 of 1 has characters other than printable ASCII without spaces"),
        ([f"{KEY}é"], "key 1 of 1 has characters other than printable ASCII without spaces"),
    ],
)
def test_unusable_values_are_refused_without_showing_a_key(value: object, message: str) -> None:
    with pytest.raises(ApiKeysError) as info:
        parse_api_keys(value)
    assert str(info.value) == message
    assert KEY not in str(info.value)


# --- the check ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "api_key", "allowed"),
    [
        (f"Bearer {KEY}", None, True),
        (f"bearer {KEY}", None, True),  # the scheme is case-insensitive
        (f"Bearer {OTHER}", None, True),
        (None, KEY, True),
        (None, OTHER, True),
        ("Bearer wrong", KEY, True),  # either header may carry it
        (None, None, False),
        ("Bearer wrong", None, False),
        (None, "wrong", False),
        (f"Basic {KEY}", None, False),  # only the Bearer scheme
        (KEY, None, False),
        (f"Bearer {KEY[:-1]}", None, False),  # a prefix is not the key
        (f"Bearer {KEY}x", None, False),
        ("Bearer ", "", False),
    ],
)
def test_either_header_must_carry_one_of_the_keys(
    authorization: str | None, api_key: str | None, allowed: bool
) -> None:
    keys = ApiKeys((KEY, OTHER))
    as_bytes = [None if value is None else value.encode() for value in (authorization, api_key)]
    assert keys.allows(*as_bytes) is allowed


def test_every_key_is_compared_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the first key matching costs as many comparisons as none matching."""
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(len(a) + len(b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = ApiKeys(("first-key", "second-key", "third-key"))
    for presented in (b"first-key", b"third-key", b"no-such-key-of-another-length"):
        calls.clear()
        keys.allows(None, presented)
        assert calls == [64, 64, 64]  # one per key, on fixed-length digests (lengths of keys never compared)


# --- what the pod identity covers -----------------------------------------------------------------------------


def test_the_digest_is_stable_ignores_order_and_changes_with_the_keys() -> None:
    digest = keys_digest((KEY, OTHER))
    assert digest == keys_digest((OTHER, KEY))
    assert digest != keys_digest((KEY,)) != keys_digest(("k-new",))
    assert len(digest) == 64 and KEY not in digest and KEY.encode().hex() not in digest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "handler.py").write_text("class Handler:\n    def handle_post(self, payload):\n        return 1\n")
    return tmp_path


def spec(*apis: dict[str, Any]) -> str:
    return yaml.safe_dump(list(apis), sort_keys=False)


def api(project: Path, **networking: Any) -> RealtimeAPI:
    text = spec({"name": "iris", "kind": "RealtimeAPI", "handler": {"type": "python", "path": "handler.py"},
                          "networking": networking})  # fmt: skip
    return parse_spec(text, project / "cortex.yaml", project).realtime_apis[0]


def test_keys_roll_replicas_and_a_block_name_alone_is_applied_in_place(project: Path) -> None:
    plain, named, renamed = api(project), api(project, api_keys="iris-keys"), api(project, api_keys="iris-keys-2")
    old, new = keys_digest((KEY,)), keys_digest(("k-rotated",))
    assert pod_hash(named, PACKAGE, "", old) != pod_hash(named, PACKAGE, "", new)  # rotated keys: new pods
    assert pod_hash(named, PACKAGE, "", old) != pod_hash(plain, PACKAGE)
    # Another block holding the same keys: same pods, another spec (applied in place).
    assert pod_hash(named, PACKAGE, "", old) == pod_hash(renamed, PACKAGE, "", old)
    assert spec_hash(named, PACKAGE, "", old) != spec_hash(renamed, PACKAGE, "", old)
    # The block's name is recorded with the spec, never the keys.
    assert named.model_dump(mode="json")["networking"] == {"endpoint": "/iris", "api_keys": "iris-keys"}


@pytest.mark.parametrize("name", ["Iris_Keys", "", "iris keys", "iris/keys"])
def test_a_bad_block_name_names_the_file_and_field(project: Path, name: str) -> None:
    with pytest.raises(SpecError) as info:
        api(project, api_keys=name)
    line = str(info.value)
    assert line.startswith(f"{project / 'cortex.yaml'}: iris.networking.api_keys: must name a Prefect Secret block")


def test_a_traffic_splitter_has_no_keys_of_its_own(project: Path) -> None:
    splitter = {"name": "split", "kind": "TrafficSplitter", "apis": [{"name": "iris", "weight": 100}],
                "networking": {"api_keys": "iris-keys"}}  # fmt: skip
    with pytest.raises(SpecError) as info:
        parse_spec(spec(splitter), project / "cortex.yaml", project)
    assert f"{project / 'cortex.yaml'}: split.networking.api_keys: unknown field 'api_keys'" in str(info.value)


# --- the replica app -----------------------------------------------------------------------------------------


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def replica_app(project: Path, executor: ThreadPoolExecutor, keys: ApiKeys | None) -> ReplicaApp:
    (project / "handler.py").write_text(textwrap.dedent("""
        class Handler:
            def handle_post(self, payload):
                return {"echo": payload}
    """))
    config = ReplicaConfig(api_name="iris", handler=HandlerRef(type="python", path="handler.py"))
    admission = Admission(1, 1)
    app = ReplicaApp(revision=3, max_body_bytes=1024, admission=admission,
                     metrics=ReplicaMetrics("iris", 3, lambda: admission.in_flight), api_keys=keys)  # fmt: skip
    app.invoker = load_handler(config, project, project / "cache", executor)
    return app


def requests_by_status(text: str) -> dict[str, float]:
    return {
        sample.labels["status_code"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cortex_requests_total"
    }


def test_predict_routes_need_a_key_and_probes_do_not(project: Path, executor: ThreadPoolExecutor) -> None:
    app = replica_app(project, executor, ApiKeys((KEY, OTHER)))

    async def exchange() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
            return [
                await client.post("/", json={"x": 1}),
                await client.post("/predict", json={"x": 1}, headers={"Authorization": "Bearer wrong"}),
                await client.get("/", headers={"X-Api-Key": "wrong"}),  # the key is checked before the method
                await client.post("/", json={"x": 1}, headers={"Authorization": f"Bearer {KEY}"}),
                await client.post("/predict", json={"x": 2}, headers={"X-Api-Key": OTHER}),
                await client.get("/healthz"),
                await client.get("/readyz"),
                await client.get("/metrics"),
            ]

    missing, wrong, wrong_get, bearer, api_key, healthz, readyz, metrics = asyncio.run(exchange())
    for response in (missing, wrong, wrong_get):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["x-cortex-revision"] == "3" and response.headers["x-request-id"]
        assert response.json()["error"].startswith("missing or invalid API key")
    assert (bearer.status_code, bearer.json()) == (200, {"echo": {"x": 1}})
    assert (api_key.status_code, api_key.json()) == (200, {"echo": {"x": 2}})
    assert (healthz.status_code, readyz.status_code, metrics.status_code) == (200, 200, 200)
    assert requests_by_status(metrics.text) == {"401": 3.0, "200": 2.0}


def test_without_keys_the_api_is_open(project: Path, executor: ThreadPoolExecutor) -> None:
    app = replica_app(project, executor, None)

    async def exchange() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica") as client:
            return await client.post("/", json={"x": 1})

    response = asyncio.run(exchange())
    assert (response.status_code, response.json()) == (200, {"echo": {"x": 1}})
