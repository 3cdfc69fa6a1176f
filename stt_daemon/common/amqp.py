"""Broker connections: one node or a cluster (``STT_AMQP_URL`` may list several addresses).

aio-pika's robust connection reconnects to the one URL it was given, which is
no help when that node is gone for good. :class:`ClusterConnection` keeps all
the addresses and moves to the next one on every (re)connection attempt, so a
gateway or daemon whose node dies carries on with a surviving node of the
cluster; channels, exchanges, queues and consumers are then restored by aio-pika
as after any reconnect.

It also holds two chores of every publisher: a fresh channel after a nack
(:func:`renew_channel`) and a copy of a delivery to publish again
(:func:`copy_delivery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
import structlog
from aio_pika import RobustConnection
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from aio_pika.exceptions import AMQPError
from yarl import URL

from stt_daemon.common.urls import redact as redact  # its home; re-exported for callers

log = structlog.get_logger("stt_daemon.common.amqp")

#: Hosts where the default ``guest`` account is acceptable (RabbitMQ allows it on loopback only).
_LOCAL_HOSTS = {"localhost", ""}


def split_urls(value: str) -> list[str]:
    """The addresses of ``STT_AMQP_URL``: comma-separated ``amqp://`` or ``amqps://`` URLs."""
    urls = [part.strip() for part in value.split(",") if part.strip()]
    if not urls:
        raise ValueError("STT_AMQP_URL is empty")
    for url in urls:
        scheme = URL(url).scheme
        if scheme not in ("amqp", "amqps"):
            raise ValueError(f"STT_AMQP_URL: {redact(url)!r} is not an amqp:// or amqps:// URL")
    return urls


def addresses(value: str) -> list[str]:
    """``host:port`` of each address of ``STT_AMQP_URL`` (no credentials), for logs."""
    found = []
    for url in split_urls(value):
        parsed = URL(url)
        port = parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
        found.append(f"{parsed.host}:{port}")
    return found


def broker_user(value: str) -> str:
    """The broker user of ``STT_AMQP_URL`` (its first address; ``guest`` when none is given).

    Our processes set it as the ``user_id`` of what they publish: RabbitMQ refuses a
    ``user_id`` that is not the connection's user, so consumers can trust it.
    """
    return URL(split_urls(value)[0]).user or "guest"


def uses_guest_remotely(url: str) -> bool:
    """True for the default ``guest:guest`` account on a host that is not this machine."""
    parsed = URL(url)
    if (parsed.user or "guest") != "guest" or (parsed.password or "guest") != "guest":
        return False
    host = (parsed.host or "").strip("[]")
    if host in _LOCAL_HOSTS:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


class ClusterConnection(RobustConnection):
    """A robust connection that tries the next address of the cluster on each attempt."""

    def __init__(self, url: URL, loop: Any = None, *, addresses: Sequence[str] = (), **kwargs: Any):
        self._addresses = [URL(a) for a in addresses] or [URL(url)]
        # -1: the first attempt moves to address 0. Set before the base class
        # runs, because its __init__ already resets ``transport``.
        self._current = -1
        self._rotating = False
        super().__init__(url, loop, **kwargs)
        self._rotating = True

    # aio-pika resets ``transport`` to None at the start of every connection
    # attempt (and on close), then connects to ``self.url``: that reset is where
    # the next address is picked.
    @property
    def transport(self) -> Any:
        """The live transport, if any."""
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and self._rotating:
            self._current = (self._current + 1) % len(self._addresses)
        self.__dict__["_transport"] = value

    @property
    def url(self) -> URL:
        """The address in use (or about to be tried)."""
        return self._addresses[max(self._current, 0)]

    @url.setter
    def url(self, value: URL) -> None:
        # Set by the base class at start (ignored: the list is the truth) and by
        # update_secret(), which changes the credentials of the address in use.
        if self._rotating:
            self._addresses[max(self._current, 0)] = URL(value)


async def connect(amqp_url: str, name: str, heartbeat: int) -> AbstractRobustConnection:
    """A named robust connection to ``STT_AMQP_URL`` (one address or several).

    The first connection tries every address once, in order, and raises the
    last error if none answers (callers retry); after that, reconnections move
    through the addresses on their own.
    """
    # aiormq reads the heartbeat from the URL only (a keyword is silently ignored);
    # one the operator put in the URL wins.
    urls = [
        str(url if "heartbeat" in url.query else url.update_query(heartbeat=heartbeat))
        for url in map(URL, split_urls(amqp_url))
    ]
    error: Exception | None = None
    for first in range(len(urls)):
        ordered = urls[first:] + urls[:first]
        connection = ClusterConnection(
            URL(ordered[0]),
            addresses=ordered,
            client_properties={"connection_name": name},
        )
        try:
            await connection.connect()
        except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
            error = exc
            continue
        return connection
    assert error is not None
    raise error


async def renew_channel(
    connection: AbstractConnection,
    old: AbstractChannel | None,
    exchanges: Sequence[str],
    *,
    limit: float,
    on_return_raises: bool = False,
    owner: str,
) -> tuple[AbstractChannel, list[AbstractExchange]] | None:
    """A new confirming channel with ``exchanges`` on it, the old one closed; None if none came.

    Seen on RabbitMQ 3.10 after a queue leader died: one channel kept nacking
    for minutes, while a new one published at once. So a publisher that gets a
    nack retries on a fresh channel. ``limit``: seconds the broker has to open it;
    ``owner`` names the publisher in the logs. On failure (logged) the old channel
    stays in use.
    """
    try:
        async with asyncio.timeout(limit):
            channel = await connection.channel(
                publisher_confirms=True, on_return_raises=on_return_raises
            )
            found = [await channel.get_exchange(name, ensure=False) for name in exchanges]
    except (TimeoutError, AMQPError, ConnectionError, RuntimeError) as exc:
        log.warning("amqp.channel_not_renewed", owner=owner, error=f"{type(exc).__name__}: {exc}")
        return None
    if old is not None:
        with contextlib.suppress(Exception):
            await old.close()
    log.info("amqp.channel_renewed", owner=owner)
    return channel, found


def copy_delivery(
    message: AbstractIncomingMessage, *, headers: Mapping[str, Any], user_id: str | None
) -> aio_pika.Message:
    """A persistent copy of a delivery, every property kept but its ``headers`` and ``user_id``.

    Body and ``reply_to`` stay as they were, so a signed claim check stays valid;
    ``user_id`` must be the publishing connection's user (RabbitMQ allows no other).
    """
    return aio_pika.Message(
        message.body,
        headers=dict(headers),
        user_id=user_id,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )
