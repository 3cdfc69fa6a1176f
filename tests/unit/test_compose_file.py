"""docker-compose.yml agrees with the code and the image.

Docker cannot run on the CI machines, so docker-compose.yml is parsed here and
checked for what would break a real deployment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
import yaml

from dockerstages import DOCKERFILE, Stage, instructions, parse_dockerfile
from gateway.config import GatewaySettings
from stt_daemon.common.settings import CommonSettings
from stt_daemon.config import DaemonSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


#: What an operator would export before ``docker compose up``.
OPERATOR_ENV = {"RABBITMQ_PASSWORD": "s3cret-pw"}

# --- docker-compose.yml --------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    """A ``${VAR:?message}`` whose variable is not set (compose refuses to start)."""


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: ``${X}``, ``${X:-default}``, ``${X:?error}``."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = env.get(name)
        if op in (":-", "-") and (current is None or (op == ":-" and current == "")):
            return str(arg)
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


def _resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _resolve(value, env) for key, value in node.items()}
    return node


def load_compose(env: Mapping[str, str] = OPERATOR_ENV) -> dict[str, Any]:
    """docker-compose.yml as compose would see it with ``env`` exported."""
    raw = yaml.safe_load(COMPOSE.read_text())  # SafeLoader applies the ``<<`` merge keys
    resolved: dict[str, Any] = _resolve(raw, env)
    return resolved


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def env_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment, whether written as a mapping or as ``KEY=value`` items."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def mounts_of(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> volume name (or host path), short and long syntax."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            source, target, *_ = volume.split(":")
            mounts[target] = source
    return mounts


def published_ports(service: Mapping[str, Any]) -> list[tuple[str | None, int]]:
    """(published, container) pairs of a service's ``ports``."""
    pairs: list[tuple[str | None, int]] = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            published = port.get("published")
            pairs.append((None if published is None else str(published), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        target = int(parts[-1])
        pairs.append((parts[-2] if len(parts) > 1 else None, target))
    return pairs


def seconds(duration: str | int | float) -> float:
    """A compose duration (``90s``, ``1m30s``, ``2m``) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, f"unreadable duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_the_three_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"rabbitmq", "gateway", "daemon"} <= set(services)


@pytest.mark.parametrize("name", ["gateway", "daemon"])
def test_service_builds_its_own_dockerfile_target(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    build = services[name]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert build["target"] == name


def test_gateway_and_daemons_share_the_blob_volume_where_blob_url_points(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    gateway, daemon = services["gateway"], services["daemon"]
    blob_url = env_of(gateway)["STT_BLOB_URL"]
    assert env_of(daemon)["STT_BLOB_URL"] == blob_url
    parsed = urlparse(blob_url)
    assert parsed.scheme == "file"
    blob_dir = unquote(parsed.path).rstrip("/")
    # The same named volume at the same path in both: the claim-check URL a gateway
    # writes into a job must open the same file inside every daemon container.
    assert mounts_of(gateway).get(blob_dir) == mounts_of(daemon).get(blob_dir) == "blobs"
    assert "blobs" in compose["volumes"]


def test_status_store_lives_on_a_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    gateway = services["gateway"]
    status_url = env_of(gateway)["STT_STATUS_URL"]
    assert status_url.startswith("sqlite:////"), "an absolute path inside the container"
    db_dir = str(Path(status_url.removeprefix("sqlite:///")).parent)
    volume = mounts_of(gateway).get(db_dir)
    assert volume in compose["volumes"], f"{db_dir} is not a named volume: statuses would be lost"


def test_amqp_url_names_the_rabbitmq_service_with_its_credentials(
    services: dict[str, dict[str, Any]],
) -> None:
    broker_env = env_of(services["rabbitmq"])
    for name in ("gateway", "daemon"):
        url = urlparse(env_of(services[name])["STT_AMQP_URL"])
        assert url.scheme == "amqp"
        assert url.hostname == "rabbitmq"
        assert url.port in (None, 5672)
        assert url.username == broker_env["RABBITMQ_DEFAULT_USER"]
        assert (
            url.password == broker_env["RABBITMQ_DEFAULT_PASS"] == OPERATOR_ENV["RABBITMQ_PASSWORD"]
        )


def test_no_guest_credentials_and_no_default_password(
    services: dict[str, dict[str, Any]],
) -> None:
    broker_env = env_of(services["rabbitmq"])
    assert broker_env["RABBITMQ_DEFAULT_USER"] != "guest"
    assert broker_env["RABBITMQ_DEFAULT_PASS"] != "guest"
    for name in ("gateway", "daemon"):
        url = urlparse(env_of(services[name])["STT_AMQP_URL"])
        assert "guest" not in (url.username, url.password)
    assert "guest" not in COMPOSE.read_text().lower(), "not even as a ${VAR:-guest} default"
    # Without a password exported, compose must refuse to start rather than pick one:
    # every place that uses the password says so, not only the first one compose reads.
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, key in (
        ("rabbitmq", "RABBITMQ_DEFAULT_PASS"),
        ("gateway", "STT_AMQP_URL"),
        ("daemon", "STT_AMQP_URL"),
    ):
        with pytest.raises(MissingVariable, match="RABBITMQ_PASSWORD"):
            interpolate(env_of(raw[name])[key], env={})


def test_management_port_is_not_published(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for published, target in published_ports(service):
            assert 15672 not in (target, int(published or 0)), f"{name} publishes 15672"


def test_gateway_publishes_port_8000(services: dict[str, dict[str, Any]]) -> None:
    assert ("8000", 8000) in published_ports(services["gateway"])


def test_gateway_and_daemons_wait_for_a_healthy_broker(
    services: dict[str, dict[str, Any]],
) -> None:
    check = services["rabbitmq"]["healthcheck"]["test"]
    assert "rabbitmq-diagnostics" in (check if isinstance(check, str) else " ".join(check))
    assert "rabbitmq-data" in mounts_of(services["rabbitmq"]).values()
    for name in ("gateway", "daemon"):
        assert services[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_daemons_scale_out_and_get_time_to_drain(services: dict[str, dict[str, Any]]) -> None:
    daemon = services["daemon"]
    assert daemon["deploy"]["replicas"] >= 2
    assert "container_name" not in daemon, "a fixed name forbids replicas"
    drain = float(env_of(daemon).get("STT_SHUTDOWN_TIMEOUT", DaemonSettings().shutdown_timeout))
    assert seconds(daemon["stop_grace_period"]) > drain


def test_queue_shaping_settings_agree_between_gateway_and_daemons(
    services: dict[str, dict[str, Any]],
) -> None:
    # declare_topology runs in every process; RabbitMQ refuses to redeclare a queue
    # with other arguments, and names must match for jobs to reach the daemons.
    gateway, daemon = env_of(services["gateway"]), env_of(services["daemon"])
    for key in (
        "STT_AMQP_URL",
        "STT_BLOB_URL",
        "STT_NAMESPACE",
        "STT_MODELS",
        "STT_MAX_QUEUED",
        "STT_DELIVERY_LIMIT",
    ):
        assert gateway.get(key) == daemon.get(key), key


@pytest.mark.parametrize(
    ("name", "settings_class"), [("gateway", GatewaySettings), ("daemon", DaemonSettings)]
)
def test_every_stt_variable_is_a_valid_setting(
    services: dict[str, dict[str, Any]], name: str, settings_class: type[CommonSettings]
) -> None:
    env = {k: v for k, v in env_of(services[name]).items() if k.startswith("STT_")}
    fields = {key.removeprefix("STT_").lower(): value for key, value in env.items()}
    unknown = set(fields) - set(settings_class.model_fields)
    assert not unknown, f"{name}: no such setting: {sorted(unknown)} (would be ignored silently)"
    settings_class.model_validate(fields)  # raises if a value is invalid


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.mark.parametrize("name", ["gateway", "daemon"])
def test_volume_mount_points_belong_to_the_image_user(
    stages: dict[str, Stage], services: dict[str, dict[str, Any]], name: str
) -> None:
    # An empty named volume takes the owner of the image's directory at its mount
    # point; a directory the image lacks would be root's, unwritable for the user.
    runs = " ".join(instructions(stages, name, "RUN"))
    assert "chown" in runs
    for target in mounts_of(services[name]):
        assert re.search(rf"mkdir[^&;]*\s{re.escape(target)}(\s|$)", runs), target
