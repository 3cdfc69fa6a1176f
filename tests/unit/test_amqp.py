"""STT_AMQP_URL: several addresses, the guest rule, and failover between addresses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from yarl import URL

from stt_daemon.common.amqp import (
    ClusterConnection,
    connect,
    redact,
    split_urls,
    uses_guest_remotely,
)
from stt_daemon.config import DaemonSettings


def test_several_addresses_are_split_and_checked() -> None:
    assert split_urls(" amqp://u:p@a:5672/ , amqps://u:p@b:5671/v ") == [
        "amqp://u:p@a:5672/",
        "amqps://u:p@b:5671/v",
    ]
    with pytest.raises(ValueError, match="not an amqp"):
        split_urls("amqp://u:p@a/,http://u:secret@b/")
    with pytest.raises(ValueError, match="empty"):
        split_urls(" , ")


def test_passwords_never_reach_messages() -> None:
    assert "secret" not in redact("amqp://u:secret@host/")
    with pytest.raises(ValueError) as info:
        split_urls("redis://u:secret@host/")
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", False),
        ("amqp://guest:guest@localhost/", False),
        ("amqp://guest:guest@[::1]:5672/", False),
        ("amqp://rabbitmq:5672/", True),  # no credentials means guest
        ("amqp://guest:guest@10.0.0.5/", True),
        ("amqp://stt:s3cret@rabbitmq:5672/", False),
    ],
)
def test_guest_is_for_local_development_only(url: str, refused: bool) -> None:
    assert uses_guest_remotely(url) is refused


def test_settings_refuse_guest_on_a_remote_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_AMQP_URL", "amqp://stt:x@a/,amqp://guest:guest@b/")
    with pytest.raises(ValidationError, match="guest is for local development only"):
        DaemonSettings()
    monkeypatch.setenv("STT_AMQP_URL", "amqp://stt:x@a/,amqp://stt:x@b/")
    assert DaemonSettings().amqp_url.count("amqp://") == 2


async def test_each_connection_attempt_moves_to_the_next_address() -> None:
    addresses = ["amqp://u:p@a:1/", "amqp://u:p@b:2/", "amqp://u:p@c:3/"]
    conn = ClusterConnection(URL(addresses[0]), addresses=addresses)
    seen = []
    for _ in range(4):
        conn.transport = None  # what aio-pika does as each attempt begins
        seen.append(conn.url.host)
    assert seen == ["a", "b", "c", "a"]
    conn.url = conn.url.with_password("rotated")  # update_secret() changes the address in use
    assert conn.url.password == "rotated" and conn.url.host == "a"


@pytest.mark.integration
async def test_the_heartbeat_setting_reaches_the_broker(amqp_url: str) -> None:
    """aiormq takes the heartbeat from the URL only: STT_HEARTBEAT must end up there."""
    conn = await connect(amqp_url, "heartbeat-check", heartbeat=7)
    try:
        assert conn.transport is not None
        assert conn.transport.connection.connection_tune.heartbeat == 7
    finally:
        await conn.close()
