"""WhisperLive's websocket protocol on ``/``: its clients stream to the gateway as to its server.

As ``whisper_live`` 0.10.0 speaks it (``client.py``, ``server.py``, ``backend/base.py``):
the first message is the JSON options (``uid``, ``language``, ``task``, ``model``,
``use_vad``, ``send_last_n_segments``, ``initial_prompt``, ``audio_format``...); then
binary messages of 16 kHz mono audio, float32 unless ``audio_format`` says ``int16`` or
``uint8``, and the bytes ``END_OF_AUDIO``. Every answer carries the client's ``uid``:
``{"message": "SERVER_READY", "backend"}``, ``{"segments": [{"start", "end", "text",
"completed"}]}`` with times as ``"%.3f"`` strings, ``{"language", "language_prob"}``,
``{"status": "WAIT" | "ERROR" | "WARNING", "message"}`` and ``{"message": "DISCONNECT"}``.

Completed segments are the session's utterances; the one segment not completed is the
utterance in progress (its committed words, then the tentative ones), so clients see it
change in place. Keys are taken as WhisperLive's server takes them: ``Authorization:
Bearer``, ``?token=``, or the subprotocols ``bearer, <key>`` (browsers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from array import array
from dataclasses import dataclass, field
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, WebSocket
from starlette.requests import HTTPConnection

from gateway.agreement import TimedWord
from gateway.auth import caller_owner
from gateway.livesession import (
    BYTES_PER_SECOND,
    Hypothesis,
    LiveEvent,
    LiveSession,
    SessionClosed,
    SessionEnded,
    SessionOptions,
    Utterance,
)
from gateway.livesessions import LiveRefused
from gateway.services import get_services
from stt_daemon.common.protocol import Task

router = APIRouter(tags=["WhisperLive"])
log = structlog.get_logger("gateway.whisperlive")

END_OF_AUDIO = b"END_OF_AUDIO"
#: What SERVER_READY says: WhisperLive's client keeps completed segments only from this backend.
BACKEND = "faster_whisper"
BEARER = "bearer"
#: The wait WAIT announces (minutes): sessions here end with their audio, not at a set time.
RETRY_MINUTES = 1.0
#: Most completed segments one message repeats (``send_last_n_segments`` is capped here).
MAX_LAST_N = 100
#: Options WhisperLive serves that this gateway does not: a WARNING names them.
UNSUPPORTED = ("enable_translation", "enable_diarization", "hotwords", "known_speakers")
#: Close codes: unsupported data (a text frame), bad data (the options, odd audio), server error.
CLOSE_UNSUPPORTED, CLOSE_BAD_DATA, CLOSE_ERROR, CLOSE_TRY_LATER = 1003, 1007, 1011, 1013
#: Audio is fed to the session a second at a time, so backpressure holds per second.
FEED_BYTES = BYTES_PER_SECOND


class OptionsError(ValueError):
    """The first message is not WhisperLive options."""


@dataclass(frozen=True)
class ClientOptions:
    """What a WhisperLive client asked for, validated; ``model`` is one served here."""

    uid: str | None
    session: SessionOptions
    send_last_n: int = 10
    audio_format: str = "float32"
    word_timestamps: bool = False
    warnings: tuple[str, ...] = ()


def _text(options: dict[str, Any], name: str, limit: int) -> str | None:
    value = options.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise OptionsError(f"{name} must be a string of at most {limit} characters")
    return value


def _json_object(raw: str | bytes | None) -> dict[str, Any]:
    """The first message as a JSON object, or OptionsError."""
    try:
        options = json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        options = None
    if not isinstance(options, dict):
        raise OptionsError("the first message must be the JSON options (uid, language, ...)")
    return options


def _model(options: dict[str, Any], models: list[str]) -> tuple[str, list[str]]:
    """The model to use, and warnings for what was asked and is not served here."""
    requested = _text(options, "model", 200)
    warnings = [f"{name} is not offered here" for name in UNSUPPORTED if options.get(name)]
    if requested is not None and requested not in models:
        # WhisperLive clients name sizes ("small"); the gateway serves what it serves.
        warnings.append(f"model {requested!r} is not served here; using {models[0]!r}")
    return (requested if requested in models else models[0]), warnings


def parse_options(raw: str | bytes | None, models: list[str]) -> ClientOptions:
    """The options message, or OptionsError saying what is wrong with it."""
    options = _json_object(raw)
    language = _text(options, "language", 8)
    if language is not None and len(language) < 2:
        raise OptionsError("language must be a language code such as 'en'")
    task = options.get("task") or "transcribe"
    if task not in ("transcribe", "translate"):
        raise OptionsError("task must be 'transcribe' or 'translate'")
    last_n = options.get("send_last_n_segments", 10)
    if isinstance(last_n, bool) or not isinstance(last_n, int) or last_n < 1:
        raise OptionsError("send_last_n_segments must be a positive integer")
    audio_format = options.get("audio_format") or "float32"
    if audio_format not in ("float32", "int16", "uint8"):
        raise OptionsError(f"unsupported audio_format: {audio_format!r}")
    use_vad = options.get("use_vad", True)
    model, warnings = _model(options, models)
    session = SessionOptions(
        model=model,
        language=language,
        task=Task(task),
        prompt=_text(options, "initial_prompt", 2000),
        vad=use_vad is not False,
    )
    return ClientOptions(
        uid=_text(options, "uid", 200),
        session=session,
        send_last_n=min(last_n, MAX_LAST_N),
        audio_format=audio_format,
        word_timestamps=options.get("word_timestamps") is True,
        warnings=tuple(warnings),
    )


def to_pcm16(frame: bytes, audio_format: str) -> bytes:
    """16-bit little-endian PCM from a frame as the server reads it (``np.frombuffer``)."""
    if audio_format == "int16":
        if len(frame) % 2:
            raise ValueError("int16 audio has an even number of bytes")
        return frame if sys.byteorder == "little" else _swapped(array("h", frame))
    if audio_format == "uint8":
        return _little(array("h", [(b - 128) << 8 for b in frame]))
    if len(frame) % 4:
        raise ValueError("float32 audio has a multiple of 4 bytes")
    floats = array("f", frame)
    if sys.byteorder != "little":
        floats.byteswap()
    # int16 has no room past full scale: louder samples (and NaN) are clipped.
    ints = [int(x * 32767.0) if -1.0 <= x <= 1.0 else (32767 if x > 0 else -32767) for x in floats]
    return _little(array("h", ints))


def _little(samples: array[int]) -> bytes:
    return samples.tobytes() if sys.byteorder == "little" else _swapped(samples)


def _swapped(samples: array[int]) -> bytes:
    samples.byteswap()
    return samples.tobytes()


def _segment(
    words: list[TimedWord], completed: bool, start: float | None = None, timed: bool = False
) -> dict[str, Any]:
    """One segment as WhisperLive formats it (``ServeClientBase.format_segment``)."""
    segment: dict[str, Any] = {
        "start": f"{words[0].start if start is None else start:.3f}",
        "end": f"{words[-1].end:.3f}",
        # Whisper's words keep their leading space, as WhisperLive's segment texts do.
        "text": "".join(w.text for w in words),
        "completed": completed,
    }
    if timed:
        segment["words"] = [
            {
                "word": w.text,
                "start": f"{w.start:.3f}",
                "end": f"{w.end:.3f}",
                "probability": round(w.probability, 4),
            }
            for w in words
        ]
    return segment


@dataclass
class SegmentView:
    """The segments a WhisperLive client sees, kept up to date from the session's events."""

    uid: str | None
    last_n: int = 10
    timed: bool = False
    completed: list[dict[str, Any]] = field(default_factory=list)
    #: Committed words of the utterance in progress, and the tentative ones after them.
    words: list[TimedWord] = field(default_factory=list)
    tail: list[TimedWord] = field(default_factory=list)
    _end: float = 0.0
    _sent: list[dict[str, Any]] | None = None

    def apply(self, event: LiveEvent) -> dict[str, Any] | None:
        """The ``segments`` message this event calls for, or None when nothing changed."""
        if isinstance(event, Hypothesis):
            self.words += event.committed
            self.tail = list(event.tail)
        elif isinstance(event, Utterance):
            # WhisperLive's client keeps a completed segment only if it starts at or after
            # the end of the one before: Whisper may start a word a little early.
            start = max(event.start, self._end)
            self.completed.append(_segment(event.words, True, start, self.timed))
            self._end = max(event.end, start)
            del self.completed[: -self.last_n]
            self.words, self.tail = [], []
        else:
            return None
        segments = list(self.completed)
        if self.words or self.tail:
            segments.append(_segment(self.words + self.tail, False, timed=self.timed))
        if not segments or segments == self._sent:
            return None
        self._sent = segments
        return {"uid": self.uid, "segments": segments}


