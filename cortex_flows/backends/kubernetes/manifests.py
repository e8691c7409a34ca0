"""Kubernetes objects for APIs, as plain dicts: pure functions of specs, with no client and no I/O.

Per version, all named `<api>-r<revision>`: a ConfigMap (the replica config), a Deployment, a ClusterIP
Service, a PodDisruptionBudget and an autoscaler (a KEDA ScaledObject, or an autoscaling/v2 HPA on a
Pods custom metric). Per API and per TrafficSplitter: one Gateway API HTTPRoute, named after it, that
weights the versions' Services. An API with `networking.api_keys` also has the Secret `<api>-api-keys`
(written by the backend, never rendered), which only the serving container reads, by `secretKeyRef`. The
output is deterministic (no timestamps, fixed order), so the same specs always render byte-identical YAML
and re-applying unchanged specs changes nothing.

Selection: `labels(api)` is a subset of the labels of every object and pod of the API, so it selects them
all; `selector_labels(api, revision)` selects one version's pods. What the backend reads back: on each
Deployment `annotations_of(version)` plus `cortex-flows.dev/floor` (a canary arm's floor, absent
otherwise); on each route the annotation `cortex-flows.dev/endpoint`, the weights and mirror from its
backendRefs and RequestMirror filter, and for a TrafficSplitter the label `cortex-flows.dev/kind:
traffic-splitter` and the annotation `cortex-flows.dev/splitter` (the SplitterSpec as JSON).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import yaml

from cortex_flows.backends.base import SplitterSpec, VersionSpec
from cortex_flows.backends.versions import splitter_spec, version_spec
from cortex_flows.rollout.plan import Action, DeployPlan
from cortex_flows.serving.auth import API_KEYS_ENV
from cortex_flows.serving.config import PackageRef
from cortex_flows.spec.models import AUTOSCALING_TICK_SECONDS, ProjectSpec, RealtimeAPI
from cortex_flows.spec.quantities import is_zero

K = TypeVar("K")
Obj = dict[str, Any]

MANAGED_BY = "cortex-flows"
ANNOTATION_PREFIX = "cortex-flows.dev/"
KIND_LABEL = "cortex-flows.dev/kind"  # on routes: "realtime-api" or "traffic-splitter"
GATEWAY_GROUP = "gateway.networking.k8s.io"

CONTAINER_PORT = 8080  # the runtime's default --port
SERVICE_PORT = 80
PORT_NAME = "http"
READINESS_PATH = "/readyz"  # 503 while loading and from the first moment of a shutdown
LIVENESS_PATH = "/healthz"  # 200 whenever the event loop answers (from the moment the port is bound)
METRICS_PATH = "/metrics"
IN_FLIGHT_METRIC = "cortex_in_flight_requests"  # gauge labelled api_name, revision (serving/metrics.py)

CONFIG_DIR = "/etc/cortex"
CONFIG_KEY = "replica.json"  # the ReplicaConfig the runtime reads (--config)
CACHE_DIR = "/var/cache/cortex-flows"  # emptyDir shared by the init container and the server
TMP_DIR = "/tmp"
RUN_AS = 10001  # the Dockerfile's user

# Shutdown: preStop sleeps so endpoints and the gateway drop the pod before SIGTERM; the runtime then
# drains in-flight requests for up to GRACE_SECONDS (the local backend's DEFAULT_GRACE_SECONDS).
PRESTOP_SECONDS = 5
GRACE_SECONDS = 60
# Startup budget: loading a large model can take long, so the startup probe (on /readyz) gives a replica
# STARTUP_BUDGET_SECONDS to become ready before the kubelet restarts it; liveness only starts afterwards.
STARTUP_PERIOD_SECONDS = 10
STARTUP_BUDGET_SECONDS = 15 * 60

API_KEYS_SECRET_KEY = "api-keys"  # in the Secret `api_keys_secret_name(api)`: the keys as JSON

MAX_STABILIZATION_SECONDS = 3600  # the HPA API's limit; longer spec periods are cut to it
POD_TEMPLATE_ANNOTATIONS = ("revision", "package-id", "pod-hash", "restart")


@dataclass(frozen=True)
class KubeTarget:
    """Where and how objects are rendered (from the CortexCluster block)."""

    namespace: str = "default"
    image: str = "cortex-flows-serving:latest"
    gateway: str = "cortex-gateway"  # Gateway API Gateway the HTTPRoutes attach to
    gateway_namespace: str | None = None  # None: same namespace
    autoscaler: Literal["keda", "hpa"] = "keda"  # KEDA ScaledObject or autoscaling/v2 HPA on a Pods metric
    prometheus_url: str = "http://prometheus-server.monitoring:80"  # KEDA's prometheus trigger serverAddress
    aws_secret: str | None = None  # a Secret with AWS_ACCESS_KEY_ID etc. for the S3 store; referenced only
    service_account: str | None = None


def version_name(api: str, revision: int) -> str:
    """Name of every object of one version (ConfigMap, Deployment, Service, PDB, autoscaler)."""
    return f"{api}-r{revision}"


def labels(api: str, revision: int | None = None) -> dict[str, str]:
    """The recommended labels. Without a revision only those every object of the API carries (name,
    part-of, managed-by), so `labels(api)` as a selector finds all of them, pods included; a version's
    objects and pods add instance (`<api>-r<revision>`), version (the revision) and component "version"."""
    out = {"app.kubernetes.io/name": api}
    if revision is not None:
        out["app.kubernetes.io/instance"] = version_name(api, revision)
        out["app.kubernetes.io/version"] = str(revision)
        out["app.kubernetes.io/component"] = "version"
    out["app.kubernetes.io/part-of"] = MANAGED_BY
    out["app.kubernetes.io/managed-by"] = MANAGED_BY
    return out


def api_keys_secret_name(api: str) -> str:
    """The Secret holding an API's keys (written by the backend from the Secret block, never rendered)."""
    return f"{api}-api-keys"


