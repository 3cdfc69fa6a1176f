"""Each process's settings list what it reads; ``STT_AMQP_URL`` is a checked, typed value."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from gateway.config import GatewaySettings
from stt_daemon.common.settings import AmqpUrls, CommonSettings
from stt_daemon.config import DaemonSettings

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = "amqp://stt:s3cret@mq-a:5672/, amqps://stt:s3cret@mq-b:5671/prod?heartbeat=5"


def _reads(settings: type[BaseSettings], package: str) -> set[str]:
    """Attribute names the package's own modules read (``.name``), through the class's properties.

    Generous on purpose (any ``.name`` counts, whatever object it is read from): the
    test catches settings that nothing in a process reads at all.
    """
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        # stt_daemon/common serves both processes: what it reads is read through
        # the properties below, when a process uses them.
        if "common" not in path.relative_to(ROOT).parts:
            names.update(re.findall(r"\.([a-z_][a-z0-9_]*)\b", path.read_text()))
    properties = dict(inspect.getmembers(settings, lambda m: isinstance(m, property)))
    pending = [name for name in names if name in properties]
    while pending:
        getter = properties[pending.pop()].fget
        assert getter is not None
        for name in re.findall(r"self\.([a-z_][a-z0-9_]*)", inspect.getsource(getter)):
            if name not in names:
                names.add(name)
                pending += [name] if name in properties else []
    return names


def _own(settings: type[BaseSettings]) -> set[str]:
    return set(settings.model_fields) - set(CommonSettings.model_fields)


def test_the_shared_settings_are_read_by_both_processes() -> None:
    daemon, gateway = _reads(DaemonSettings, "stt_daemon"), _reads(GatewaySettings, "gateway")
    shared = set(CommonSettings.model_fields)
    assert not shared - gateway, "daemon-only: move them to DaemonSettings"
    assert not shared - daemon, "gateway-only: move them to GatewaySettings"


@pytest.mark.parametrize(
    ("settings", "package"), [(DaemonSettings, "stt_daemon"), (GatewaySettings, "gateway")]
)
def test_each_process_reads_its_own_settings(settings: type[BaseSettings], package: str) -> None:
    assert not _own(settings) - _reads(settings, package), "read by nothing in this process"


def test_gateway_and_daemon_settings_share_no_field_but_the_common_ones() -> None:
    # result_ttl means something in each (how long the gateway keeps jobs, how long
    # the daemon keeps dead-lettered audio for a replay), with its own documentation.
    assert _own(DaemonSettings) & _own(GatewaySettings) == {"result_ttl"}
    assert {"status_url", "max_upload_mb"} <= _own(GatewaySettings)
    assert {"max_audio_seconds", "announce_interval"} <= _own(DaemonSettings)


def test_the_same_variables_reach_the_moved_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_STATUS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("STT_MAX_UPLOAD_MB", "2")
    monkeypatch.setenv("STT_MAX_AUDIO_SECONDS", "60")
    monkeypatch.setenv("STT_ANNOUNCE_INTERVAL", "0.5")
    gateway, daemon = GatewaySettings(), DaemonSettings()
    assert gateway.resolved_status_url == "redis://cache:6379/0"
    assert gateway.max_upload_bytes == 2 * 1024 * 1024
    assert (daemon.max_audio_seconds, daemon.announce_interval) == (60, 0.5)


def test_a_cluster_url_is_typed_and_kept_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_AMQP_URL", CLUSTER)
    for settings in (DaemonSettings(), GatewaySettings()):
        assert isinstance(settings.amqp_url, AmqpUrls)
        # As written: it goes unchanged to the connection and to child processes.
        assert settings.amqp_url == CLUSTER
        assert settings.broker_user == "stt"
        assert settings.model_dump(mode="json")["amqp_url"] == CLUSTER
    assert DaemonSettings().amqp_url.redacted == (
        "amqp://stt:***@mq-a:5672/,amqps://stt:***@mq-b:5671/prod?heartbeat=5"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("amqp://stt:s3cret@mq host/", "amqp://stt:***@mq host/: Input should be a valid URL"),
        ("amqp://stt:s3cret@/", "amqp://stt:***@/: Input should be a valid URL, empty host"),
        ("amqp://stt:s3cret@mq:99999/", "Port out of range"),
        ("amqp://stt:s3cret@mq/,redis://stt:s3cret@cache/", "not an amqp:// or amqps:// URL"),
        (" , ", "STT_AMQP_URL is empty"),
        (
            "amqp://stt:s3cret@127.0.0.1/,amqp://guest:guest@mq.example/",
            "guest is for local development only",
        ),
    ],
)
def test_a_bad_broker_url_is_refused_without_its_password(url: str, says: str) -> None:
    for settings in (DaemonSettings, GatewaySettings):
        with pytest.raises(ValidationError, match=re.escape(says)) as refused:
            # A string, as the environment gives it: validation is what is tested.
            settings.model_validate({"amqp_url": url})
        assert "s3cret" not in str(refused.value)
    with pytest.raises(ValueError, match=re.escape(says)):
        AmqpUrls(url)


def test_guest_is_fine_on_this_machine() -> None:
    for host in ("127.0.0.1", "localhost", "[::1]"):
        assert AmqpUrls(f"amqp://guest:guest@{host}:5672/").user == "guest"
    assert DaemonSettings().amqp_url.user == "guest"