async def whisperlive_owner(websocket: WebSocket) -> str | None:
    """The caller's owner id, with the key where WhisperLive's server looks for it."""
    key = websocket.query_params.get("token")
    offered = websocket.scope.get("subprotocols") or []
    if key is None and BEARER in offered:
        key = next((p for p in offered if p != BEARER), None)
    conn: HTTPConnection = websocket
    if key is not None and "authorization" not in websocket.headers:
        # Presented as the header the gateway's own check reads: one place decides.
        headers = [*websocket.scope["headers"], (b"authorization", f"Bearer {key}".encode())]
        conn = HTTPConnection({**websocket.scope, "headers": headers})
    return await caller_owner(conn)


WhisperLiveOwner = Annotated[str | None, Depends(whisperlive_owner)]


@router.websocket("/")
async def whisperlive(websocket: WebSocket, owner: WhisperLiveOwner) -> None:
    """A WhisperLive client's session (see the module's docstring)."""
    services = get_services(websocket)
    settings = services.settings
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=BEARER if BEARER in offered else None)
    try:
        first = await asyncio.wait_for(websocket.receive(), settings.live_idle_timeout)
    except TimeoutError:
        return await _close(websocket, CLOSE_BAD_DATA, "no options message in time")
    if first["type"] == "websocket.disconnect":
        return
    try:
        options = parse_options(first.get("text") or first.get("bytes"), settings.model_names)
    except OptionsError as exc:
        return await _refuse(websocket, None, str(exc), CLOSE_BAD_DATA)
    live = services.live
    try:
        if live is None:
            raise LiveRefused("live sessions are not available on this gateway", busy=False)
        live.check_room()
        async with live.open(options.session, owner) as session:
            await _Stream(websocket, session, options, settings.live_idle_timeout).run()
    except LiveRefused as exc:
        if live is not None and live.active >= settings.live_max_sessions:
            # As WhisperLive's full server: WAIT with minutes, then close.
            await _send(websocket, {"uid": options.uid, "status": "WAIT", "message": RETRY_MINUTES})
            return await _close(websocket, CLOSE_TRY_LATER, str(exc))
        # No broker, or no live sessions here (unknown models were mapped to the default).
        await _refuse(websocket, options.uid, str(exc), CLOSE_ERROR)


