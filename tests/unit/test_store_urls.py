"""Which status store URLs are accepted, and that passwords in them stay out of sight."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from gateway.config import GatewaySettings
from gateway.store import open_store, redacted
from stt_daemon.localbroker import free_port


@pytest.mark.parametrize(
    "url",
    [
        "mysql://db/status",
        "sqlite://relative.db",
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:6379/zero",
        "redis:///0",
        "unix://",
        "status.db",
    ],
)
def test_bad_status_urls_are_refused_clearly(url: str) -> None:
    with pytest.raises(ValueError, match="STT_STATUS_URL") as caught:
        open_store(url)
    assert url in str(caught.value)
    with pytest.raises(ValidationError, match="STT_STATUS_URL"):
        GatewaySettings(status_url=url)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://:pw@cache:6380/2", "unix:///run/redis.sock?db=1"]
)
def test_redis_url_forms_are_accepted(url: str) -> None:
    assert GatewaySettings(status_url=url).status_url == url


async def test_ping_raises_when_redis_is_unreachable() -> None:
    store = open_store(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(aioredis.ConnectionError):
            await store.ping()
    finally:
        await store.close()


def test_passwords_stay_out_of_messages_and_logs() -> None:
    with pytest.raises(ValueError) as caught:
        open_store("redis://:s3cret@cache:port/0")
    assert "s3cret" not in str(caught.value) and "cache" in str(caught.value)
    assert redacted("redis://user:s3cret@cache:6379/0") == "redis://user:***@cache:6379/0"
    assert redacted("sqlite:////data/status.db") == "sqlite:////data/status.db"
