"""What the live daemons serve, learned from their announcements on the control exchange.

A daemon announces itself every ``STT_ANNOUNCE_INTERVAL`` seconds; one not heard
for three intervals (killed, partitioned) drops out, and one that says
``daemon.down`` at shutdown drops out at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from stt_daemon.protocol import JSON_CONTENT_TYPE, DaemonAnnouncement
from stt_daemon.topology import Names

log = structlog.get_logger("gateway.fleet")

#: Announcements missed before a daemon counts as gone.
MISSED_BEFORE_GONE = 3


@dataclass
class Seen:
    """The last announcement of one daemon and when it arrived (monotonic)."""

    announcement: DaemonAnnouncement
    at: float

    def alive(self, now: float) -> bool:
        """Up, and heard from recently enough."""
        fresh = now - self.at < self.announcement.interval * MISSED_BEFORE_GONE
        return self.announcement.state == "up" and fresh


class Fleet:
    """The daemons this gateway has heard from."""

    def __init__(self, names: Names) -> None:
        self._names = names
        self._seen: dict[str, Seen] = {}

    async def start(self, connection: AbstractRobustConnection) -> None:
        """Listen for announcements, then ask every daemon to announce itself now."""
        channel = await connection.channel()
        exchange = await channel.get_exchange(self._names.control_exchange, ensure=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="daemon.*")
        await queue.consume(self._on_announcement, no_ack=True)
        await exchange.publish(
            aio_pika.Message(b"{}", content_type=JSON_CONTENT_TYPE), routing_key="gateway.hello"
        )

    async def _on_announcement(self, message: AbstractIncomingMessage) -> None:
        try:
            announcement = DaemonAnnouncement.model_validate_json(message.body)
        except ValueError as exc:
            log.warning("fleet.bad_announcement", error=str(exc))
            return
        self._seen[announcement.worker] = Seen(announcement, time.monotonic())

    def workers(self) -> list[DaemonAnnouncement]:
        """Announcements of the daemons alive now (stale ones are forgotten)."""
        now = time.monotonic()
        for worker in [w for w, seen in self._seen.items() if not seen.alive(now)]:
            del self._seen[worker]
        return [seen.announcement for seen in self._seen.values()]

    def served(self) -> dict[str, list[DaemonAnnouncement]]:
        """Model name -> the live daemons serving it."""
        models: dict[str, list[DaemonAnnouncement]] = {}
        for announcement in self.workers():
            for model in announcement.models:
                models.setdefault(model, []).append(announcement)
        return models
