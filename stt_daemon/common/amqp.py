"""Broker connections: one node or a cluster (``STT_AMQP_URL`` may list several addresses).

aio-pika's robust connection reconnects to the one URL it was given, which is
no help when that node is gone for good. :class:`ClusterConnection` keeps all
the addresses and moves to the next one on every (re)connection attempt, so a
gateway or daemon whose node dies carries on with a surviving node of the
cluster; channels, exchanges, queues and consumers are then restored by aio-pika
as after any reconnect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection
from yarl import URL

from stt_daemon.common.urls import redact as redact  # its home; re-exported for callers

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
