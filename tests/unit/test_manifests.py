"""Kubernetes manifests: every object validates against the official schemas (built-in kinds) or the
published CRD fields (HTTPRoute, ScaledObject), and carries what the backend and the cluster rely on."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cortex_flows.backends.base import SplitterSpec, VersionSpec
from cortex_flows.backends.kubernetes.manifests import (
    CACHE_DIR,
    CONFIG_DIR,
    CONFIG_KEY,
    CONTAINER_PORT,
    GRACE_SECONDS,
    IN_FLIGHT_METRIC,
    LIVENESS_PATH,
    PRESTOP_SECONDS,
    READINESS_PATH,
    STARTUP_BUDGET_SECONDS,
    KubeTarget,
    annotations_of,
    api_keys_secret,
    api_keys_secret_name,
    apportion,
    dump_yaml,
    labels,
    render_project,
    route_object,
    selector_labels,
    splitter_route,
    version_name,
    version_objects,
)
from cortex_flows.backends.local.supervisor import DEFAULT_GRACE_SECONDS
from cortex_flows.backends.versions import splitter_spec, version_spec
from cortex_flows.rollout.plan import Action, DeployPlan
from cortex_flows.serving.__main__ import parse_args
from cortex_flows.serving.auth import API_KEYS_ENV, api_keys_env, keys_digest, parse_api_keys
from cortex_flows.serving.config import PackageRef, ReplicaConfig, S3Access
from cortex_flows.serving.metrics import ReplicaMetrics
from cortex_flows.spec import API_KINDS, ProjectSpec, RealtimeAPI, TrafficSplitter

K8S_VERSION = kubernetes_validate.latest_version()  # 1.37 with kubernetes-validate 1.37
EXAMPLE = Path(__file__).resolve().parents[2] / "deployments" / "iris-classifier"
SHA = "5" * 64
PACKAGE = PackageRef(uri=f"s3://packages-bucket/team/packages/{SHA}.tar.gz", sha256=SHA)
AWS_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

# A project using every feature the manifests render: GPU, memory, env, dependencies, int and percent
# update strategies (and a zero max_unavailable), min_replicas 0, a fractional in-flight target, an
# endpoint with several segments, a splitter with a shadow.
FULL_SPEC = """
- name: vision
  kind: RealtimeAPI
  handler: {type: python, path: src/handler.py, python_path: src}
  model_path: s3://models-bucket/vision/model.pt
  config: {threshold: 0.5}
  env: {LOG_LEVEL: debug, HOME: /tmp/home}
  dependencies: {pip: requirements-gpu.txt}
  compute: {cpu: "1.5", gpu: 2, mem: 6Gi}
  pod: {max_concurrency: 2, max_queue_length: 8}
  autoscaling:
    min_replicas: 0
    max_replicas: 12
    init_replicas: 2
    target_in_flight: 2.5
    window: 30s
    max_downscale_factor: 0.5
    max_upscale_factor: 3
    upscale_stabilization_period: 0s
    downscale_stabilization_period: 2h
  update_strategy: {max_surge: 2, max_unavailable: "0%", progress_deadline: 15m}
  networking: {endpoint: /v1/vision}
- name: tabular
  kind: RealtimeAPI
  handler: {type: sklearn}
  model_path: s3://models-bucket/tabular.joblib
  update_strategy: {max_surge: "50%", max_unavailable: 1}
- name: tabular-next
  kind: RealtimeAPI
  handler: {type: sklearn}
  model_path: s3://models-bucket/tabular-next.joblib
  compute: {cpu: 250m, mem: 512Mi}
- name: ab
  kind: TrafficSplitter
  apis:
    - {name: vision, weight: 70}
    - {name: tabular, weight: 30}
    - {name: tabular-next, weight: 15, shadow: true}
  networking: {endpoint: /ab}
