"""Session fixtures: one real RabbitMQ node for the whole run; a fresh stack per test."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from redisnode import LocalRedis
from stack import JFK, Stack
from stt_daemon import roles
from stt_daemon.localbroker import LocalRabbitNode


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    """The test recordings committed under tests/data."""
    if not JFK.is_file():
        pytest.fail(f"test audio missing: {JFK} (tests/data is part of the repository)")
    return JFK.parent


#: The namespaces of the test stacks (tests/stack.py), as a permission pattern.
STACK_NAMESPACES = r"t[0-9a-f]{10}"


@pytest.fixture(scope="session")
def local_node() -> Iterator[LocalRabbitNode | None]:
    """A private RabbitMQ node on a free loopback port; None with STT_TEST_AMQP_URL."""
    if os.environ.get("STT_TEST_AMQP_URL"):
        yield None
        return
    node = LocalRabbitNode()
    node.start()
    try:
        yield node
    finally:
        node.stop()
        node.cleanup()


@pytest.fixture(scope="session")
def amqp_url(local_node: LocalRabbitNode | None) -> str:
    """The administrator's URL: STT_TEST_AMQP_URL, or guest on the private node."""
    if local_node is None:
        return os.environ["STT_TEST_AMQP_URL"]
    return local_node.url


@pytest.fixture(scope="session")
def broker_roles(local_node: LocalRabbitNode | None) -> dict[str, str]:
    """Role -> AMQP URL: the shipped broker users (stt_daemon/roles.py) on the private node.

    Every stack's daemons and gateways connect as these, so the whole suite runs on
    the least permissions a deployment gives them. Empty with STT_TEST_AMQP_URL
    (creating users needs that broker's administrator): everything is then admin.
    """
    if local_node is None:
        return {}
    passwords = {role: secrets.token_hex(12) for role in roles.ROLES}
    return local_node.add_roles(passwords, namespace=STACK_NAMESPACES)


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
    broker_roles: dict[str, str],
    request: pytest.FixtureRequest,
) -> AsyncIterator[Stack]:
    """An isolated deployment (unique queue names, own data dir); processes stopped after."""
    env = {}
    if status_store == "redis":
        # Keys live under the stack's namespace, so stacks sharing one Redis never meet.
        env["STT_STATUS_URL"] = request.getfixturevalue("redis_url")
    s = Stack(amqp_url=amqp_url, data_dir=tmp_path, env=env, roles=broker_roles)
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
