"""The daemon's side of live transcription: answer windows, ahead of batch work.

Each model's live queue gets a consumer of its own (prefetch ``STT_LIVE_PREFETCH``).
A window is decoded in a worker thread and answered to its ``reply_to`` (direct
reply-to) with :class:`~stt_daemon.common.liveprotocol.LiveReply`, then acked; a window
whose deadline has passed is acked unanswered (nobody waits for it any more).

Live work must not wait behind batch jobs. :class:`LiveGate` holds batch
transcriptions at their next Whisper window while live windows are decoded here
and for a moment after, so that while sessions run a live step shares the CPU
(and the engine's CTranslate2 workers, which a held job does not occupy) with
nothing but other live steps and the batch windows already in progress, which
finish first.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import numpy as np
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from stt_daemon.common.liveprotocol import (
    LiveReply,
    WindowOptions,
    encode_reply,
    window_refusal,
)
from stt_daemon.common.topology import Names
from stt_daemon.metrics import DaemonMetrics

log = structlog.get_logger("stt_daemon.live")
T = TypeVar("T")
#: Longest a batch transcription waits at a window boundary for live work to end,
#: per wait: live sessions that never pause must not starve batch jobs for good.
MAX_BATCH_HOLD_S = 5.0
#: How long after a live window batch work still holds (sessions send one a second).
LIVE_LINGER_S = 1.5


class LiveEngine(Protocol):
    """An engine that can answer live windows."""

    name: str

    def transcribe_window(self, samples: Any, options: WindowOptions) -> LiveReply:
        """Words and speech regions of one window (blocking)."""
        ...


class LiveGate:
    """Batch work waits while live windows are decoded, and a moment after each.

    Sessions send a window about once a second: holding batch only during a
    decode would let batch windows start in the gaps and still be running when
    the next live window arrives. So batch holds from a live window's start until
    ``linger`` seconds after the last one ended (bounded per wait, so that endless
    live traffic slows batch jobs down but never stops them).
    """

    def __init__(
        self,
        linger: float = LIVE_LINGER_S,
        clock: Callable[[], float] = time.monotonic,
        max_hold: float = MAX_BATCH_HOLD_S,
    ):
        self._busy = 0
        self._last = float("-inf")
        self._linger = linger
        self._clock = clock
        self._max_hold = max_hold
        self._idle = threading.Condition()
        #: A batch window is running only because its hold ran out.
        self._overdue = False

    @contextmanager
    def live(self) -> Iterator[None]:
        """While inside (and ``linger`` after), batch transcriptions hold at their next window."""
        with self._idle:
            self._busy += 1
        try:
            yield
        finally:
            with self._idle:
                self._busy -= 1
                self._last = self._clock()
                self._idle.notify_all()

    def _quiet_in(self) -> float:
        """Seconds until batch may go on (0: now). Call with the lock held."""
        if self._busy:
            return self._linger
        return max(0.0, self._last + self._linger - self._clock())

    def wait_turn(self, timeout: float | None = None) -> bool:
        """Block (a batch worker thread) while live work goes on, up to ``timeout``
        (default: the gate's ``max_hold``).

        True when it goes on only because its hold ran out: the caller then runs one
        window as the overdue one and calls :meth:`overdue_done` after it. Only one
        batch window runs overdue at a time. When every held job went on together
        (they are held together, so their holds run out together), the live window
        that came next found every engine worker busy with a batch window and waited
        seconds for one: the batch queue full pushed live partial latency at p95 from
        2.2 to 3.4 s. One at a time, batch still moves under endless live traffic
        and live always finds a worker.
        """
        deadline = self._clock() + (self._max_hold if timeout is None else timeout)
        with self._idle:
            while (wait := self._quiet_in()) > 0:
                left = deadline - self._clock()
                if left > 0:
                    self._idle.wait(min(wait, left))
                elif not self._overdue:
                    self._overdue = True
                    return True
                else:  # another held window is running overdue: wait for its end
                    self._idle.wait(wait)
            return False

    def overdue_done(self) -> None:
        """The overdue batch window (see :meth:`wait_turn`) has ended."""
        with self._idle:
            self._overdue = False
            self._idle.notify_all()

    def paced(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, each next one (a lazy Whisper window) started only on batch's turn."""
        iterator = iter(items)
        while True:
            overdue = self.wait_turn()
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                if overdue:
                    self.overdue_done()
            yield item


def pcm16_to_float(body: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Little-endian 16-bit PCM as float32 in [-1, 1)."""
    return np.frombuffer(body, dtype="<i2").astype(np.float32) / 32768.0


class LiveServer:
    """Consumes the live queues of the models served here and answers each window."""

    def __init__(
        self,
        names: Names,
        engines: Mapping[str, Any],
        gate: LiveGate,
        *,
        prefetch: int,
        worker: str,
        user_id: str,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self._names = names
        self._engines: dict[str, LiveEngine] = {
            name: engine for name, engine in engines.items() if hasattr(engine, "transcribe_window")
        }
        self._gate = gate
        self._prefetch = prefetch
        self._worker = worker
        self._user = user_id
        self._metrics = metrics
        self._reply_channel: AbstractChannel | None = None
        self.answered = 0
        self.expired = 0

    async def start(self, consume: AbstractRobustConnection, publish: AbstractChannel) -> None:
        """Consume each model's live queue on ``consume``; answer on ``publish``."""
        self._reply_channel = publish
        for model, engine in self._engines.items():
            channel = await consume.channel()
            await channel.set_qos(prefetch_count=self._prefetch)
            queue = await channel.get_queue(self._names.live_queue(model), ensure=True)

            async def on_window(
                message: AbstractIncomingMessage, engine: LiveEngine = engine
            ) -> None:
                await self._answer(message, engine)

            await queue.consume(on_window)
        if self._engines:
            log.info("live.ready", models=list(self._engines), prefetch=self._prefetch)

    async def _answer(self, message: AbstractIncomingMessage, engine: LiveEngine) -> None:
        started = time.monotonic()
        try:
            options = WindowOptions.from_headers(message.headers)
        except ValueError as exc:
            await self._reply(message, LiveReply(error=f"invalid window options: {exc}"))
            return
        if options.expired():
            # Nobody waits for it: its session has sent a newer window already.
            self.expired += 1
            self._count("expired")
            await message.ack()
            return
        why = window_refusal(
            message.body, content_type=message.content_type, reply_to=message.reply_to
        )
        if why is not None:
            await self._reply(message, LiveReply(error=why, worker=self._worker))
            return
        samples = pcm16_to_float(message.body)

        def decode() -> LiveReply:
            with self._gate.live():
                return engine.transcribe_window(samples, options)

        try:
            reply = await asyncio.to_thread(decode)
        except Exception as exc:  # a window must never take the daemon down
            log.exception("live.window_failed", session=options.session)
            reply = LiveReply(error=f"window not transcribed: {type(exc).__name__}")
        reply.compute_s = round(time.monotonic() - started, 4)
        reply.worker = self._worker
        await self._reply(message, reply)
        self.answered += 1
        self._count("answered", reply.compute_s)

    async def _reply(self, message: AbstractIncomingMessage, reply: LiveReply) -> None:
        assert self._reply_channel is not None
        if message.reply_to:
            try:
                await self._reply_channel.default_exchange.publish(
                    encode_reply(reply, correlation_id=message.correlation_id, user_id=self._user),
                    routing_key=message.reply_to,
                )
            except Exception as exc:  # the session went away: its next window goes elsewhere
                log.info("live.reply_not_sent", error=f"{type(exc).__name__}: {exc}")
        await message.ack()

    def _count(self, outcome: str, seconds: float | None = None) -> None:
        if self._metrics is not None:
            self._metrics.live_window(outcome, seconds)
