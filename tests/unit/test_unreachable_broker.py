"""A daemon whose broker does not answer says which one, and stops when asked."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from structlog.testing import capture_logs

from stt_daemon.common.amqp import addresses
from stt_daemon.common.settings import AmqpUrls
from stt_daemon.config import DaemonSettings
from stt_daemon.worker import StopRequested, connect


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_addresses_name_host_and_port_without_credentials() -> None:
    value = "amqp://u:s3cret@10.0.0.1/,amqps://u:s3cret@mq.example:5999/vh"
    assert addresses(value) == ["10.0.0.1:5672", "mq.example:5999"]


async def test_the_first_signal_ends_the_wait_for_an_unreachable_broker() -> None:
    port = _closed_port()
    settings = DaemonSettings(amqp_url=AmqpUrls(f"amqp://guest:hush@127.0.0.1:{port}/"))
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(connect(settings, "consume", stop))
        await asyncio.sleep(1.5)  # at least one failed try, then waiting for the next
        began = time.monotonic()
        stop.set()
        with pytest.raises(StopRequested):
            await asyncio.wait_for(task, 5)
        assert time.monotonic() - began < 1.0  # not after the backoff
    unreachable = [line for line in logs if line["event"] == "broker.unreachable"]
    assert unreachable and unreachable[0]["tried"] == [f"127.0.0.1:{port}"]
    assert "hush" not in repr(unreachable)
