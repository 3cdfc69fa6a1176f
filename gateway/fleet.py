"""What the live daemons serve, learned from their announcements on the control exchange.

A daemon announces itself every ``STT_ANNOUNCE_INTERVAL`` seconds; one not heard
for three intervals (killed, partitioned) drops out, and one that says
``daemon.down`` at shutdown drops out at once. Daemons coming and going are
logged, and so are announcements that do not decode (the first, then a count a
minute): a daemon of another version, or something else publishing ``daemon.*``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from stt_daemon.common.protocol import (
    HELLO_ROUTING_KEY,
    DaemonAnnouncement,
    DecodeError,
    decode_announcement,
    encode_hello,
)
from stt_daemon.common.topology import Names

log = structlog.get_logger("gateway.fleet")

#: Announcements missed before a daemon counts as gone.
MISSED_BEFORE_GONE = 3
#: Seconds between two log lines about announcements that do not decode.
BAD_LOG_EVERY = 60.0


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
        #: Announcements that did not decode, in all and since the last line about them.
        self.bad = 0
        self._bad_unlogged = 0
        self._bad_logged_at: float | None = None

    async def start(self, connection: AbstractRobustConnection) -> None:
        """Listen for announcements, then ask every daemon to announce itself now."""
        channel = await connection.channel()
        exchange = await channel.get_exchange(self._names.control_exchange, ensure=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="daemon.*")
        await queue.consume(self._on_announcement, no_ack=True)
        await exchange.publish(encode_hello(), routing_key=HELLO_ROUTING_KEY)

    async def _on_announcement(self, message: AbstractIncomingMessage) -> None:
        try:
            announcement = decode_announcement(message.body)
        except DecodeError as exc:
            self._bad_announcement(message, exc)
            return
        previous = self._seen.get(announcement.worker)
        self._seen[announcement.worker] = Seen(announcement, time.monotonic())
        if announcement.state == "down":
            log.info("fleet.daemon_down", worker=announcement.worker)
        elif previous is None or previous.announcement.state == "down":
            log.info("fleet.daemon_up", worker=announcement.worker, models=announcement.models)

    def _bad_announcement(self, message: AbstractIncomingMessage, exc: DecodeError) -> None:
        """Log it: the first at once, later ones as a count at most once a minute."""
        self.bad += 1
        self._bad_unlogged += 1
        now = time.monotonic()
        if self._bad_logged_at is not None and now - self._bad_logged_at < BAD_LOG_EVERY:
            return
        log.warning(
            "fleet.bad_announcement",
            # Where it came from and what is wrong, not the body (the error quotes
            # none of it): anyone may publish it.
            routing_key=message.routing_key,
            user_id=message.user_id,
            error=str(exc)[:200],
            count=self._bad_unlogged,
        )
        self._bad_logged_at, self._bad_unlogged = now, 0

    def workers(self) -> list[DaemonAnnouncement]:
        """Announcements of the daemons alive now (stale ones are forgotten)."""
        now = time.monotonic()
        for worker in [w for w, seen in self._seen.items() if not seen.alive(now)]:
            if self._seen[worker].announcement.state == "up":
                log.info("fleet.daemon_lost", worker=worker, reason="no announcement heard")
            del self._seen[worker]
        return [seen.announcement for seen in self._seen.values()]

    def served(self) -> dict[str, list[DaemonAnnouncement]]:
        """Model name -> the live daemons serving it."""
        models: dict[str, list[DaemonAnnouncement]] = {}
        for announcement in self.workers():
            for model in announcement.models:
                models.setdefault(model, []).append(announcement)
        return models
