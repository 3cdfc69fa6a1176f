"""The Kubernetes manifests (deploy/kubernetes) agree with the code, the image and each other.

No cluster (nor kubeconform) is available here, so the manifests are parsed with
PyYAML and checked for what would break, or silently weaken, a real deployment.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from dockerstages import DOCKERFILE, Stage, instructions, parse_dockerfile
from gateway.__main__ import parse_args
from gateway.app import create_app
from gateway.config import GatewaySettings
from stt_daemon.common.settings import CommonSettings, model_name
from stt_daemon.common.topology import Names
from stt_daemon.config import DaemonSettings

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SECRET_TEMPLATE = "secrets.example.yaml"
#: Keys of the ``<cluster>-default-user`` Secret that the RabbitMQ Cluster Operator writes.
OPERATOR_SECRET_KEYS = {"username", "password", "host", "port", "provider", "type"}
SETTINGS: dict[str, type[CommonSettings]] = {"gateway": GatewaySettings, "daemon": DaemonSettings}
#: Settings that shape the broker's queues or name shared things: the same in every process.
SHARED_SETTINGS = (
    "STT_AMQP_URL",
    "STT_BLOB_URL",
    "STT_NAMESPACE",
    "STT_MAX_QUEUED",
    "STT_DELIVERY_LIMIT",
)
_REFERENCE = re.compile(r"\$\((\w+)\)")

Doc = dict[str, Any]


def load(path: Path) -> list[Doc]:
    """The non-empty documents of one manifest file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.fixture(scope="module")
def kustomization() -> Doc:
    result: Doc = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    return result


@pytest.fixture(scope="module")
def every_doc() -> list[Doc]:
    """Every document of every manifest, the secret template included."""
    paths = sorted(p for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    return [doc for path in paths for doc in load(path)]


@pytest.fixture(scope="module")
def applied(kustomization: Doc) -> list[Doc]:
    """What ``kubectl apply -k deploy/kubernetes`` creates."""
    return [doc for name in kustomization["resources"] for doc in load(KUBE / name)]


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


@pytest.fixture(scope="module")
def secrets(every_doc: list[Doc]) -> dict[str, Doc]:
    return of_kind(every_doc, "Secret")


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def containers(workload: Doc) -> list[Doc]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def sample_secret_value(secret: str, key: str, clusters: Mapping[str, Doc]) -> str:
    """A stand-in for a secret value, shaped like the real one."""
    for name, cluster in clusters.items():
        if secret == f"{name}-default-user":
            namespace = cluster["metadata"]["namespace"]
            return {"host": f"{name}.{namespace}.svc", "port": "5672"}.get(key, f"{key}-x_Y-1")
    return f"{key}-sample"


@dataclass
class Process:
    """One gateway or daemon container, with its environment as the kubelet builds it."""

    deployment: Doc
    container: Doc
    component: str
    env: dict[str, str] = field(default_factory=dict)
    #: Variable -> (Secret, key) for variables that come from a Secret.
    from_secret: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: ``$(VAR)`` references to variables not defined before (the kubelet leaves them as is).
    unresolved: list[str] = field(default_factory=list)

    def build_env(self, config_maps: Mapping[str, Doc], clusters: Mapping[str, Doc]) -> None:
        """envFrom first, then env in order; ``$(VAR)`` expands variables defined before it."""
        for source in self.container.get("envFrom", []):
            self.env.update(config_maps[source["configMapRef"]["name"]].get("data", {}))
        for var in self.container.get("env", []):
            name = var["name"]
            if "value" in var:
                value = str(var["value"])
                self.unresolved += [r for r in _REFERENCE.findall(value) if r not in self.env]
                self.env[name] = _REFERENCE.sub(lambda m: self.env.get(m[1], m[0]), value)
            elif ref := var.get("valueFrom", {}).get("secretKeyRef"):
                self.from_secret[name] = (ref["name"], ref["key"])
                self.env[name] = sample_secret_value(ref["name"], ref["key"], clusters)
            else:
                self.env[name] = "from-the-downward-api"

    @property
    def settings_class(self) -> type[CommonSettings]:
        return SETTINGS[self.component]

    @property
    def fields(self) -> dict[str, str]:
        """The ``STT_*`` variables as settings field names."""
        return {
            k.removeprefix("STT_").lower(): v for k, v in self.env.items() if k.startswith("STT_")
        }

    @property
    def settings(self) -> CommonSettings:
        """The settings this process starts with (defaults where the manifests set nothing)."""
        return self.settings_class.model_validate(self.fields)

    @property
    def daemon_settings(self) -> DaemonSettings:
        settings = self.settings
        assert isinstance(settings, DaemonSettings)
        return settings


@pytest.fixture(scope="module")
def processes(applied: list[Doc]) -> list[Process]:
    config_maps = of_kind(applied, "ConfigMap")
    clusters = of_kind(applied, "RabbitmqCluster")
    result = []
    for deployment in of_kind(applied, "Deployment").values():
        component = pod_labels(deployment).get("app.kubernetes.io/component", "")
        for container in containers(deployment):
            process = Process(deployment, container, component)
            process.build_env(config_maps, clusters)
            result.append(process)
    return result


@pytest.fixture(scope="module")
def gateway(processes: list[Process]) -> Process:
    (found,) = [p for p in processes if p.component == "gateway"]
    return found


@pytest.fixture(scope="module")
def daemons(processes: list[Process]) -> list[Process]:
    found = [p for p in processes if p.component == "daemon"]
    assert found, "no daemon Deployment"
    return found


# --- every manifest ----------------------------------------------------------------


def test_every_document_has_api_version_kind_and_name(every_doc: list[Doc]) -> None:
    assert every_doc
    for doc in every_doc:
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc


def test_kustomization_lists_every_manifest_but_the_secret_template(kustomization: Doc) -> None:
    files = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml", SECRET_TEMPLATE}
    assert set(kustomization["resources"]) == files
    assert (KUBE / SECRET_TEMPLATE).exists()


def test_everything_lives_in_the_one_namespace(kustomization: Doc, every_doc: list[Doc]) -> None:
    (namespace,) = of_kind(every_doc, "Namespace")
    assert kustomization["namespace"] == namespace
    for doc in every_doc:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]