"""


def _project(text: str, project_dir: Path) -> ProjectSpec:
    """Validated APIs without the file-existence checks (those belong to the spec's own tests)."""
    apis = [API_KINDS[item["kind"]].model_validate(item) for item in yaml.safe_load(text)]
    return ProjectSpec(file=project_dir / "cortex.yaml", project_dir=project_dir, apis=apis)


IRIS = _project((EXAMPLE / "cortex.yaml").read_text(), EXAMPLE)
FULL = _project(FULL_SPEC, Path("/projects/full"))
TARGETS = {
    "keda": KubeTarget(),
    "hpa": KubeTarget(
        namespace="ml",
        image="registry.example.com/cortex-flows-serving:1.2.3",
        gateway="edge",
        gateway_namespace="gateways",
        autoscaler="hpa",
        aws_secret="aws-store",
        service_account="serving",
    ),
    "keda-secret": KubeTarget(namespace="ml", aws_secret="aws-store", prometheus_url="http://prom.ops:9090"),
}


def _api(project: ProjectSpec, name: str) -> RealtimeAPI:
    api = project.select(name)
    assert isinstance(api, RealtimeAPI)
    return api


def _version(
    api: RealtimeAPI, revision: int = 1, restart: str = "", s3: S3Access | None = None
) -> VersionSpec:
    return version_spec(
        api, PACKAGE, DeployPlan(Action.ROLL, revision, api.init_replicas, restart=restart), s3
    )


def every_object(target: KubeTarget) -> list[dict[str, Any]]:
    """Both example projects, plus what a canary adds: an arm with a floor, mixed and zero weights, a mirror."""
    vision = _api(FULL, "vision")
    objects = render_project(IRIS, PACKAGE, target) + render_project(FULL, PACKAGE, target)
    objects += version_objects(
        _version(vision, 2, s3=S3Access(endpoint_url="http://s3.local")), 1, target, floor=1
    )
    objects.append(route_object("vision", vision.endpoint, {1: 95, 2: 5}, target, mirror=(2, 0.1)))
    objects.append(route_object("vision", vision.endpoint, {1: 100, 2: 0}, target))
    split = splitter_spec(next(s for s in FULL.splitters))
    weights = {"vision": {1: 95, 2: 5}, "tabular": {3: 100}, "tabular-next": {1: 40, 2: 60}}
    objects.append(splitter_route(split, weights, target))
    return objects


def _kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in _kinds(objects, "Deployment")]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


# --- CRD field lists ---------------------------------------------------------------------------------
# Allowed keys per level, from the published CRD schemas: Gateway API v1.2 HTTPRoute
# (gateway.networking.k8s.io/v1, standard and experimental channels) and KEDA v2 ScaledObject
# (keda.sh/v1alpha1). A node is (required keys, {key: child}); a child is a node, a Python type for a
# scalar, [child] for a list, or STR_MAP for a map of strings.

STR_MAP = "map[string]string"
Node = tuple[frozenset[str], dict[str, Any]]


def node(required: tuple[str, ...] = (), **keys: Any) -> Node:
    return frozenset(required), keys


OBJECT_META = node(("name",), name=str, namespace=str, labels=STR_MAP, annotations=STR_MAP)
HEADER = node(("name", "value"), name=str, value=str)
HEADER_MODIFIER = node(set=[HEADER], add=[HEADER], remove=[str])
PATH_MODIFIER = node(("type",), type=str, replaceFullPath=str, replacePrefixMatch=str)
BACKEND_OBJECT_REF = node(("name",), group=str, kind=str, name=str, namespace=str, port=int)
ROUTE_FILTER = node(
    ("type",),
    type=str,
    requestHeaderModifier=HEADER_MODIFIER,
    responseHeaderModifier=HEADER_MODIFIER,
    requestMirror=node(
        ("backendRef",),
        backendRef=BACKEND_OBJECT_REF,
        percent=int,
        fraction=node(("numerator",), numerator=int, denominator=int),
    ),
    requestRedirect=node(scheme=str, hostname=str, path=PATH_MODIFIER, port=int, statusCode=int),
    urlRewrite=node(hostname=str, path=PATH_MODIFIER),
    extensionRef=node(("group", "kind", "name"), group=str, kind=str, name=str),
)
HTTP_ROUTE = node(
    ("apiVersion", "kind", "metadata", "spec"),
    apiVersion=str,
    kind=str,
    metadata=OBJECT_META,
    spec=node(
        parentRefs=[node(("name",), group=str, kind=str, namespace=str, name=str, sectionName=str, port=int)],
        hostnames=[str],
        rules=[
            node(
                name=str,
                matches=[
                    node(
                        path=node(type=str, value=str),
                        headers=[node(("name", "value"), type=str, name=str, value=str)],
                        queryParams=[node(("name", "value"), type=str, name=str, value=str)],
                        method=str,
                    )
                ],
                filters=[ROUTE_FILTER],
                backendRefs=[
                    node(
                        ("name",),
                        group=str,
                        kind=str,
                        name=str,
                        namespace=str,
                        port=int,
                        weight=int,
                        filters=[ROUTE_FILTER],
                    )
                ],
                timeouts=node(request=str, backendRequest=str),
                retry=node(codes=[int], attempts=int, backoff=str),
                sessionPersistence=node(
                    sessionName=str,
                    absoluteTimeout=str,
                    idleTimeout=str,
                    type=str,
                    cookieConfig=node(lifetimeType=str),
                ),
            )
        ],
    ),
)
SCALING_RULES = node(
    stabilizationWindowSeconds=int,
    selectPolicy=str,
    policies=[node(("type", "value", "periodSeconds"), type=str, value=int, periodSeconds=int)],
)
SCALED_OBJECT = node(
    ("apiVersion", "kind", "metadata", "spec"),
    apiVersion=str,
    kind=str,
    metadata=OBJECT_META,
    spec=node(
        ("scaleTargetRef", "triggers"),
        scaleTargetRef=node(("name",), apiVersion=str, kind=str, name=str, envSourceContainerName=str),
        pollingInterval=int,
        cooldownPeriod=int,
        initialCooldownPeriod=int,
        idleReplicaCount=int,
        minReplicaCount=int,
        maxReplicaCount=int,
        fallback=node(("failureThreshold", "replicas"), failureThreshold=int, replicas=int, behavior=str),
        advanced=node(
            restoreToOriginalReplicaCount=bool,
            horizontalPodAutoscalerConfig=node(
                name=str, behavior=node(scaleUp=SCALING_RULES, scaleDown=SCALING_RULES)
            ),
            scalingModifiers=node(formula=str, target=str, activationTarget=str, metricType=str),
        ),
        triggers=[
            node(
                ("type", "metadata"),
                type=str,
                name=str,
                metadata=STR_MAP,
                metricType=str,
                useCachedMetrics=bool,
                authenticationRef=node(("name",), name=str, kind=str),
            )
        ],
    ),
)
CRDS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTE,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
}


