"""The recorder: consumes the results exchange and writes the status store.

Runs inside each gateway; all gateways share its durable queue as competing
consumers, so every event is applied once by some gateway and none is lost
while the gateways are down.

The store has this one writer of statuses: a cancellation too reaches it as an
event, the ``job.cancelled`` the gateway publishes (gateway/services.py). Only
events from trusted publishers are applied (gateway/trust.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from gateway.config import GatewaySettings
from gateway.store import StatusStore
from gateway.trust import DEFAULT_PUBLISHERS, believed, connection_user, trusted_publishers
from stt_daemon.common.protocol import DecodeError, JobEvent, decode_event
from stt_daemon.common.topology import Names

log = structlog.get_logger("gateway.recorder")

#: Seconds between two tries of an event the store would not take.
STORE_RETRY_DELAY = 1.0


def deliveries(message: AbstractIncomingMessage) -> int:
    """Which delivery of its message this is (1 for the first): quorum queues count them."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return (count if isinstance(count, int) and count >= 0 else 0) + 1


class Recorder:
    """Applies job events to the status store, acking each after it is written."""

    def __init__(
        self,
        store: StatusStore,
        names: Names,
        prefetch: int,
        on_applied: Callable[[JobEvent], None] | None = None,
        *,
        trusted: Collection[str] | None = None,
        max_attempts: int = 20,
        retry_delay: float = STORE_RETRY_DELAY,
    ) -> None:
        self._store = store
        self._names = names
        self._prefetch = prefetch
        #: Called with each event that changed a job (the gateway's metrics count them).
        self._on_applied = on_applied
        #: None: DEFAULT_PUBLISHERS and the user of the connection start() consumes on.
        self._trusted = frozenset(trusted) if trusted is not None else None
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self.applied = 0
        #: Events refused because their publisher is not trusted.
        self.untrusted = 0
        #: Events dropped because the store would not take them in ``max_attempts`` tries.
        self.dropped = 0

    @classmethod
    def from_settings(
        cls,
        store: StatusStore,
        settings: GatewaySettings,
        on_applied: Callable[[JobEvent], None] | None = None,
    ) -> Recorder:
        """The recorder configured by ``STT_RECORDER_*`` and ``STT_EVENT_PUBLISHERS``."""
        return cls(
            store,
            settings.names,
            settings.recorder_prefetch,
            on_applied,
            trusted=trusted_publishers(settings),
            max_attempts=settings.recorder_max_attempts,
        )

    async def start(self, connection: AbstractRobustConnection) -> None:
        """Start consuming (the robust channel re-consumes after a reconnect)."""
        if self._trusted is None:
            self._trusted = frozenset(DEFAULT_PUBLISHERS) | {connection_user(connection)}
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        queue = await channel.get_queue(self._names.recorder_queue, ensure=True)
        await queue.consume(self._on_event)
        log.info(
            "recorder.started", queue=self._names.recorder_queue, trusted=sorted(self._trusted)
        )

    def trusts(self, message: AbstractIncomingMessage) -> bool:
        """True when the message's broker-checked publisher is one we believe."""
        return believed(message, self._trusted or ())

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        if not self.trusts(message):
            # A forgery, or a publisher that is not configured: never applied. The
            # body is not logged, it is anybody's.
            self.untrusted += 1
            log.warning(
                "recorder.untrusted_event",
                user_id=message.user_id,
                routing_key=message.routing_key,
                message_id=message.message_id,
            )
            await message.reject(requeue=False)
            return
        try:
            event = decode_event(message.body)
        except DecodeError as exc:
            # Not ours to fix and never going to decode: drop it, loudly.
            log.warning("recorder.bad_event", error=str(exc), message_id=message.message_id)
            await message.reject(requeue=False)
            return
        try:
            if await self._store.apply(event):
                self.applied += 1
                if self._on_applied is not None:
                    self._on_applied(event)
        except Exception as exc:
            await self._store_failed(message, event, exc)
            return
        await message.ack()

    async def _store_failed(
        self, message: AbstractIncomingMessage, event: JobEvent, exc: Exception
    ) -> None:
        """Try the event again later, up to ``max_attempts`` deliveries; then drop it, loudly."""
        attempt = deliveries(message)
        error = f"{type(exc).__name__}: {exc}"
        if attempt >= self._max_attempts:
            # Requeued for ever, one event the store cannot take (or a store down for
            # good) would hold a prefetch slot and spin; the job keeps its last status.
            self.dropped += 1
            log.error(
                "recorder.event_dropped",
                job_id=event.job_id,
                event_type=event.event.value,
                attempts=attempt,
                error=error,
            )
            await message.reject(requeue=False)
            return
        log.error(
            "recorder.store_failed",
            job_id=event.job_id,
            event_type=event.event.value,
            attempt=attempt,
            max_attempts=self._max_attempts,
            error=error,
        )
        # Back off so that a broken store does not become a hot loop.
        await asyncio.sleep(self._retry_delay)
        await message.nack(requeue=True)