def test_no_default_guest_credentials_anywhere() -> None:
    for path in KUBE.glob("*.yaml"):
        assert "guest" not in path.read_text().lower(), path.name


def test_the_secret_template_is_never_applied_and_holds_only_placeholders(
    applied: list[Doc], secrets: dict[str, Doc]
) -> None:
    # `kubectl apply -k` must not overwrite the operator's real secrets with placeholders.
    assert not of_kind(applied, "Secret")
    assert secrets
    for secret in secrets.values():
        values = {**secret.get("stringData", {}), **secret.get("data", {})}
        assert values
        name = secret["metadata"]["name"]
        for key, value in values.items():
            if name.startswith("stt-broker-") and key == "username":
                # Not a secret: the user broker-roles.yaml gives the role.
                assert value == f"stt-{name.removeprefix('stt-broker-')}"
                continue
            assert "REPLACE-ME" in value, f"{name}/{key} looks real"


def test_referenced_secrets_exist(applied: list[Doc], secrets: dict[str, Doc]) -> None:
    operator_secrets = {f"{name}-default-user" for name in of_kind(applied, "RabbitmqCluster")}
    references: list[tuple[str, str]] = []
    for kind in ("Deployment", "StatefulSet"):
        for workload in of_kind(applied, kind).values():
            for container in containers(workload):
                for var in container.get("env", []):
                    if ref := var.get("valueFrom", {}).get("secretKeyRef"):
                        references.append((ref["name"], ref["key"]))
            for volume in pod_spec(workload).get("volumes", []):
                if "secret" in volume:
                    for item in volume["secret"]["items"]:
                        references.append((volume["secret"]["secretName"], item["key"]))
    for auth in of_kind(applied, "TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            references.append((ref["name"], ref["key"]))
    assert references
    for name, key in references:
        if name in operator_secrets:
            assert key in OPERATOR_SECRET_KEYS, f"the operator writes no {key!r} in {name}"
            continue
        assert name in secrets, f"Secret {name} is neither in {SECRET_TEMPLATE} nor the operator's"
        template = {**secrets[name].get("stringData", {}), **secrets[name].get("data", {})}
        # Optional keys too: the template is where an operator learns which keys to create.
        assert key in template, f"{name} has no key {key!r}"


def test_referenced_config_maps_and_claims_exist(applied: list[Doc]) -> None:
    config_maps, claims = of_kind(applied, "ConfigMap"), of_kind(applied, "PersistentVolumeClaim")
    for kind in ("Deployment", "StatefulSet"):
        for workload in of_kind(applied, kind).values():
            for container in containers(workload):
                for source in container.get("envFrom", []):
                    assert source["configMapRef"]["name"] in config_maps
            for volume in pod_spec(workload).get("volumes", []):
                if claim := volume.get("persistentVolumeClaim"):
                    assert claim["claimName"] in claims


# --- pods ------------------------------------------------------------------------------

_UNITS = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2.0**10, "Mi": 2.0**20}
_UNITS |= {"Gi": 2.0**30, "Ti": 2.0**40}


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity (``250m``, ``2``, ``1Gi``) as a number."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert match and match[2] in _UNITS, f"unreadable quantity {value!r}"
    return float(match[1]) * _UNITS[match[2]]