def crd_problems(value: Any, schema: Any, path: str = "") -> list[str]:
    """Unknown keys, missing required keys and wrong scalar types, each with its path."""
    if schema == STR_MAP:
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
        return [] if ok else [f"{path}: expected a map of strings, got {value!r}"]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in crd_problems(item, schema[0], f"{path}[{i}]")]
    if isinstance(schema, type):
        if (isinstance(value, bool) and schema is not bool) or not isinstance(value, schema):
            return [f"{path}: expected {schema.__name__}, got {value!r}"]
        return []
    required, keys = schema
    if not isinstance(value, dict):
        return [f"{path}: expected an object, got {value!r}"]
    problems = [f"{path}.{key}: unknown field" for key in sorted(set(value) - set(keys))]
    problems += [f"{path}.{key}: required" for key in sorted(required - set(value))]
    for key in sorted(set(value) & set(keys)):
        problems += crd_problems(value[key], keys[key], f"{path}.{key}")
    return problems


def route_rule_problems(route: dict[str, Any]) -> list[str]:
    """The CEL rules and bounds of the HTTPRoute CRD that bear on what we render."""
    problems = []
    for rule in route["spec"]["rules"]:
        types = [f["type"] for f in rule.get("filters", [])]
        for once in ("URLRewrite", "RequestRedirect", "RequestHeaderModifier", "ResponseHeaderModifier"):
            if types.count(once) > 1:
                problems.append(f"{once} filter repeated")
        if "URLRewrite" in types and "RequestRedirect" in types:
            problems.append("URLRewrite and RequestRedirect together")
        prefix_rewrite = any(
            f["type"] == "URLRewrite" and f["urlRewrite"].get("path", {}).get("type") == "ReplacePrefixMatch"
            for f in rule.get("filters", [])
        )
        matches = rule.get("matches", [])
        if prefix_rewrite and (len(matches) != 1 or matches[0]["path"]["type"] != "PathPrefix"):
            problems.append("ReplacePrefixMatch needs exactly one PathPrefix match")
        for match in matches:
            if not match["path"]["value"].startswith("/") or len(match["path"]["value"]) > 1024:
                problems.append(f"bad path {match['path']['value']!r}")
        for ref in rule.get("backendRefs", []):
            if not 0 <= ref.get("weight", 1) <= 1_000_000:
                problems.append(f"weight out of range: {ref}")
            if ref.get("kind", "Service") == "Service" and "port" not in ref:
                problems.append(f"a Service backendRef needs a port: {ref}")
        for f in rule.get("filters", []):
            if f["type"] == "RequestMirror" and not 0 <= f["requestMirror"].get("percent", 100) <= 100:
                problems.append(f"mirror percent out of range: {f}")
        if len(rule.get("backendRefs", [])) > 16:
            problems.append("more than 16 backendRefs")
    if len(route["spec"]["rules"]) > 16:
        problems.append("more than 16 rules")
    return problems


def validate(obj: dict[str, Any]) -> None:
    """The official schema for built-in kinds; the CRD field lists (and rules) for the others."""
    schema = CRDS.get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return
    problems = crd_problems(obj, schema)
    if obj["kind"] == "HTTPRoute":
        problems += route_rule_problems(obj)
    else:
        spec = obj["spec"]
        if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
            problems.append("minReplicaCount > maxReplicaCount")
        for trigger in spec["triggers"]:
            if trigger.get("metricType", "AverageValue") not in ("AverageValue", "Value", "Utilization"):
                problems.append(f"metricType {trigger['metricType']!r}")
        # The embedded HPA behavior is autoscaling/v2's own type: check it with the official schema.
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:
            kubernetes_validate.validate(_hpa_with(behavior), K8S_VERSION, strict=True)
    assert not problems, f"{obj['kind']} {obj['metadata']['name']}: {problems}"


def _hpa_with(behavior: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "x"},
        "spec": {
            "scaleTargetRef": {"kind": "Deployment", "name": "x"},
            "maxReplicas": 1,
            "behavior": behavior,
        },
    }