def api_keys_secret(api: str, keys_json: str, target: KubeTarget) -> Obj:
    """The API's keys as a Secret: the one object that holds them; pods reference it by name and key."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(api_keys_secret_name(api), target, labels(api)),
        "stringData": {API_KEYS_SECRET_KEY: keys_json},
    }


def selector_labels(api: str, revision: int) -> dict[str, str]:
    """The pods of one version: the Deployment's (immutable) selector, the Service's and the PDB's."""
    return {"app.kubernetes.io/name": api, "app.kubernetes.io/instance": version_name(api, revision)}


def annotations_of(version: VersionSpec) -> dict[str, str]:
    """What the backend reads back from a Deployment to report the version (target-replicas "" = None)."""
    return {
        f"{ANNOTATION_PREFIX}revision": str(version.revision),
        f"{ANNOTATION_PREFIX}package-id": version.package_id,
        f"{ANNOTATION_PREFIX}spec-hash": version.spec_hash,
        f"{ANNOTATION_PREFIX}pod-hash": version.pod_hash,
        f"{ANNOTATION_PREFIX}restart": version.restart,
        f"{ANNOTATION_PREFIX}target-replicas": _optional(version.target_replicas),
    }


def _optional(value: int | None) -> str:
    return "" if value is None else str(value)


def version_objects(
    version: VersionSpec,
    replicas: int,
    target: KubeTarget,
    *,
    floor: int | None = None,
    spec: RealtimeAPI | None = None,
) -> list[Obj]:
    """ConfigMap, Deployment, Service, PodDisruptionBudget and autoscaler of one version.

    The autoscaler keeps the version between `floor` (a canary arm's least replicas; by default the
    spec's min_replicas) and max_replicas on its in-flight requests per replica.
    """
    api = spec if spec is not None else RealtimeAPI.model_validate(version.spec)
    name = version.replica.api_name
    replica = version.replica.model_copy(update={"cache_dir": CACHE_DIR}).model_dump_json(indent=2) + "\n"
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(version_name(name, version.revision), target, labels(name, version.revision)),
        "data": {CONFIG_KEY: replica},
    }
    config_sha = hashlib.sha256(replica.encode()).hexdigest()
    return [
        config_map,
        _deployment(version, replicas, target, api, config_sha, floor),
        _service(name, version.revision, target),
        _pdb(name, version.revision, target, api),
        _autoscaler(name, version.revision, target, api, floor),
    ]


def route_object(
    api: str,
    endpoint: str,
    weights: dict[int, int],
    target: KubeTarget,
    mirror: tuple[int, float] | None = None,
) -> Obj:
    """The API's HTTPRoute: its endpoint (a path prefix, rewritten to "/") to each revision's Service by
    weight (0 allowed: listed, no traffic), plus a copy of `share` of the requests to the mirror revision."""
    refs = [_backend_ref(version_name(api, rev), weight) for rev, weight in sorted(weights.items())]
    mirror_to = None
    if mirror is not None and mirror[1] > 0:
        revision, share = mirror
        mirror_to = (version_name(api, revision), _mirror_percent(share))
    annotations = {f"{ANNOTATION_PREFIX}endpoint": endpoint}
    return _route(api, endpoint, refs, target, mirror_to, "realtime-api", annotations)


