"""The daemon's side of the control exchange: announcing itself, hearing cancellations.

Daemons announce what they serve every ``STT_ANNOUNCE_INTERVAL`` seconds (and at
once when a gateway says hello), so gateways know which models live daemons
serve. Cancellations come from a stream that every daemon reads from its start,
so that a daemon started after a job was cancelled still skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from stt_daemon.config import DaemonSettings
from stt_daemon.engine import Engine
from stt_daemon.protocol import (
    JSON_CONTENT_TYPE,
    CancelRequest,
    DaemonAnnouncement,
    DecodeError,
)

log = structlog.get_logger("stt_daemon.control")

#: Cancellations remembered at most (oldest forgotten first); the stream keeps a day.
MAX_REMEMBERED = 100_000


class Cancellations:
    """Which jobs were cancelled, and a stop flag for each job running here."""

    def __init__(self) -> None:
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        # Several flags per job: the parts of a split recording share its job id.
        self._running: dict[str, set[threading.Event]] = {}

    def is_cancelled(self, job_id: str) -> bool:
        """True once a cancellation for the job was heard."""
        return job_id in self._cancelled

    def cancel(self, job_id: str) -> None:
        """Remember the cancellation and stop the job if it runs here."""
        self._cancelled[job_id] = None
        while len(self._cancelled) > MAX_REMEMBERED:
            self._cancelled.popitem(last=False)
        for flag in self._running.get(job_id, ()):
            flag.set()

    def running(self, job_id: str) -> threading.Event:
        """A stop flag for a job starting now (set by cancel() or by shutdown)."""
        flag = threading.Event()
        if self.is_cancelled(job_id):
            flag.set()
        self._running.setdefault(job_id, set()).add(flag)
        return flag

    def finished(self, job_id: str, flag: threading.Event) -> None:
        """Forget the stop flag of a job (or part) that ended."""
        flags = self._running.get(job_id, set())
        flags.discard(flag)
        if not flags:
            self._running.pop(job_id, None)


class ControlPlane:
    """Announces this daemon and feeds :class:`Cancellations` from the stream."""

    def __init__(
        self,
        settings: DaemonSettings,
        engines: Mapping[str, Engine],
        in_flight: Callable[[], int],
        cancellations: Cancellations,
    ) -> None:
        self._settings = settings
        self._models = list(engines)
        self._multilingual = [name for name, engine in engines.items() if engine.multilingual]
        self._in_flight = in_flight
        self.cancellations = cancellations
        self._exchange: AbstractExchange | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_heard = 0.0

    async def start(self, consume: AbstractChannel, exchange: AbstractExchange) -> None:
        """Start listening and announcing; ``exchange`` is the control exchange (confirms on)."""
        self._exchange = exchange
        names = self._settings.names
        # Streams need a prefetch limit and an explicit starting offset.
        await consume.set_qos(prefetch_count=500)
        stream = await consume.get_queue(names.cancel_stream, ensure=True)
        await stream.consume(self._on_cancel, arguments={"x-stream-offset": "first"})
        hello = await consume.declare_queue(exclusive=True, auto_delete=True)
        await hello.bind(names.control_exchange, routing_key="gateway.hello")
        await hello.consume(self._on_hello, no_ack=True)
        self._ticker = asyncio.create_task(self._announce_forever(), name="announce")

    async def caught_up(self, quiet: float = 0.3, limit: float = 10.0) -> None:
        """Wait until the stream's backlog is read (no message for ``quiet`` seconds).

        Called before consuming jobs, so that a job cancelled before this daemon
        started is skipped rather than run.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._last_heard = started
        # Polling on purpose: "quiet" is the absence of events, not an event.
        while loop.time() - self._last_heard < quiet and loop.time() - started < limit:  # noqa: ASYNC110
            await asyncio.sleep(quiet / 3)

    async def _on_cancel(self, message: AbstractIncomingMessage) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        try:
            request = CancelRequest.model_validate_json(message.body)
        except ValueError as exc:
            log.warning("control.bad_cancel", error=str(DecodeError(str(exc))))
        else:
            self.cancellations.cancel(request.job_id)
            log.debug("job.cancel_heard", job_id=request.job_id)
        await message.ack()

    async def _on_hello(self, message: AbstractIncomingMessage) -> None:
        await self.announce()

    async def _announce_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.announce()
            await asyncio.sleep(self._settings.announce_interval)

    async def announce(self, state: str = "up") -> None:
        """Publish one announcement (transient: an old one is worthless)."""
        if self._exchange is None:
            return
        interval = self._settings.announce_interval
        body = DaemonAnnouncement(
            worker=self._settings.worker_name,
            models=self._models,
            multilingual=self._multilingual,
            prefetch=self._settings.prefetch,
            in_flight=self._in_flight(),
            state="down" if state == "down" else "up",
            interval=interval,
        )
        message = aio_pika.Message(
            body.model_dump_json().encode(),
            content_type=JSON_CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            expiration=interval * 3,
        )
        async with asyncio.timeout(self._settings.publish_timeout):
            await self._exchange.publish(message, routing_key=f"daemon.{body.state}")

    async def stop(self) -> None:
        """Stop announcing and say goodbye, so gateways drop this daemon at once."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        with contextlib.suppress(Exception):
            await self.announce("down")