# --- schemas -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS.values(), ids=TARGETS.keys())
def test_every_object_of_every_example_validates(target: KubeTarget) -> None:
    objects = every_object(target)
    autoscaler = "HorizontalPodAutoscaler" if target.autoscaler == "hpa" else "ScaledObject"
    expected = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", autoscaler, "HTTPRoute"}
    assert {o["kind"] for o in objects} == expected
    for obj in objects:
        validate(obj)


def test_the_checks_catch_mistakes() -> None:
    """The validation above can fail: a misspelled field, a missing required one, a wrong type."""
    objects = every_object(TARGETS["keda"])
    deployment = copy.deepcopy(_kinds(objects, "Deployment")[0])
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    route = copy.deepcopy(_kinds(objects, "HTTPRoute")[-1])
    route["spec"]["rules"][0]["backendRef"] = route["spec"]["rules"][0].pop("backendRefs")
    with pytest.raises(AssertionError, match=r"backendRef: unknown field"):
        validate(route)
    scaled = copy.deepcopy(_kinds(objects, "ScaledObject")[0])
    del scaled["spec"]["scaleTargetRef"]
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 4
    with pytest.raises(
        AssertionError, match=r"scaleTargetRef: required.*metadata: expected a map of strings"
    ):
        validate(scaled)
    route = copy.deepcopy(_kinds(objects, "HTTPRoute")[0])
    route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Exact"
    with pytest.raises(AssertionError, match="ReplacePrefixMatch needs"):
        validate(route)


# --- names, labels, determinism ----------------------------------------------------------------------