def splitter_route(split: SplitterSpec, api_weights: dict[str, dict[int, int]], target: KubeTarget) -> Obj:
    """A TrafficSplitter's HTTPRoute: one backendRef per version of each target API, weighted by the
    splitter's weight times the version's; the shadow API's highest-weight version as a RequestMirror.

    Each API's share is split over its versions by largest remainder on a scale of 100, so a splitter
    percent times version percents is exact and every API keeps exactly its share of the total. An API
    whose versions all weigh 0 gets its share on its newest version.
    """
    refs = []
    for api, percent in split.weights.items():
        versions = _weights_of(split, api, api_weights)
        if not any(versions.values()):
            versions = {rev: int(rev == max(versions)) for rev in versions}
        for rev, weight in sorted(apportion(percent * 100, versions).items()):
            refs.append(_backend_ref(version_name(api, rev), weight))
    mirror_to = None
    if split.shadow is not None and split.shadow_percent > 0:
        versions = _weights_of(split, split.shadow, api_weights)
        top = max(sorted(versions), key=lambda rev: (versions[rev], rev))
        mirror_to = (version_name(split.shadow, top), split.shadow_percent)
    annotations = {
        f"{ANNOTATION_PREFIX}endpoint": split.endpoint,
        f"{ANNOTATION_PREFIX}splitter": split.model_dump_json(),
    }
    return _route(split.name, split.endpoint, refs, target, mirror_to, "traffic-splitter", annotations)


def apportion(total: int, weights: Mapping[K, int]) -> dict[K, int]:
    """`total` split in proportion to `weights` as integers summing exactly to `total` (largest
    remainder; ties go to the earlier key). All-zero weights give all zeros."""
    whole = sum(weights.values())
    if whole <= 0:
        return dict.fromkeys(weights, 0)
    shares = {key: divmod(total * w, whole) for key, w in weights.items()}
    out = {key: q for key, (q, _) in shares.items()}
    order = sorted(enumerate(weights), key=lambda item: (-shares[item[1]][1], item[0]))
    for _, key in order[: total - sum(out.values())]:
        out[key] += 1
    return out


def render_project(project: ProjectSpec, package: PackageRef, target: KubeTarget) -> list[Obj]:
    """What a first deploy of the project creates: each RealtimeAPI's revision 1 with init_replicas and
    its route at 100%, then each TrafficSplitter's route (its targets at revision 1)."""
    objects: list[Obj] = []
    for api in project.realtime_apis:
        replicas = api.init_replicas
        version = version_spec(api, package, DeployPlan(Action.CREATE, 1, replicas))
        objects += version_objects(version, replicas, target, spec=api)
        objects.append(route_object(api.name, api.endpoint, {1: 100}, target))
    for splitter in project.splitters:
        split = splitter_spec(splitter)
        objects.append(splitter_route(split, {name: {1: 100} for name in split.targets}, target))
    return objects


def dump_yaml(objects: list[Obj]) -> str:
    """A multi-document YAML stream, keys in rendering order, multi-line strings as literal blocks."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, explicit_start=True, allow_unicode=True)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


# --- one version ---------------------------------------------------------------------------------


def _metadata(
    name: str, target: KubeTarget, object_labels: dict[str, str], annotations: dict[str, str] | None = None
) -> Obj:
    meta: Obj = {"name": name, "namespace": target.namespace, "labels": object_labels}
    if annotations:
        meta["annotations"] = annotations
    return meta


def _deployment(
    version: VersionSpec,
    replicas: int,
    target: KubeTarget,
    api: RealtimeAPI,
    config_sha: str,
    floor: int | None,
) -> Obj:
    name = version.replica.api_name
    revision = version.revision
    annotations = annotations_of(version)
    if floor is not None:
        annotations[f"{ANNOTATION_PREFIX}floor"] = str(floor)
    # Only what the pods are made of, so that a new pod hash (or replica config) rolls the pods while a
    # new spec hash, target or floor (changed in place) does not.
    pod_annotations = {
        key: annotations[key] for key in (f"{ANNOTATION_PREFIX}{k}" for k in POD_TEMPLATE_ANNOTATIONS)
    }
    pod_annotations[f"{ANNOTATION_PREFIX}config-sha256"] = config_sha
    pod_annotations |= {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(CONTAINER_PORT),
        "prometheus.io/path": METRICS_PATH,
    }
    strategy = api.update_strategy
    pod_spec: Obj = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,  # replicas never call the Kubernetes API
        "enableServiceLinks": False,  # no env variables for every Service in the namespace
        "terminationGracePeriodSeconds": PRESTOP_SECONDS + GRACE_SECONDS,
        "initContainers": [_prepare_container(target, api)],
        "containers": [_serve_container(target, api)],
        "volumes": [
            {"name": "config", "configMap": {"name": version_name(name, revision)}},
            {"name": "cache", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if target.service_account:
        pod_spec["serviceAccountName"] = target.service_account
    if api.compute.gpu > 0:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(version_name(name, revision), target, labels(name, revision), annotations),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": selector_labels(name, revision)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": strategy.max_surge, "maxUnavailable": strategy.max_unavailable},
            },
            "progressDeadlineSeconds": max(1, math.ceil(strategy.progress_deadline_seconds)),
            "template": {
                "metadata": {"labels": labels(name, revision), "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }


def _container_security() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(api: RealtimeAPI, serving: bool) -> list[Obj]:
    """HOME on a writable volume (pip, user libraries), then the user's variables (not secrets), which win;
    for the serving container the API's keys, by reference to their Secret (never as a value)."""
    values = {"HOME": TMP_DIR} | api.env
    env: list[Obj] = [{"name": key, "value": value} for key, value in values.items()]
    if serving and api.networking.api_keys is not None:
        ref = {"name": api_keys_secret_name(api.name), "key": API_KEYS_SECRET_KEY}
        env.append({"name": API_KEYS_ENV, "valueFrom": {"secretKeyRef": ref}})
    return env


