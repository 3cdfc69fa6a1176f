"""The recorder: consumes the results exchange and writes the status store.

Runs inside each gateway; all gateways share its durable queue as competing
consumers, so every event is applied once by some gateway and none is lost
while the gateways are down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from gateway.store import StatusStore
from stt_daemon.protocol import DecodeError, JobEvent, decode_event
from stt_daemon.topology import Names

log = structlog.get_logger("gateway.recorder")


class Recorder:
    """Applies job events to the status store, acking each after it is written."""

    def __init__(
        self,
        store: StatusStore,
        names: Names,
        prefetch: int,
        on_applied: Callable[[JobEvent], None] | None = None,
    ) -> None:
        self._store = store
        self._names = names
        self._prefetch = prefetch
        #: Called with each event that changed a job (the gateway's metrics count them).
        self._on_applied = on_applied
        self.applied = 0

    async def start(self, connection: AbstractRobustConnection) -> None:
        """Start consuming (the robust channel re-consumes after a reconnect)."""
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        queue = await channel.get_queue(self._names.recorder_queue, ensure=True)
        await queue.consume(self._on_event)
        log.info("recorder.started", queue=self._names.recorder_queue)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
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
            log.error("recorder.store_failed", job_id=event.job_id, error=str(exc))
            # Back off so that a broken store does not become a hot loop.
            await asyncio.sleep(1.0)
            await message.nack(requeue=True)
            return
        await message.ack()
