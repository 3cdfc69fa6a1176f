"""OpenAI realtime items from a live session's events (``gateway/routes/realtime.py`` sends them).

Field names follow the ``openai`` package's typed server events
(``openai.types.realtime`` and ``openai.types.beta.realtime``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.agreement import TimedWord
from gateway.livesession import (
    Hypothesis,
    LiveEvent,
    SessionEnded,
    SpeechStarted,
    SpeechStopped,
    Utterance,
)
from gateway.openai_realtime import Event, TranscriptionConfig, new_id


@dataclass
class _Item:
    id: str
    job_id: str
    words: list[TimedWord] = field(default_factory=list)
    text: str = ""
    speech_start: float | None = None
    speech_stop: float | None = None
    committed: bool = False

    def seconds(self) -> float:
        start = self.speech_start if self.speech_start is not None else _first(self.words)
        stop = self.speech_stop if self.speech_stop is not None else _last(self.words)
        return round(max(0.0, stop - start), 3)


def _first(words: list[TimedWord]) -> float:
    return words[0].start if words else 0.0


def _last(words: list[TimedWord]) -> float:
    return words[-1].end if words else 0.0


def _logprobs(words: list[TimedWord]) -> list[Event]:
    return [
        {
            "token": w.text,
            "bytes": list(w.text.encode()),
            "logprob": math.log(max(w.probability, 1e-12)),
        }
        for w in words
    ]


class ItemTracker:
    """Turns one connection's live-session events into OpenAI's item events.

    An item is an utterance: with turn detection, speech started -> its words as
    ``delta`` events (committed words only: append-only, never revised) -> speech
    stopped -> ``input_audio_buffer.committed`` and the item's creation ->
    ``completed`` with the transcript, which is exactly the item's deltas joined.
    Without turn detection, an item is everything between two commits. Deltas
    start before the item is committed: they stream while the speaker speaks.
    """

    def __init__(self, emit: Callable[[Event], None], *, ga: bool) -> None:
        self._emit = emit
        self._ga = ga
        self.previous_item_id: str | None = None
        self._item: _Item | None = None
        self._vad = True
        self._logprobs = False
        #: Session seconds of this live session's first byte, in connection time.
        self._offset = 0.0
        self._job_id = ""
        self._discarding = False
        #: Where the last speech stopped: the next cannot start before it.
        self._floor = 0.0

    def start(self, job_id: str, config: TranscriptionConfig, offset: float) -> None:
        """A live session opened at ``offset`` seconds into the connection's audio."""
        self._job_id = job_id
        self._vad = config.vad
        self._logprobs = config.logprobs
        self._offset = offset
        self._item = None
        self._discarding = False
        self._floor = 0.0

    def commit(self) -> None:
        """The client committed the buffer: its item is committed now (created if none)."""
        self._commit(self._current())

    def discard(self) -> None:
        """The client cleared the buffer: an item not committed yet is dropped at the end."""
        self._discarding = True

    def on_event(self, event: LiveEvent) -> None:
        """One event of the live session."""
        if isinstance(event, SpeechStarted):
            if self._vad:
                self._speech_started(event.at)
        elif isinstance(event, Hypothesis):
            self._words(event.committed)
        elif isinstance(event, SpeechStopped):
            if self._vad:
                self._speech_stopped(event.at)
        elif isinstance(event, Utterance):
            if self._vad and self._item is not None:
                self._complete(self._item)
        else:
            self._ended(event)

    # -- the steps ------------------------------------------------------------

    def _current(self) -> _Item:
        if self._item is None:
            self._item = _Item(new_id("item"), self._job_id)
        return self._item

    def _ms(self, at: float) -> int:
        return round((self._offset + at) * 1000)

    def _speech_started(self, at: float) -> None:
        # The session's windows keep some audio before a stop as context, and the VAD may
        # report the previous utterance's start there: clamp, so items never overlap.
        at = max(at, self._floor)
        item = self._item
        if item is not None and item.speech_stop is not None:
            self._complete(item)  # stopped without words: its (empty) transcript
        item = self._current()
        item.speech_start = at
        self._send(
            "input_audio_buffer.speech_started", audio_start_ms=self._ms(at), item_id=item.id
        )

    def _speech_stopped(self, at: float) -> None:
        item = self._current()
        item.speech_stop = at
        self._floor = at
        self._send("input_audio_buffer.speech_stopped", audio_end_ms=self._ms(at), item_id=item.id)
        self._commit(item)

    def _words(self, words: list[TimedWord]) -> None:
        item = self._item
        if not words:
            if self._vad and item is not None and item.speech_stop is not None:
                self._complete(item)  # the window after the stop: nothing more for it
            return
        item = self._current()
        text = "".join(w.text for w in words)
        if not item.text:
            text = text.lstrip()
        item.words.extend(words)
        if not text:
            return
        item.text += text
        delta: Event = {"item_id": item.id, "content_index": 0, "delta": text}
        if self._logprobs:
            delta["logprobs"] = _logprobs(words)
        self._send("conversation.item.input_audio_transcription.delta", **delta)

    def _commit(self, item: _Item) -> None:
        if item.committed:
            return
        item.committed = True
        self._send(
            "input_audio_buffer.committed",
            item_id=item.id,
            previous_item_id=self.previous_item_id,
            job_id=item.job_id,
        )
        body = {
            "id": item.id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        if self._ga:
            self._send("conversation.item.added", item=body, previous_item_id=self.previous_item_id)
            self._send("conversation.item.done", item=body, previous_item_id=self.previous_item_id)
        else:
            self._send(
                "conversation.item.created", item=body, previous_item_id=self.previous_item_id
            )
        self.previous_item_id = item.id

    def _complete(self, item: _Item) -> None:
        self._commit(item)
        completed: Event = {
            "item_id": item.id,
            "content_index": 0,
            "transcript": item.text,
            "usage": {"type": "duration", "seconds": item.seconds()},
            "job_id": item.job_id,
        }
        if self._logprobs:
            completed["logprobs"] = _logprobs(item.words)
        self._send("conversation.item.input_audio_transcription.completed", **completed)
        self._item = None

    def _ended(self, ended: SessionEnded) -> None:
        item, self._item = self._item, None
        if item is None or (self._discarding and not item.committed):
            return
        if ended.error is None or self._discarding:
            self._complete(item)
        elif item.committed:
            error = {"type": "server_error", "code": "transcription_failed", "message": ended.error}
            self._send(
                "conversation.item.input_audio_transcription.failed",
                item_id=item.id,
                content_index=0,
                error={**error, "param": None},
                job_id=item.job_id,
            )

    def _send(self, kind: str, **fields: Any) -> None:
        self._emit({"type": kind, **fields})