@dataclass(frozen=True)
class _Ending:
    """Why the audio stopped: ``finish`` when the session should commit what it has."""

    reason: str
    finish: bool = True
    #: The server ended it (idle, length limit): WhisperLive says DISCONNECT ("overtime").
    disconnect: bool = True
    error: str | None = None
    code: int = 1000


_GONE = _Ending("the client went away", finish=False, disconnect=False)
_ENDED = _Ending("the session ended", finish=False, disconnect=False)


class _Stream:
    """One accepted session: frames in, segments out, and how it ends."""

    def __init__(
        self, websocket: WebSocket, session: LiveSession, options: ClientOptions, idle: float
    ) -> None:
        self.websocket = websocket
        self.session = session
        self.options = options
        self.idle = idle
        self.uid = options.uid
        self.gone = False

    async def run(self) -> None:
        """Serve until the end of the audio, then say goodbye as WhisperLive does."""
        for warning in self.options.warnings:
            await self.send({"uid": self.uid, "status": "WARNING", "message": warning})
        # job_id is ours, not WhisperLive's (its client reads only "backend"): the
        # session's transcript is then at GET /v1/jobs/{job_id}.
        ready = {"uid": self.uid, "message": "SERVER_READY", "backend": BACKEND}
        await self.send({**ready, "job_id": self.session.id})
        log.info("whisperlive.session", session=self.session.id, uid=self.uid)
        sender = asyncio.create_task(self._forward())
        try:
            ending = await self._take_audio(sender)
        except BaseException:
            sender.cancel()
            raise
        if ending is not _ENDED and not ending.finish:
            # Gone, or a frame the protocol does not allow: only this session ends.
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            if ending.error is not None:
                await _refuse(self.websocket, self.uid, ending.error, ending.code)
            return
        if ending.finish:
            self.session.finish()  # the last window goes out and the tail is committed
        # Bounded by the session: a window that gets no answer is given up on.
        ended = await sender
        if ended.error is not None:
            return await _refuse(self.websocket, self.uid, ended.error, CLOSE_ERROR)
        if ending.disconnect:
            await self.send({"uid": self.uid, "message": "DISCONNECT"})
        await _close(self.websocket, 1000, ending.reason)

    async def send(self, message: dict[str, Any]) -> None:
        """Send unless the client is gone (the session still ends and is recorded)."""
        if self.gone:
            return
        try:
            await self.websocket.send_text(json.dumps(message))
        except Exception:
            self.gone = True

    async def _forward(self) -> SessionEnded:
        """The session's events as WhisperLive messages, until it ends."""
        view = SegmentView(self.uid, self.options.send_last_n, self.options.word_timestamps)
        announce = self.options.session.language is None
        async for event in self.session.events():
            if isinstance(event, SessionEnded):
                return event
            if announce and isinstance(event, Hypothesis) and (event.committed or event.tail):
                language = self.session.transcript().language
                if language:
                    # WhisperLive sends its detector's probability; the windows carry none.
                    announce = False
                    await self.send({"uid": self.uid, "language": language, "language_prob": None})
            message = view.apply(event)
            if message is not None:
                await self.send(message)
        assert self.session.ended is not None
        return self.session.ended

    async def _take_audio(self, sender: asyncio.Task[SessionEnded]) -> _Ending:
        """Feed binary frames to the session until something ends the audio."""
        while True:
            message = await self._next(sender)
            if isinstance(message, _Ending):
                return message
            if message["type"] == "websocket.disconnect":
                self.gone = True
                return _GONE
            data, text = message.get("bytes"), message.get("text")
            if data == END_OF_AUDIO or text == END_OF_AUDIO.decode():
                # After the client's END_OF_AUDIO WhisperLive's server just closes.
                return _Ending("end of audio", disconnect=False)
            if data is None:
                error = "send audio as binary messages; text is only for the options"
                return _Ending("text frame", False, False, error, CLOSE_UNSUPPORTED)
            try:
                pcm = to_pcm16(data, self.options.audio_format)
            except ValueError as exc:
                return _Ending("bad audio", False, False, str(exc), CLOSE_BAD_DATA)
            ending = await self._feed(pcm)
            if ending is not None:
                return ending

    async def _next(self, sender: asyncio.Task[SessionEnded]) -> dict[str, Any] | _Ending:
        """The next message, or why none will come (idle, or the session ended first)."""
        receive = asyncio.ensure_future(self.websocket.receive())
        done, _ = await asyncio.wait(
            {receive, sender}, timeout=self.idle, return_when=asyncio.FIRST_COMPLETED
        )
        if receive in done:
            return dict(receive.result())
        receive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receive
        return _ENDED if sender in done else _Ending(f"no audio for {self.idle:g} s")

    async def _feed(self, pcm: bytes) -> _Ending | None:
        try:
            for i in range(0, len(pcm), FEED_BYTES):
                # Waits while the daemons are behind: the client is slowed, not buffered.
                await self.session.feed(pcm[i : i + FEED_BYTES])
        except SessionClosed as exc:
            # Past STT_LIVE_MAX_SECONDS: WhisperLive's overtime, a DISCONNECT.
            return _ENDED if self.session.ended is not None else _Ending(str(exc))
        return None


async def _send(websocket: WebSocket, message: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps(message))


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        # Close reasons are at most 123 bytes.
        await websocket.close(code, reason.encode()[:123].decode(errors="ignore"))


async def _refuse(websocket: WebSocket, uid: str | None, message: str, code: int) -> None:
    """ERROR status (WhisperLive's client prints it and stops), then close."""
    log.info("whisperlive.refused", uid=uid, reason=message, code=code)
    await _send(websocket, {"uid": uid, "status": "ERROR", "message": message})
    await _close(websocket, code, message)
