"""One live session: the audio not yet committed, the committed words, and when to ask.

The session is fed 16 kHz PCM as it arrives and, with at most one request in
flight, sends its current window (the audio since the last trim, at most ~30 s)
to any daemon of its model about once a second. Each answer is a hypothesis of
the whole window; :class:`~gateway.agreement.LocalAgreement` commits the words
two consecutive answers agree on. The daemon's voice-activity view ends an
utterance after ``end_silence`` seconds without speech: its words are then
committed as they stand, the utterance is complete, and the window moves on to
``context`` seconds before its end (what came before helps Whisper hear the next).

A window that gets no answer in time is simply superseded by the next one
(every window holds all the uncommitted audio), so a daemon that dies costs one
window, never the session. What the session tells its client comes out of
:meth:`LiveSession.events` as the dataclasses below; protocol adapters turn them
into their own messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import structlog

from gateway.agreement import LocalAgreement, TimedWord
from gateway.livebroker import LiveClient, LiveTimeout, LiveUnavailable
from stt_daemon.common.liveprotocol import MAX_PROMPT_CHARS, LiveReply, WindowOptions
from stt_daemon.common.protocol import Segment, Task, TranscriptResult, Word

log = structlog.get_logger("gateway.live")

SAMPLE_RATE = 16000
#: Window timings a session keeps (the latest ones): an hour of windows.
STATS_KEPT = 3600
BYTES_PER_SECOND = SAMPLE_RATE * 2


@dataclass(frozen=True)
class SessionOptions:
    """What a client asked for."""

    model: str
    language: str | None = None
    task: Task = Task.TRANSCRIBE
    #: Text that comes before the session (names, spelling): Whisper's initial prompt.
    prompt: str | None = None
    #: End utterances on silence (the daemon's VAD). Off: utterances end only when
    #: the window must be trimmed, and at the end of the session.
    vad: bool = True
    #: Silence that ends an utterance, seconds (None: the gateway's setting).
    end_silence: float | None = None


@dataclass(frozen=True)
class LiveLimits:
    """The gateway's live settings, as one session needs them."""

    #: New audio between two windows, seconds.
    step: float = 1.0
    #: Seconds a window waits for its answer before the next one supersedes it.
    window_timeout: float = 5.0
    #: Windows in a row without an answer before the session gives up.
    max_misses: int = 6
    #: Silence that ends an utterance, seconds.
    end_silence: float = 0.5
    #: Audio kept before a new utterance: Whisper hears it better with what came before.
    context: float = 5.0
    #: Words ending less than this before the window's end are not committed yet.
    hold: float = 0.0
    #: Nothing of an utterance is committed before the window holds this many seconds
    #: of it: from a second or two of speech, two hypotheses agree on a mishearing too
    #: ("and so am I" for "and so my", at the start of a stream), and committed words
    #: never change. They are shown as tentative meanwhile.
    settle: float = 2.5
    #: Uncommitted audio kept before the window is cut at the last committed word.
    trim_after: float = 20.0
    #: Longest window; past it the tentative words are committed as they stand.
    max_window: float = 28.0
    #: Longest session, seconds of audio.
    max_seconds: float = 4 * 3600.0


@dataclass(frozen=True)
class SpeechStarted:
    """The voice-activity detector heard speech begin (session seconds)."""

    at: float


@dataclass(frozen=True)
class SpeechStopped:
    """Speech ended ``end_silence`` ago: the utterance is complete."""

    at: float


@dataclass(frozen=True)
class Hypothesis:
    """An answer came: words newly committed (final), and the tentative tail after them."""

    committed: list[TimedWord]
    tail: list[TimedWord]


@dataclass(frozen=True)
class Utterance:
    """A complete utterance: its committed words, never to change."""

    index: int
    start: float
    end: float
    words: list[TimedWord]

    @property
    def text(self) -> str:
        """The words as one string, without the leading space."""
        return "".join(w.text for w in self.words).strip()


@dataclass(frozen=True)
class SessionEnded:
    """The session is over; ``error`` says why when it did not end on request."""

    transcript: TranscriptResult
    error: str | None = None


LiveEvent = SpeechStarted | SpeechStopped | Hypothesis | Utterance | SessionEnded


class SessionClosed(Exception):
    """Audio sent to a session that has ended (or past its length limit)."""


@dataclass
class WindowStats:
    """How the session's windows went (for metrics and the benchmark)."""

    sent: int = 0
    answered: int = 0
    missed: int = 0
    #: Seconds from sending each of the latest windows to its answer (bounded).
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_KEPT))
    #: The daemons' own time per answered window (the rest of the latency is transport).
    compute: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_KEPT))


class LiveSession:
    """Feeds audio in, gets :data:`LiveEvent` out (see the module's docstring)."""

    def __init__(
        self,
        session_id: str,
        options: SessionOptions,
        client: LiveClient,
        limits: LiveLimits,
        *,
        on_window: Callable[[str, float | None], None] | None = None,
        on_event: Callable[[LiveSession, LiveEvent], None] | None = None,
    ) -> None:
        self.id = session_id
        self.options = options
        self._client = client
        self._limits = limits
        self._on_window = on_window
        self._on_event = on_event
        self._audio = bytearray()
        #: Session time of the first byte of ``_audio``.
        self._start = 0.0
        self._received = 0.0
        self._sent_until = 0.0
        self._input_done = False
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._agreement = LocalAgreement()
        #: Committed words of the utterance in progress start at this index.
        self._utterance_from = 0
        self._utterances: list[Utterance] = []
        self._in_speech = False
        #: New audio to wait for before the next window (shorter when speech just stopped).
        self._next_step = limits.step
        self._end_silence = options.end_silence or limits.end_silence
        #: Where the last utterance ended (session seconds).
        self._last_stop = 0.0
        #: Where the utterance in progress started (session seconds).
        self._speech_from = 0.0
        self._language: str | None = options.language
        self._events: asyncio.Queue[LiveEvent | None] = asyncio.Queue()
        self.stats = WindowStats()
        self.ended: SessionEnded | None = None
        self._task: asyncio.Task[None] | None = None

    # -- input --------------------------------------------------------------

    @property
    def received(self) -> float:
        """Seconds of audio received so far."""
        return self._received

    async def feed(self, pcm: bytes) -> None:
        """Add 16 kHz mono 16-bit PCM; waits while a window's worth is still unsent."""
        if self._input_done or self.ended is not None:
            raise SessionClosed("the session has ended")
        if len(pcm) % 2:
            raise ValueError("16-bit PCM has an even number of bytes")
        seconds = len(pcm) / BYTES_PER_SECOND
        if self._received + seconds > self._limits.max_seconds:
            raise SessionClosed(f"a session may last {self._limits.max_seconds:.0f} s of audio")
        # Backpressure, not a buffer that grows: a client faster than the daemons
        # waits here (its socket fills) until the window moved on.
        while len(self._audio) / BYTES_PER_SECOND >= self._limits.max_window + self._limits.step:
            self._room.clear()
            await self._room.wait()
            if self.ended is not None:
                raise SessionClosed("the session has ended")
        self._audio += pcm
        self._received += seconds
        self._arrived.set()

    def finish(self) -> None:
        """No more audio: the last window is sent, everything committed, the session ends."""
        self._input_done = True
        self._arrived.set()

    # -- output -------------------------------------------------------------

    def start(self) -> None:
        """Start asking daemons (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"live-{self.id}")

    async def events(self) -> AsyncIterator[LiveEvent]:
        """What happens, in order, until (and including) :class:`SessionEnded`."""
        while (event := await self._events.get()) is not None:
            yield event

    async def close(self) -> None:
        """Stop at once (the client went away): nothing more is sent to daemons."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.ended is None:
            self._end("closed before the end of its audio")

    def _emit(self, event: LiveEvent) -> None:
        if self._on_event is not None:
            self._on_event(self, event)
        self._events.put_nowait(event)

    # -- the loop -----------------------------------------------------------

    async def _run(self) -> None:
        misses = 0
        try:
            while True:
                await self._wait_for_audio()
                if self._input_done and self._received <= self._sent_until:
                    break  # every byte was in a window that got its answer
                sent_before = self._sent_until
                # After a miss, wait longer: the daemons are slower than the window
                # timeout right now, and the next window is bigger, not smaller.
                reply = await self._ask(self._limits.window_timeout * min(1 + misses, 4))
                if reply is None:
                    misses += 1
                    if misses >= self._limits.max_misses:
                        self._end(f"no daemon answered {misses} windows in a row")
                        return
                    self._sent_until = sent_before  # ask again at once, any daemon
                    continue
                misses = 0
                if reply.error is not None:
                    self._end(f"the daemon refused a window: {reply.error}")
                    return
                self._apply(reply)
        except LiveUnavailable as exc:
            self._end(str(exc))
            return
        self._complete_utterance(self._start + len(self._audio) / BYTES_PER_SECOND, final=True)
        self._end(None)

    async def _wait_for_audio(self) -> None:
        step = self._next_step
        while not self._input_done and self._received - self._sent_until < step:
            self._arrived.clear()
            await self._arrived.wait()

    async def _ask(self, wait: float) -> LiveReply | None:
        window = bytes(self._audio)
        self._sent_until = self._received
        options = WindowOptions(
            session=self.id,
            language=self._language,
            task=self.options.task,
            prompt=self._prompt(),
        )
        self.stats.sent += 1
        started = time.monotonic()
        try:
            reply = await self._client.transcribe(self.options.model, window, options, wait=wait)
        except LiveTimeout:
            self.stats.missed += 1
            if self._on_window is not None:
                self._on_window("missed", None)
            return None
        latency = time.monotonic() - started
        self.stats.answered += 1
        self.stats.latencies.append(latency)
        self.stats.compute.append(reply.compute_s)
        if self._on_window is not None:
            self._on_window("answered", latency)
        return reply

    def _prompt(self) -> str | None:
        """The client's own prompt only (names, spelling), not the committed text.

        Measured on 39 s of mixed speech with tiny.en (benchmark notes in docs/benchmarks.md):
        the committed text as prompt raised the WER against offline from 2.6 to 7.7
        points. It carries a mistake on into every later window, and tiny models
        repeat it back into silence; the audio kept before each new utterance
        (``LiveLimits.context``) gives Whisper that context without either harm.
        """
        return (self.options.prompt or "").strip()[-MAX_PROMPT_CHARS:] or None

    def _apply(self, reply: LiveReply) -> None:
        """Commit what two answers agree on; end utterances on silence; trim the window."""
        offset = self._start
        window_end = offset + reply.duration
        if reply.language and self._language is None:
            self._language = reply.language  # keep the language steady from now on
        speech = [(offset + a, offset + b) for a, b in reply.speech]
        words = self._heard_words(reply, speech)
        self._notice_speech_start(speech)
        until = window_end - self._limits.hold
        if self._in_speech and window_end - self._speech_from < self._limits.settle:
            until = float("-inf")  # too little of this utterance heard yet to commit
        committed = self._agreement.insert(words, until=until)
        self._emit(Hypothesis(committed, self._agreement.tail))
        self._after_speech(speech, window_end, reply.duration)
        self._trim_for_length(window_end)

    def _heard_words(self, reply: LiveReply, speech: list[tuple[float, float]]) -> list[TimedWord]:
        """The answer's words in session time, without those the VAD heard no speech under.

        Those are Whisper filling silence. Overlap, not the start: Whisper often starts
        the first word after a pause early.
        """
        offset = self._start
        words = [
            TimedWord(offset + w.start, offset + w.end, w.word, w.probability) for w in reply.words
        ]
        return [w for w in words if any(w.start <= b + 0.3 and w.end >= a - 0.3 for a, b in speech)]

    def _notice_speech_start(self, speech: list[tuple[float, float]]) -> None:
        """Open an utterance when speech is heard after the last one ended."""
        # The window keeps audio from before the last utterance ended (context):
        # only speech after that end starts a new one.
        fresh_speech = [(a, b) for a, b in speech if b > self._last_stop + 0.05]
        if fresh_speech and not self._in_speech:
            self._in_speech = True
            self._speech_from = max(fresh_speech[0][0], self._last_stop)
            self._emit(SpeechStarted(round(self._speech_from, 3)))

    def _after_speech(
        self, speech: list[tuple[float, float]], window_end: float, duration: float
    ) -> None:
        """Close the utterance after enough silence, and choose when to look next."""
        silent_for = window_end - speech[-1][1] if speech else duration
        self._next_step = self._limits.step
        if self.options.vad and self._in_speech and 0 < silent_for < self._end_silence:
            # Speech may just have stopped: look again as soon as enough silence is in,
            # not a whole step later, so the utterance completes promptly.
            self._next_step = max(0.2, self._end_silence - silent_for + 0.05)
        if self.options.vad and self._in_speech and silent_for >= self._end_silence:
            stop = speech[-1][1] if speech else window_end - silent_for
            self._last_stop = stop
            self._emit(SpeechStopped(round(stop, 3)))
            self._complete_utterance(stop, final=False)
            self._trim(stop - self._limits.context)
        elif not speech and not self._agreement.tail:
            # Nothing but silence: keep a moment of it, in case speech starts at the edge.
            self._trim(window_end - 1.0)

    def _complete_utterance(self, stop: float, *, final: bool) -> None:
        """Commit the tentative words and close the utterance in progress (if any words)."""
        flushed = self._agreement.flush()
        if flushed:
            self._emit(Hypothesis(flushed, []))
        words = self._agreement.committed[self._utterance_from :]
        self._utterance_from = len(self._agreement.committed)
        if final and self._in_speech:
            self._emit(SpeechStopped(round(stop, 3)))
        self._in_speech = False
        if words:
            utterance = Utterance(len(self._utterances), words[0].start, words[-1].end, words)
            self._utterances.append(utterance)
            self._emit(utterance)

    def _trim(self, time_s: float) -> None:
        """Drop the audio before ``time_s`` (session seconds) from the window."""
        cut = int((time_s - self._start) * SAMPLE_RATE) * 2
        if cut <= 0:
            return
        cut = min(cut, len(self._audio))
        del self._audio[:cut]
        self._start += cut / BYTES_PER_SECOND
        self._agreement.forget_before(self._start)
        self._room.set()

    def _trim_for_length(self, window_end: float) -> None:
        length = window_end - self._start
        if length > self._limits.trim_after and self._agreement.committed_end > self._start:
            self._trim(self._agreement.committed_end)
        if window_end - self._start > self._limits.max_window:
            # Still too long: nothing agrees (noise, or one endless word). Take the
            # tail as it stands rather than let the window outgrow Whisper's 30 s.
            self._complete_utterance(window_end, final=False)
            self._trim(window_end - self._limits.step)

    def _end(self, error: str | None) -> None:
        if self.ended is not None:
            return
        self.ended = SessionEnded(self.transcript(), error)
        self._room.set()
        if error is not None:
            log.warning("live.session_failed", session=self.id, error=error)
        self._emit(self.ended)
        self._events.put_nowait(None)

    def transcript(self) -> TranscriptResult:
        """The committed utterances as a job result."""
        segments = [
            Segment(
                id=u.index,
                start=round(u.start, 3),
                end=round(u.end, 3),
                text=" " + u.text,
                words=[
                    Word(start=w.start, end=w.end, word=w.text, probability=w.probability)
                    for w in u.words
                ],
            )
            for u in self._utterances
        ]
        return TranscriptResult(
            text=" ".join(u.text for u in self._utterances).strip(),
            language=self._language,
            duration=round(self._received, 3),
            model=self.options.model,
            task=self.options.task,
            segments=segments,
        )