def _common(target: KubeTarget, api: RealtimeAPI, serving: bool) -> Obj:
    """What both containers share: environment, credentials by reference, volumes, security."""
    container: Obj = {"env": _env(api, serving)}
    if target.aws_secret:
        container["envFrom"] = [{"secretRef": {"name": target.aws_secret}}]
    container["volumeMounts"] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    container["securityContext"] = _container_security()
    # The runtime logs its failure reason last: the kubelet keeps it as the termination message.
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return container


def _resources(api: RealtimeAPI, gpu: bool) -> Obj:
    requests: dict[str, Any] = {"cpu": api.compute.cpu}
    limits: dict[str, Any] = {}
    if api.compute.mem is not None:
        requests["memory"] = limits["memory"] = api.compute.mem
    if gpu and api.compute.gpu > 0:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = api.compute.gpu
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


def _prepare_container(target: KubeTarget, api: RealtimeAPI) -> Obj:
    """Fetches the package, checks its sha256 and installs its dependencies into the shared cache, so a
    bad requirement fails here with pip's message and never a serving container."""
    return {
        "name": "prepare",
        "image": target.image,
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}", "--prepare-only"],
        **_common(target, api, serving=False),
        "resources": _resources(api, gpu=False),
    }


def _probe(path: str, period: int, timeout: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "successThreshold": 1,
        "failureThreshold": failures,
    }