def test_names_labels_and_namespace() -> None:
    target = TARGETS["hpa"]
    objects = every_object(target)
    for obj in objects:
        meta = obj["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "cortex-flows"
        assert len(meta["name"]) <= 63
        api = meta["labels"]["app.kubernetes.io/name"]
        assert labels(api).items() <= meta["labels"].items()  # labels(api) selects every object of the API
        if obj["kind"] == "HTTPRoute":
            assert meta["name"] == api
        else:
            revision = int(meta["labels"]["app.kubernetes.io/version"])
            assert meta["name"] == version_name(api, revision) == f"{api}-r{revision}"
            assert meta["labels"] == labels(api, revision)
    for deployment in _kinds(objects, "Deployment"):
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()
        api, revision = pod_labels["app.kubernetes.io/name"], int(pod_labels["app.kubernetes.io/version"])
        assert selector == selector_labels(api, revision)
        assert labels(api).items() <= pod_labels.items()
    assert labels("iris") == {
        "app.kubernetes.io/name": "iris",
        "app.kubernetes.io/part-of": "cortex-flows",
        "app.kubernetes.io/managed-by": "cortex-flows",
    }
    assert set(labels("iris", 3)) == {
        f"app.kubernetes.io/{k}"
        for k in ("name", "instance", "version", "component", "part-of", "managed-by")
    }


def test_rendering_is_deterministic() -> None:
    first = dump_yaml(every_object(TARGETS["hpa"]))
    again = dump_yaml(every_object(TARGETS["hpa"]))
    assert first == again
    assert list(yaml.safe_load_all(first)) == every_object(TARGETS["hpa"])


# --- the Deployment ----------------------------------------------------------------------------------


def _objects(api: RealtimeAPI, target: KubeTarget, **kw: Any) -> dict[str, dict[str, Any]]:
    version = kw.pop("version", None) or _version(api)
    return {o["kind"]: o for o in version_objects(version, kw.pop("replicas", 3), target, spec=api, **kw)}


def test_deployment_follows_the_spec() -> None:
    vision = _api(FULL, "vision")
    deployment = _objects(vision, TARGETS["hpa"])["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 2, "maxUnavailable": "0%"},
    }
    assert spec["progressDeadlineSeconds"] == 15 * 60
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "serving"
    assert pod["terminationGracePeriodSeconds"] == GRACE_SECONDS + PRESTOP_SECONDS
    assert GRACE_SECONDS == DEFAULT_GRACE_SECONDS  # replicas drain as long as the local backend's
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    (prepare,), (serve,) = pod["initContainers"], pod["containers"]
    assert serve["resources"] == {
        "requests": {"cpu": "1.5", "memory": "6Gi", "nvidia.com/gpu": 2},
        "limits": {"memory": "6Gi", "nvidia.com/gpu": 2},
    }
    assert prepare["resources"] == {"requests": {"cpu": "1.5", "memory": "6Gi"}, "limits": {"memory": "6Gi"}}
    # The user's variables as plain values (they win over the runtime's HOME)
    assert serve["env"] == [{"name": "HOME", "value": "/tmp/home"}, {"name": "LOG_LEVEL", "value": "debug"}]
    tabular = _objects(_api(FULL, "tabular"), TARGETS["keda"])["Deployment"]
    assert tabular["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "50%", "maxUnavailable": 1}
    tab_pod = tabular["spec"]["template"]["spec"]
    assert "tolerations" not in tab_pod and "serviceAccountName" not in tab_pod
    assert tab_pod["containers"][0]["resources"] == {"requests": {"cpu": "200m"}}
    assert tab_pod["containers"][0]["env"] == [{"name": "HOME", "value": "/tmp"}]


def test_containers_run_the_runtime_as_its_cli_expects() -> None:
    target = TARGETS["hpa"]
    objects = _objects(_api(FULL, "vision"), target)
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (prepare,), (serve,) = pod["initContainers"], pod["containers"]
    assert prepare["image"] == serve["image"] == target.image
    serve_args, prepare_args = parse_args(serve["args"]), parse_args(prepare["args"])
    assert prepare_args.prepare_only and not serve_args.prepare_only
    assert serve_args.port == CONTAINER_PORT == serve["ports"][0]["containerPort"]
    assert serve_args.host == "0.0.0.0"
    assert serve_args.grace == GRACE_SECONDS
    config_path = Path(CONFIG_DIR) / CONFIG_KEY
    assert serve_args.config == prepare_args.config == config_path
    # The config file comes from the version's ConfigMap, mounted read-only at CONFIG_DIR
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in (prepare, serve):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[CONFIG_DIR]["readOnly"] is True
        assert (
            volumes[mounts[CONFIG_DIR]["name"]]["configMap"]["name"]
            == objects["ConfigMap"]["metadata"]["name"]
        )
        assert volumes[mounts[CACHE_DIR]["name"]] == {"name": mounts[CACHE_DIR]["name"], "emptyDir": {}}
        assert volumes[mounts["/tmp"]["name"]] == {"name": mounts["/tmp"]["name"], "emptyDir": {}}
    replica = ReplicaConfig.model_validate_json(objects["ConfigMap"]["data"][CONFIG_KEY])
    version = _version(_api(FULL, "vision"))
    assert replica == version.replica.model_copy(update={"cache_dir": CACHE_DIR})


def test_probes_and_shutdown() -> None:
    serve = _objects(_api(IRIS, "iris-classifier"), TARGETS["keda"])["Deployment"]["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert (
        serve["readinessProbe"]["httpGet"]
        == {"path": READINESS_PATH, "port": "http"}
        == {"path": "/readyz", "port": "http"}
    )
    assert serve["livenessProbe"]["httpGet"] == {"path": LIVENESS_PATH, "port": "http"}
    assert LIVENESS_PATH == "/healthz"
    startup = serve["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"  # a model still loading is not yet started
    assert startup["failureThreshold"] * startup["periodSeconds"] == STARTUP_BUDGET_SECONDS >= 15 * 60
    assert serve["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}}
    assert serve["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_probe_paths_exist_in_the_runtime() -> None:
    """/readyz, /healthz and /metrics are routes of the replica app (it answers 404 to any other)."""
    import asyncio

    from cortex_flows.serving.admission import Admission
    from cortex_flows.serving.app import ReplicaApp

    admission = Admission(1, 1)
    app = ReplicaApp(
        revision=1, max_body_bytes=10, admission=admission, metrics=ReplicaMetrics("a", 1, lambda: 0)
    )

    async def get(path: str) -> int:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        await app({"type": "http", "path": path, "method": "GET", "headers": []}, receive, send)
        return sent[0]["status"]

    statuses = {path: asyncio.run(get(path)) for path in (LIVENESS_PATH, READINESS_PATH, "/metrics", "/nope")}
    assert statuses == {"/healthz": 200, "/readyz": 503, "/metrics": 200, "/nope": 404}  # 503: still loading


def test_security_context_everywhere() -> None:
    for target in TARGETS.values():
        for pod in _pod_specs(every_object(target)):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == 10001
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert pod["automountServiceAccountToken"] is False
            assert not any("hostPath" in v for v in pod["volumes"])
            for container in _containers(pod):
                sc = container["securityContext"]
                assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
                assert sc["readOnlyRootFilesystem"] is True
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["privileged"] is False
                assert sc["capabilities"] == {"drop": ["ALL"]}
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
                writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
                assert writable == {"/tmp", CACHE_DIR}


def test_aws_credentials_only_by_secret_reference() -> None:
    for name, target in TARGETS.items():
        objects = every_object(target)
        text = dump_yaml(objects)
        assert not any(key in text for key in AWS_NAMES)  # never a key name, so never a value
        for pod in _pod_specs(objects):
            for container in _containers(pod):
                assert not any(e["name"].startswith("AWS_") or "valueFrom" in e for e in container["env"])
                if target.aws_secret:
                    assert container["envFrom"] == [{"secretRef": {"name": target.aws_secret}}], name
                else:
                    assert "envFrom" not in container, name


# --- annotations: what the backend reads, what rolls pods --------------------------------------------


def test_annotations_for_the_backend_and_the_pod_template() -> None:
    api = _api(IRIS, "iris-classifier")
    version = _version(api, 4, restart="r1")
    assert annotations_of(version) == {
        "cortex-flows.dev/revision": "4",
        "cortex-flows.dev/package-id": SHA,
        "cortex-flows.dev/spec-hash": version.spec_hash,
        "cortex-flows.dev/pod-hash": version.pod_hash,
        "cortex-flows.dev/restart": "r1",
        "cortex-flows.dev/target-replicas": "1",
    }
    assert (
        annotations_of(version.model_copy(update={"target_replicas": None}))[
            "cortex-flows.dev/target-replicas"
        ]
        == ""
    )
    deployment = _objects(api, KubeTarget(), version=version)["Deployment"]
    assert deployment["metadata"]["annotations"] == annotations_of(version)
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["cortex-flows.dev/pod-hash"] == version.pod_hash
    assert "cortex-flows.dev/spec-hash" not in template["metadata"]["annotations"]

    def template_of(v: VersionSpec, **kw: Any) -> dict[str, Any]:
        return _objects(api, KubeTarget(), version=v, **kw)["Deployment"]["spec"]["template"]

    # In-place changes (target, spec hash, replicas, floor) keep the pods; a new pod hash rolls them.
    assert (
        template_of(
            version.model_copy(update={"target_replicas": 9, "spec_hash": "x" * 32}), replicas=7, floor=2
        )
        == template
    )
    assert template_of(version.model_copy(update={"pod_hash": "y" * 32})) != template
    arm = _objects(api, KubeTarget(), version=version, floor=2)["Deployment"]
    assert arm["metadata"]["annotations"]["cortex-flows.dev/floor"] == "2"
    assert "cortex-flows.dev/floor" not in deployment["metadata"]["annotations"]


# --- Service, PDB, autoscalers -----------------------------------------------------------------------


def test_service_and_pdb() -> None:
    objects = _objects(_api(FULL, "vision"), TARGETS["keda"])
    service, pdb = objects["Service"], objects["PodDisruptionBudget"]
    pod_labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1  # max_unavailable 0% would block every node drain
    assert (
        _objects(_api(FULL, "tabular"), TARGETS["keda"])["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    )
    assert (
        _objects(_api(IRIS, "iris-classifier"), TARGETS["keda"])["PodDisruptionBudget"]["spec"][
            "maxUnavailable"
        ]
        == "25%"
    )


def test_keda_scaled_object() -> None:
    vision = _api(FULL, "vision")
    scaled = _objects(vision, TARGETS["keda-secret"])["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vision-r1"}
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (0, 12)  # KEDA scales to zero
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    meta = trigger["metadata"]
    assert meta["serverAddress"] == "http://prom.ops:9090"
    assert meta["threshold"] == "2.5"
    assert meta["query"] == (
        'sum(avg_over_time(cortex_in_flight_requests{namespace="ml",api_name="vision",revision="1"}[30s]))'
    )
    # The series and labels the query names are the ones a replica exports
    exported = ReplicaMetrics("vision", 1, lambda: 0).render().decode()
    assert f'{IN_FLIGHT_METRIC}{{api_name="vision",revision="1"}}' in exported
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["policies"][0] == {"type": "Percent", "value": 200, "periodSeconds": 10}
    assert behavior["scaleDown"]["policies"][0] == {"type": "Percent", "value": 50, "periodSeconds": 10}
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 3600  # 2h, cut to the HPA's limit
    assert scaled["cooldownPeriod"] == 2 * 3600
    floored = _objects(vision, TARGETS["keda"], floor=3)["ScaledObject"]["spec"]
    assert (floored["minReplicaCount"], floored["maxReplicaCount"]) == (3, 12)


def test_hpa() -> None:
    vision = _api(FULL, "vision")
    hpa = _objects(vision, TARGETS["hpa"])["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 12)  # an HPA cannot scale to zero
    assert hpa["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "cortex_in_flight_requests"},
                "target": {"type": "AverageValue", "averageValue": "2500m"},
            },
        }
    ]
    assert _objects(vision, TARGETS["hpa"], floor=5)["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 5
    iris = _objects(_api(IRIS, "iris-classifier"), TARGETS["hpa"])["HorizontalPodAutoscaler"]["spec"]
    assert (iris["minReplicas"], iris["maxReplicas"]) == (1, 4)
    assert iris["metrics"][0]["pods"]["target"]["averageValue"] == "4"


def test_version_spec_alone_is_enough() -> None:
    """Without `spec` the API spec is read back from the VersionSpec (as the backend has it)."""
    vision = _api(FULL, "vision")
    version = _version(vision)
    assert version_objects(version, 2, TARGETS["hpa"]) == version_objects(
        version, 2, TARGETS["hpa"], spec=vision
    )


# --- routes --------------------------------------------------------------------------------------------


def test_api_route() -> None:
    target = TARGETS["hpa"]
    route = route_object("vision", "/v1/vision", {2: 5, 1: 95}, target, mirror=(2, 0.1))
    assert route["metadata"]["name"] == "vision"
    assert route["metadata"]["annotations"] == {"cortex-flows.dev/endpoint": "/v1/vision"}
    assert route["metadata"]["labels"]["cortex-flows.dev/kind"] == "realtime-api"
    assert route["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge", "namespace": "gateways"}
    ]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1/vision"}}]
    assert rule["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "vision-r1", "port": 80, "weight": 95},
        {"group": "", "kind": "Service", "name": "vision-r2", "port": 80, "weight": 5},
    ]
    assert rule["filters"] == [
        {
            "type": "URLRewrite",
            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
        },
        {
            "type": "RequestMirror",
            "requestMirror": {
                "backendRef": {"group": "", "kind": "Service", "name": "vision-r2", "port": 80},
                "percent": 10,
            },
        },
    ]
    plain = route_object("vision", "/v1/vision", {1: 100, 2: 0}, KubeTarget())
    assert [r["weight"] for r in plain["spec"]["rules"][0]["backendRefs"]] == [100, 0]
    assert [f["type"] for f in plain["spec"]["rules"][0]["filters"]] == ["URLRewrite"]
    assert "namespace" not in plain["spec"]["parentRefs"][0]
    assert route_object("v", "/v", {1: 100}, KubeTarget(), mirror=(1, 0.0)) == route_object(
        "v", "/v", {1: 100}, KubeTarget()
    )
    tiny = route_object("v", "/v", {1: 100}, KubeTarget(), mirror=(1, 0.001))
    assert tiny["spec"]["rules"][0]["filters"][1]["requestMirror"]["percent"] == 1
    with pytest.raises(ValueError, match="mirror share"):
        route_object("v", "/v", {1: 100}, KubeTarget(), mirror=(1, 1.5))


def _split(weights: dict[str, int], shadow: str | None = None, percent: int = 0) -> SplitterSpec:
    return SplitterSpec(
        name="ab", endpoint="/ab", weights=weights, shadow=shadow, shadow_percent=percent, spec_hash="h"
    )


def _ref_weights(route: dict[str, Any]) -> dict[str, int]:
    return {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}


def test_splitter_route_weights_and_shadow() -> None:
    split = _split({"a": 70, "b": 30}, shadow="c", percent=15)
    weights = {"a": {1: 90, 2: 10}, "b": {4: 100}, "c": {1: 30, 2: 70, 3: 0}}
    route = splitter_route(split, weights, KubeTarget())
    assert _ref_weights(route) == {"a-r1": 6300, "a-r2": 700, "b-r4": 3000}  # split % x version %
    mirror = route["spec"]["rules"][0]["filters"][1]["requestMirror"]
    assert mirror == {
        "backendRef": {"group": "", "kind": "Service", "name": "c-r2", "port": 80},
        "percent": 15,
    }
    assert route["metadata"]["name"] == "ab"
    assert route["metadata"]["labels"]["cortex-flows.dev/kind"] == "traffic-splitter"
    assert (
        SplitterSpec.model_validate_json(route["metadata"]["annotations"]["cortex-flows.dev/splitter"])
        == split
    )
    assert route["metadata"]["annotations"]["cortex-flows.dev/endpoint"] == "/ab"
    # Version weights not summing to 100 keep each API's share exact; an API with no weight at all
    # sends its share to its newest version; a 0% API stays listed with weight 0.
    odd = splitter_route(
        _split({"a": 99, "b": 1, "z": 0}),
        {"a": {1: 1, 2: 1, 3: 1}, "b": {1: 0, 2: 0}, "z": {7: 100}},
        KubeTarget(),
    )
    assert _ref_weights(odd) == {"a-r1": 3300, "a-r2": 3300, "a-r3": 3300, "b-r1": 0, "b-r2": 100, "z-r7": 0}
    with pytest.raises(ValueError, match="no version weights for its target API 'b'"):
        splitter_route(_split({"a": 50, "b": 50}), {"a": {1: 100}}, KubeTarget())


def test_splitter_weights_property() -> None:
    """Over random splits and version weights: every API gets exactly its share and every backendRef is
    within one unit of the exact product."""
    rng = random.Random(20240611)
    for _ in range(500):
        apis = [f"api{i}" for i in range(rng.randint(1, 5))]
        cuts = sorted(rng.randint(0, 100) for _ in range(len(apis) - 1))
        split_weights = dict(
            zip(apis, (b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)), strict=True)
        )
        versions = {
            api: {rev: rng.choice((0, 1, 3, 10, 33, 50, 97, 100)) for rev in range(1, rng.randint(2, 5))}
            for api in apis
        }
        route = splitter_route(_split(split_weights), versions, KubeTarget())
        got = _ref_weights(route)
        assert sum(got.values()) == 100 * 100
        for api, percent in split_weights.items():
            mine = {int(name.rsplit("-r", 1)[1]): w for name, w in got.items() if name.startswith(f"{api}-r")}
            assert sum(mine.values()) == percent * 100
            total = sum(versions[api].values())
            for rev, weight in mine.items():
                exact = percent * 100 * versions[api][rev] / total if total else None
                if exact is not None:
                    assert abs(weight - exact) < 1


def test_apportion_property() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        weights = {k: rng.randint(0, 1000) for k in range(rng.randint(1, 8))}
        total = rng.randint(0, 10_000)
        got = apportion(total, weights)
        whole = sum(weights.values())
        if whole == 0:
            assert set(got.values()) == {0}
            continue
        assert sum(got.values()) == total
        for key, w in weights.items():
            exact = total * w / whole
            assert int(exact) <= got[key] <= int(exact) + 1
    assert apportion(100, {"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}  # ties: earlier key


def test_render_project_creates_revision_one_at_full_weight() -> None:
    objects = render_project(FULL, PACKAGE, KubeTarget())
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    per_api = ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ScaledObject"]
    expected = [(kind, f"{api}-r1") for api in ("vision",) for kind in per_api] + [("HTTPRoute", "vision")]
    expected += [(kind, "tabular-r1") for kind in per_api] + [("HTTPRoute", "tabular")]
    expected += [(kind, "tabular-next-r1") for kind in per_api] + [("HTTPRoute", "tabular-next")]
    assert names == [*expected, ("HTTPRoute", "ab")]
    deployments = {d["metadata"]["name"]: d for d in _kinds(objects, "Deployment")}
    assert deployments["vision-r1"]["spec"]["replicas"] == 2  # init_replicas
    assert deployments["vision-r1"]["metadata"]["annotations"]["cortex-flows.dev/revision"] == "1"
    assert _ref_weights(objects[-1]) == {"vision-r1": 7000, "tabular-r1": 3000}
    config = json.loads(_kinds(objects, "ConfigMap")[0]["data"][CONFIG_KEY])
    assert config["package"] == {"uri": PACKAGE.uri, "sha256": SHA}
    splitter = next(s for s in FULL.splitters)
    assert isinstance(splitter, TrafficSplitter) and splitter.shadow is not None
    assert objects[-1]["spec"]["rules"][0]["filters"][1]["requestMirror"]["percent"] == splitter.shadow.weight


# --- API keys --------------------------------------------------------------------------------------


def test_api_keys_reach_only_the_serving_container_by_secret_key_ref() -> None:
    """The keys are in one object, the API's keys Secret; the Deployment names it by secretKeyRef in the
    serving container only, so no manifest holds a key and the init container (pip) never gets one."""
    keys = ("k-manifest-never-inline-5e1d", "k-second-77c0")
    plain = _api(IRIS, "iris-classifier")
    api = RealtimeAPI.model_validate(
        plain.model_dump() | {"networking": {"endpoint": plain.endpoint, "api_keys": "iris-keys"}}
    )
    ref = {"secretKeyRef": {"name": "iris-classifier-api-keys", "key": "api-keys"}}
    reference = {"name": API_KEYS_ENV, "valueFrom": ref}
    for name, target in TARGETS.items():
        plan = DeployPlan(Action.CREATE, 1, 2)
        version = version_spec(api, PACKAGE, plan, keys_digest=keys_digest(keys))
        objects = version_objects(version, 2, target, spec=api)
        objects.append(route_object(api.name, api.endpoint, {1: 100}, target))
        secret = api_keys_secret(api.name, api_keys_env(keys)[API_KEYS_ENV], target)
        for obj in [*objects, secret]:
            validate(obj)
        text = dump_yaml(objects)
        assert not any(key in text for key in keys), name
        (pod,) = _pod_specs(objects)
        (prepare,), (serve,) = pod["initContainers"], pod["containers"]
        assert [e for e in serve["env"] if e["name"] == API_KEYS_ENV] == [reference], name
        assert all("value" in e for e in serve["env"] if e != reference)  # the rest is plain, none secret
        assert API_KEYS_ENV not in json.dumps(prepare), name
        envs_from = [e["secretRef"]["name"] for c in (prepare, serve) for e in c.get("envFrom", [])]
        assert api_keys_secret_name(api.name) not in envs_from, name  # by key only: never envFrom
        assert secret["metadata"] == {"name": "iris-classifier-api-keys", "namespace": target.namespace,
                                      "labels": labels("iris-classifier")}  # fmt: skip
        assert parse_api_keys(secret["stringData"]["api-keys"]) == keys  # what the replica reads back
    # Without api_keys nothing refers to keys; rotated keys change the pod template (the pods roll).
    assert API_KEYS_ENV not in dump_yaml(version_objects(_version(plain), 1, KubeTarget(), spec=plain))
    rotated = version_spec(api, PACKAGE, DeployPlan(Action.ROLL, 2, 2), keys_digest=keys_digest(("k-new-1",)))
    before = version_spec(api, PACKAGE, DeployPlan(Action.ROLL, 2, 2), keys_digest=keys_digest(keys))
    templates = [
        _kinds(version_objects(v, 2, KubeTarget(), spec=api), "Deployment")[0]["spec"]["template"]
        for v in (before, rotated)
    ]
    assert templates[0] != templates[1]
    assert templates[0]["metadata"]["annotations"]["cortex-flows.dev/pod-hash"] == before.pod_hash
