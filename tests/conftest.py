"""Session fixtures: one real RabbitMQ node for the whole run; a fresh stack per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from redisnode import LocalRedis
from stack import JFK, Stack
from stt_daemon.localbroker import LocalRabbitNode


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    """The test recordings committed under tests/data."""
    if not JFK.is_file():
        pytest.fail(f"test audio missing: {JFK} (tests/data is part of the repository)")
    return JFK.parent


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """STT_TEST_AMQP_URL, or a private RabbitMQ node on a free loopback port."""
    if url := os.environ.get("STT_TEST_AMQP_URL"):
        yield url
        return
    node = LocalRabbitNode()
    node.start()
    try:
        yield node.url
    finally:
        node.stop()
        node.cleanup()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """STT_TEST_REDIS_URL, or a private redis-server on a free loopback port."""
    if url := os.environ.get("STT_TEST_REDIS_URL"):
        yield url
        return
    node = LocalRedis()
    node.start()
    try:
        yield node.url
    finally:
        node.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_stores`` run once on SQLite and once on Redis."""
    if "stack" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_stores"):
        metafunc.parametrize("status_store", ["sqlite", "redis"], indirect=True)


@pytest.fixture
def status_store(request: pytest.FixtureRequest) -> str:
    """The status store a stack's gateways use (SQLite unless parametrized)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
async def stack(
    amqp_url: str,
    tmp_path: Path,
    audio_dir: Path,
    status_store: str,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Stack]:
    """An isolated deployment (unique queue names, own data dir); processes stopped after."""
    env = {}
    if status_store == "redis":
        # Keys live under the stack's namespace, so stacks sharing one Redis never meet.
        env["STT_STATUS_URL"] = request.getfixturevalue("redis_url")
    s = Stack(amqp_url=amqp_url, data_dir=tmp_path, env=env)
    try:
        yield s
    finally:
        await s.stop_all()
        await s.forget()


@pytest.fixture
async def channel(amqp_url: str) -> AsyncIterator[AbstractChannel]:
    """A plain AMQP channel, as an outside producer or consumer would have."""
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()