def workloads(applied: list[Doc]) -> Iterator[Doc]:
    for kind in ("Deployment", "StatefulSet"):
        yield from of_kind(applied, kind).values()


def test_every_container_has_requests_and_limits(applied: list[Doc]) -> None:
    for workload in workloads(applied):
        for container in containers(workload):
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                limit = quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{container['name']}: {resource}"


def test_pods_run_as_non_root_with_nothing_to_escalate(applied: list[Doc]) -> None:
    for workload in workloads(applied):
        pod = pod_spec(workload)["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] != 0
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context.get("privileged", False) is False


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def image_uid(stages: Mapping[str, Stage], target: str) -> int:
    """The uid of the image's USER, from its ``useradd --uid N ... name``."""
    (user,) = instructions(stages, target, "USER")[-1:]
    for run in instructions(stages, target, "RUN"):
        for command in re.findall(r"useradd\b[^&;]*", run):
            words = command.split()
            if words[-1] == user:
                return int(words[words.index("--uid") + 1])
    raise AssertionError(f"no useradd for {user}")


def test_processes_run_as_the_image_user(
    processes: list[Process], stages: dict[str, Stage]
) -> None:
    # Gateways write blobs 0600 and daemons read them: one uid, the image's.
    for process in processes:
        context = pod_spec(process.deployment)["securityContext"]
        assert context["runAsUser"] == image_uid(stages, process.component)
        assert context["fsGroup"] == context["runAsGroup"]


def test_images_and_commands_match_the_dockerfile_targets(
    processes: list[Process], stages: dict[str, Stage], kustomization: Doc
) -> None:
    # deploy/Dockerfile documents `--target X -t TAG`: the image name names the target.
    targets = dict(
        (tag, target)
        for target, tag in re.findall(r"--target\s+(\S+)\s+-t\s+(\S+)", DOCKERFILE.read_text())
    )
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    retagged = {image["name"] for image in kustomization["images"]}
    assert {p.component for p in processes} == {"gateway", "daemon"}
    for process in processes:
        image = process.container["image"]
        assert targets.get(image) == process.component, (
            f"{image} is not --target {process.component}"
        )
        assert process.component in stages
        assert image in retagged, f"kustomization.yaml does not set the registry of {image}"
        command = process.container["command"]
        assert command[0] in scripts, f"{command[0]} is not a console script"
        image_cmd = yaml.safe_load(instructions(stages, process.component, "CMD")[-1])
        assert command[0] == image_cmd[0], "a script the image installs"
    assert retagged <= {p.container["image"] for p in processes}


def named_port(container: Doc, port: int | str) -> int:
    """A container port by number or by name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def test_service_selectors_match_their_pods(applied: list[Doc]) -> None:
    pods = [pod_labels(w) for w in workloads(applied)]
    for workload in workloads(applied):
        selector = workload["spec"]["selector"]["matchLabels"]
        matched = [labels for labels in pods if selector.items() <= labels.items()]
        assert matched == [pod_labels(workload)], "a selector must match its own pods only"
    for budget in of_kind(applied, "PodDisruptionBudget").values():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in pods)
    for name, service in of_kind(applied, "Service").items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pods), name


# --- gateway ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_routes() -> set[str]:
    """Paths the gateway app serves (built, not started: no broker needed)."""
    app = create_app(GatewaySettings.model_validate({}))
    # The OpenAPI document, as app.routes holds included routers opaquely in recent FastAPI.
    return set(app.openapi()["paths"])


def gateway_port(gateway: Process) -> int:
    port: int = parse_args(gateway.container["command"][1:]).port
    return port


def test_gateway_listens_on_all_interfaces(gateway: Process) -> None:
    assert parse_args(gateway.container["command"][1:]).host == "0.0.0.0"
    assert gateway.deployment["spec"]["replicas"] >= 2


def test_gateway_probes_use_the_health_routes(gateway: Process, gateway_routes: set[str]) -> None:
    container = gateway.container
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check = container[probe]["httpGet"]
        assert check["path"] == path and path in gateway_routes
        assert named_port(container, check["port"]) == gateway_port(gateway)


def test_gateway_scrape_annotations_name_its_port_and_route(
    gateway: Process, gateway_routes: set[str]
) -> None:
    annotations = gateway.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in gateway_routes
    assert int(annotations["prometheus.io/port"]) == gateway_port(gateway)


def test_gateway_service_reaches_the_port_the_gateway_listens_on(
    applied: list[Doc], gateway: Process
) -> None:
    services = [
        s
        for s in of_kind(applied, "Service").values()
        if s["spec"]["selector"].items() <= pod_labels(gateway.deployment).items()
    ]
    (service,) = services
    (port,) = service["spec"]["ports"]
    assert named_port(gateway.container, port["targetPort"]) == gateway_port(gateway)


def test_gateway_gets_time_to_finish_requests(gateway: Process) -> None:
    source = (ROOT / "gateway" / "__main__.py").read_text()
    match = re.search(r"timeout_graceful_shutdown=(\d+)", source)
    assert match
    pause = gateway.container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
    sleep = int(pause["command"][1]) if pause.get("command", [""])[0] == "sleep" else 0
    grace = pod_spec(gateway.deployment)["terminationGracePeriodSeconds"]
    assert grace > int(match[1]) + sleep


def test_gateway_disruption_budget_leaves_room_to_drain(
    applied: list[Doc], gateway: Process
) -> None:
    (budget,) = of_kind(applied, "PodDisruptionBudget").values()
    assert (
        budget["spec"]["selector"]["matchLabels"].items() <= pod_labels(gateway.deployment).items()
    )
    assert 1 <= budget["spec"]["minAvailable"] < gateway.deployment["spec"]["replicas"]


def test_gateway_api_key_file_is_the_mounted_secret(gateway: Process) -> None:
    path = Path(gateway.env["STT_API_KEYS_FILE"])
    volumes = {v["name"]: v for v in pod_spec(gateway.deployment)["volumes"]}
    mounts = [m for m in gateway.container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    (mount,) = mounts
    items = volumes[mount["name"]]["secret"]["items"]
    assert path.name in {item["path"] for item in items}


def test_status_store_is_the_redis_of_these_manifests(applied: list[Doc], gateway: Process) -> None:
    url = urlparse(gateway.env["STT_STATUS_URL"])
    assert url.scheme == "redis"
    service = of_kind(applied, "Service")[str(url.hostname)]
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    (redis,) = of_kind(applied, "StatefulSet").values()
    (container,) = containers(redis)
    redis_env = {
        v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"] if "valueFrom" in v
    }
    password_var = _REFERENCE.findall(container_template(gateway, "STT_STATUS_URL"))[0]
    (redis_var,) = _REFERENCE.findall(" ".join(container["args"]))
    secret = redis_env[redis_var]
    assert gateway.from_secret[password_var] == (secret["name"], secret["key"])


def container_template(process: Process, name: str) -> str:
    """An env variable's value as written, before ``$(VAR)`` expansion."""
    (value,) = [v["value"] for v in process.container["env"] if v["name"] == name]
    return str(value)


# --- settings --------------------------------------------------------------------------


def test_env_references_are_defined_before_use(processes: list[Process]) -> None:
    for process in processes:
        assert not process.unresolved, f"$(VAR) used before it is defined: {process.unresolved}"


def test_every_stt_variable_is_a_valid_setting(processes: list[Process]) -> None:
    for process in processes:
        unknown = set(process.fields) - set(process.settings_class.model_fields)
        name = process.deployment["metadata"]["name"]
        assert not unknown, f"{name}: no such setting: {sorted(unknown)} (ignored silently)"
        assert process.settings  # raises if a value is invalid


def test_config_maps_hold_only_settings(applied: list[Doc]) -> None:
    for name, config_map in of_kind(applied, "ConfigMap").items():
        for key in config_map["data"]:
            assert key.startswith("STT_"), f"{name}: {key}"


def test_amqp_url_is_the_roles_user_at_the_operators_service(
    applied: list[Doc], processes: list[Process]
) -> None:
    (cluster,) = of_kind(applied, "RabbitmqCluster")
    users = {
        doc["spec"]["importCredentialsSecret"]["name"]: name
        for name, doc in of_kind(applied, "User").items()
    }
    for process in processes:
        url = urlparse(process.env["STT_AMQP_URL"])
        assert url.scheme == "amqp"
        # Its role's own user (least permissions), never the operator's administrator.
        own = f"stt-broker-{process.component}"
        assert users[own] == f"stt-{process.component}"
        expected = {
            (own, "username"): url.username,
            (own, "password"): url.password,
            (f"{cluster}-default-user", "host"): url.hostname,
            (f"{cluster}-default-user", "port"): str(url.port),
        }
        for source, value in expected.items():
            (var,) = [v for v, ref in process.from_secret.items() if ref == source]
            assert process.env[var] == value


def test_gateways_and_daemons_share_the_claim_key(processes: list[Process]) -> None:
    assert {p.from_secret.get("STT_CLAIM_SECRET") for p in processes} == {
        ("stt-claims", "claim-secret")
    }


def test_queue_shaping_settings_agree_between_gateway_and_daemons(
    processes: list[Process],
) -> None:
    for key in SHARED_SETTINGS:
        values = {process.env.get(key) for process in processes}
        assert len(values) == 1 and None not in values, f"{key} differs or is unset: {values}"


def test_every_accepted_model_has_daemons_and_no_daemon_idles(
    gateway: Process, daemons: list[Process]
) -> None:
    accepted = set(gateway.settings.model_names)
    served = {model_name(spec) for d in daemons for spec in d.settings.models}
    assert accepted == served


def test_gateways_and_daemons_share_the_blob_volume(
    applied: list[Doc], processes: list[Process]
) -> None:
    claims = of_kind(applied, "PersistentVolumeClaim")
    claimed = set()
    for process in processes:
        url = urlparse(process.env["STT_BLOB_URL"])
        assert url.scheme == "file"
        volumes = {v["name"]: v for v in pod_spec(process.deployment)["volumes"]}
        (mount,) = [m for m in process.container["volumeMounts"] if m["mountPath"] == url.path]
        claimed.add(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
    (claim,) = claimed
    # Gateways and daemons on different nodes open the same files.
    assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]


# --- daemons ---------------------------------------------------------------------------


def test_daemons_get_time_to_drain(daemons: list[Process]) -> None:
    for daemon in daemons:
        drain = daemon.daemon_settings.shutdown_timeout
        assert pod_spec(daemon.deployment)["terminationGracePeriodSeconds"] > drain


def test_daemon_probes_and_scrape_annotations_use_the_metrics_port(
    daemons: list[Process],
) -> None:
    for daemon in daemons:
        port = daemon.daemon_settings.metrics_port
        assert port > 0, "STT_METRICS_PORT=0 serves no metrics: nothing to probe"
        # Liveness must see a stuck event loop: /livez, not the metrics thread's /metrics.
        paths = {
            "startupProbe": "/metrics",
            "livenessProbe": "/livez",
            "readinessProbe": "/metrics",
        }
        for probe, path in paths.items():
            check = daemon.container[probe]["httpGet"]
            assert check["path"] == path
            assert named_port(daemon.container, check["port"]) == port
        annotations = daemon.deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == port


def test_daemons_are_scaled_by_keda_on_their_model_queue(
    applied: list[Doc], daemons: list[Process]
) -> None:
    scaled = of_kind(applied, "ScaledObject").values()
    auths = of_kind(applied, "TriggerAuthentication")
    (cluster,) = of_kind(applied, "RabbitmqCluster").values()
    for daemon in daemons:
        name = daemon.deployment["metadata"]["name"]
        # The ScaledObject owns the count: a `replicas` here resets it on every apply.
        assert "replicas" not in daemon.deployment["spec"]
        (scaler,) = [s for s in scaled if s["spec"]["scaleTargetRef"]["name"] == name]
        assert scaler["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        assert 0 <= scaler["spec"]["minReplicaCount"] < scaler["spec"]["maxReplicaCount"]
        (trigger,) = scaler["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        settings = daemon.daemon_settings
        # One model a Deployment: its replicas scale on that model's queue alone.
        (spec,) = settings.models
        meta = trigger["metadata"]
        assert meta["queueName"] == Names(settings.namespace).job_queue(model_name(spec))
        assert meta["mode"] == "QueueLength"
        assert float(meta["value"]) == settings.prefetch
        assert trigger["authenticationRef"]["name"] in auths
        # Counted over HTTP: ready AND unacknowledged jobs (over AMQP, running jobs read 0).
        host = urlparse(meta["host"])
        assert meta["protocol"] == "http" and host.scheme == "http"
        assert host.username is None and host.password is None, "credentials go in a Secret"
        namespace = cluster["metadata"]["namespace"]
        assert host.hostname == f"{cluster['metadata']['name']}.{namespace}.svc"
        assert host.port == 15672


def test_rabbitmq_cluster_keeps_a_quorum_through_one_failure(applied: list[Doc]) -> None:
    (cluster,) = of_kind(applied, "RabbitmqCluster").values()
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    replicas = cluster["spec"]["replicas"]
    assert replicas >= 3 and replicas % 2 == 1
    resources = cluster["spec"]["resources"]
    for resource in ("cpu", "memory"):
        assert quantity(resources["requests"][resource]) <= quantity(resources["limits"][resource])
    assert quantity(cluster["spec"]["persistence"]["storage"]) > 0