def _serve_container(target: KubeTarget, api: RealtimeAPI) -> Obj:
    args = ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}", "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)]
    return {
        "name": "serve",
        "image": target.image,
        "args": [*args, "--grace", str(GRACE_SECONDS)],
        "ports": [{"name": PORT_NAME, "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        **_common(target, api, serving=True),
        "resources": _resources(api, gpu=True),
        "startupProbe": _probe(
            READINESS_PATH, STARTUP_PERIOD_SECONDS, 3, STARTUP_BUDGET_SECONDS // STARTUP_PERIOD_SECONDS
        ),
        "readinessProbe": _probe(READINESS_PATH, 5, 3, 2),
        "livenessProbe": _probe(LIVENESS_PATH, 10, 5, 3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
    }


def _service(api: str, revision: int, target: KubeTarget) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(version_name(api, revision), target, labels(api, revision)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(api, revision),
            "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def _pdb(api: str, revision: int, target: KubeTarget, spec: RealtimeAPI) -> Obj:
    """Voluntary evictions take no more than a rolling update may; never 0, which would block node drains."""
    unavailable = spec.update_strategy.max_unavailable
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(version_name(api, revision), target, labels(api, revision)),
        "spec": {
            "maxUnavailable": 1 if is_zero(unavailable) else unavailable,
            "selector": {"matchLabels": selector_labels(api, revision)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",  # a crash-looping version never blocks a drain
        },
    }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _behavior(spec: RealtimeAPI) -> Obj:
    """Cortex's step limits per autoscaling tick: at most x max_upscale_factor up and x max_downscale_factor
    down, but always at least one replica (as the local autoscaler), after the stabilization windows."""
    a = spec.autoscaling
    up = max(1, round((a.max_upscale_factor - 1) * 100))
    down = max(1, round((1 - a.max_downscale_factor) * 100))
    tick = AUTOSCALING_TICK_SECONDS

    def rules(window: float, percent: int) -> Obj:
        return {
            "stabilizationWindowSeconds": min(MAX_STABILIZATION_SECONDS, math.ceil(window)),
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": percent, "periodSeconds": tick},
                {"type": "Pods", "value": 1, "periodSeconds": tick},
            ],
        }

    return {
        "scaleUp": rules(a.upscale_stabilization_seconds, up),
        "scaleDown": rules(a.downscale_stabilization_seconds, down),
    }


def _autoscaler(api: str, revision: int, target: KubeTarget, spec: RealtimeAPI, floor: int | None) -> Obj:
    a = spec.autoscaling
    low = a.min_replicas if floor is None else floor
    name = version_name(api, revision)
    scale_target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    if target.autoscaler == "hpa":
        low = max(1, low)
        return {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(name, target, labels(api, revision)),
            "spec": {
                "scaleTargetRef": scale_target,
                "minReplicas": low,
                "maxReplicas": max(low, a.max_replicas),
                "metrics": [
                    {
                        "type": "Pods",
                        "pods": {
                            "metric": {"name": IN_FLIGHT_METRIC},
                            "target": {
                                "type": "AverageValue",
                                "averageValue": _quantity(spec.target_in_flight),
                            },
                        },
                    }
                ],
                "behavior": _behavior(spec),
            },
        }
    selector = f'namespace="{target.namespace}",api_name="{api}",revision="{revision}"'
    window = f"{math.ceil(a.window_seconds)}s"
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(name, target, labels(api, revision)),
        "spec": {
            "scaleTargetRef": scale_target,
            "pollingInterval": AUTOSCALING_TICK_SECONDS,
            "cooldownPeriod": math.ceil(a.downscale_stabilization_seconds),  # before scaling to zero
            "minReplicaCount": low,
            "maxReplicaCount": max(low, a.max_replicas),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(spec)}},
            "triggers": [
                {
                    "type": "prometheus",
                    "name": "in-flight",
                    "metricType": "AverageValue",  # the query's total / replicas, against the threshold
                    "metadata": {
                        "serverAddress": target.prometheus_url,
                        "query": f"sum(avg_over_time({IN_FLIGHT_METRIC}{{{selector}}}[{window}]))",
                        "threshold": _number(spec.target_in_flight),
                        "ignoreNullValues": "true",
                    },
                }
            ],
        },
    }


def _quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as they are, fractions in milli-units."""
    return str(int(value)) if float(value).is_integer() else f"{max(1, round(value * 1000))}m"


# --- routes ----------------------------------------------------------------------------------------


def _backend_ref(service: str, weight: int) -> Obj:
    return {"group": "", "kind": "Service", "name": service, "port": SERVICE_PORT, "weight": weight}


def _mirror_percent(share: float) -> int:
    """Gateway API mirrors whole percents: the nearest, and at least 1 for any share above 0."""
    if not 0 < share <= 1:
        raise ValueError(f"a mirror share must be in (0, 1], got {share}")
    return max(1, min(100, round(share * 100)))


def _weights_of(split: SplitterSpec, api: str, api_weights: dict[str, dict[int, int]]) -> dict[int, int]:
    versions = api_weights.get(api)
    if not versions:
        raise ValueError(f"splitter {split.name}: no version weights for its target API {api!r}")
    return versions


def _route(
    name: str,
    endpoint: str,
    refs: list[Obj],
    target: KubeTarget,
    mirror_to: tuple[str, int] | None,
    kind: str,
    annotations: dict[str, str],
) -> Obj:
    parent: Obj = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": target.gateway}
    if target.gateway_namespace:
        parent["namespace"] = target.gateway_namespace
    filters: list[Obj] = [
        {
            "type": "URLRewrite",
            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
        }
    ]
    if mirror_to is not None:
        service, percent = mirror_to
        mirror = {"backendRef": {"group": "", "kind": "Service", "name": service, "port": SERVICE_PORT}}
        filters.append({"type": "RequestMirror", "requestMirror": {**mirror, "percent": percent}})
    route_labels = labels(name) | {"app.kubernetes.io/component": "route", KIND_LABEL: kind}
    return {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": _metadata(name, target, route_labels, annotations),
        "spec": {
            "parentRefs": [parent],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": endpoint}}],
                    "filters": filters,
                    "backendRefs": refs,
                }
            ],
        },
    }
