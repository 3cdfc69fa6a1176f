"""The daemon's side of the control exchange: announcing itself, hearing cancellations.

Daemons announce what they serve every ``STT_ANNOUNCE_INTERVAL`` seconds (and at
once when a gateway says hello), so gateways know which models live daemons
serve. Cancellations come from a stream that every daemon reads from its start,
so that a daemon started after a job was cancelled still skips it.

An announcement that cannot be published (broker down, blocked, a closed channel)
is retried at the next interval; the first failure is logged, then a reminder a
minute while it lasts, then the recovery: never a line a second, never silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from stt_daemon.common.amqp import broker_user
from stt_daemon.common.protocol import (
    HELLO_ROUTING_KEY,
    DaemonAnnouncement,
    DecodeError,
    decode_cancel,
    encode_announcement,
)
from stt_daemon.config import DaemonSettings
from stt_daemon.engine import Engine
from stt_daemon.speakers.step import SpeakerStep

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


class Outage:
    """Logs a recurring action's failures: the first, a reminder every ``every`` s, the recovery."""

    def __init__(
        self,
        name: str,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._every = every
        self._clock = clock
        self.failures = 0
        self._since: float | None = None
        self._logged = 0.0

    def failed(self, exc: BaseException) -> None:
        """One more failure; logged if it is the first or the last line is old enough."""
        now = self._clock()
        self.failures += 1
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._since is None:
            self._since = self._logged = now
            log.warning(f"{self._name}_failed", error=error)
        elif now - self._logged >= self._every:
            self._logged = now
            log.warning(
                f"{self._name}_still_failing",
                error=error,
                failures=self.failures,
                for_s=round(now - self._since, 1),
            )

    def succeeded(self) -> None:
        """It worked: say so once if it had been failing."""
        if self._since is None:
            return
        log.info(
            f"{self._name}_recovered",
            failures=self.failures,
            after_s=round(self._clock() - self._since, 1),
        )
        self.failures = 0
        self._since = None


class ControlPlane:
    """Announces this daemon and feeds :class:`Cancellations` from the stream."""

    def __init__(
        self,
        settings: DaemonSettings,
        engines: Mapping[str, Engine],
        in_flight: Callable[[], int],
        cancellations: Cancellations,
        speakers: SpeakerStep | None = None,
    ) -> None:
        self._settings = settings
        self._models = list(engines)
        self._multilingual = [name for name, engine in engines.items() if engine.multilingual]
        # Gateways refuse diarize=speakers up front when no daemon of the model can.
        self._speakers = speakers
        self._in_flight = in_flight
        self.cancellations = cancellations
        self._exchange: AbstractExchange | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_heard = 0.0
        # Gateways believe what a broker-checked user says; the same user as our events.
        self._user = broker_user(settings.amqp_url)
        self._outage = Outage("control.announce")

    async def start(self, consume: AbstractChannel, exchange: AbstractExchange) -> None:
        """Start listening and announcing; ``exchange`` is the control exchange (confirms on)."""
        self._exchange = exchange
        names = self._settings.names
        # Streams need a prefetch limit and an explicit starting offset.
        await consume.set_qos(prefetch_count=500)
        stream = await consume.get_queue(names.cancel_stream, ensure=True)
        await stream.consume(self._on_cancel, arguments={"x-stream-offset": "first"})
        hello = await consume.declare_queue(exclusive=True, auto_delete=True)
        await hello.bind(names.control_exchange, routing_key=HELLO_ROUTING_KEY)
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
            request = decode_cancel(message.body)
        except DecodeError as exc:
            log.warning("control.bad_cancel", error=str(exc))
        else:
            self.cancellations.cancel(request.job_id)
            log.debug("job.cancel_heard", job_id=request.job_id)
        await message.ack()

    async def _on_hello(self, message: AbstractIncomingMessage) -> None:
        await self._announce_logged()

    async def _announce_forever(self) -> None:
        while True:
            await self._announce_logged()
            await asyncio.sleep(self._settings.announce_interval)

    async def _announce_logged(self) -> None:
        """Announce; a failure is logged (rate-limited) and left to the next interval."""
        try:
            await self.announce()
        except Exception as exc:
            self._outage.failed(exc)
        else:
            self._outage.succeeded()

    async def announce(self, state: str = "up") -> None:
        """Publish one announcement (transient: an old one is worthless)."""
        if self._exchange is None:
            return
        body = DaemonAnnouncement(
            worker=self._settings.worker_name,
            models=self._models,
            multilingual=self._multilingual,
            # Read at each announcement: a model onnxruntime refuses at its first job
            # turns diarization off after start.
            speakers=self._speakers is not None and self._speakers.available,
            prefetch=self._settings.prefetch,
            in_flight=self._in_flight(),
            state="down" if state == "down" else "up",
            interval=self._settings.announce_interval,
        )
        message = encode_announcement(body, user_id=self._user)
        async with asyncio.timeout(self._settings.publish_timeout):
            await self._exchange.publish(message, routing_key=f"daemon.{body.state}")

    async def stop(self) -> None:
        """Stop announcing and say goodbye, so gateways drop this daemon at once."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        try:
            await self.announce("down")
        except Exception as exc:
            # Gateways then drop this daemon after three silent intervals instead.
            log.warning("control.goodbye_failed", error=f"{type(exc).__name__}: {exc}")
