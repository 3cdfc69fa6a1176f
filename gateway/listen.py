"""``stt listen``: stream audio to the gateway's WhisperLive socket and show the words as they land.

The audio goes out as 16 kHz mono 16-bit PCM (``audio_format: int16``), at real-time
pace or, with ``fast``, as fast as the gateway takes it (it slows a sender to what its
daemons keep up with). A file is decoded with PyAV, which the daemon's faster-whisper
brings; without it, raw PCM on stdin (``-``) still works. The ``websockets`` package is
imported only here, so the rest of the client stays httpx and the standard library.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

SAMPLE_RATE = 16000
#: Audio per message: a quarter of a second (WhisperLive's client sends 256 ms).
CHUNK_BYTES = SAMPLE_RATE // 4 * 2
END_OF_AUDIO = b"END_OF_AUDIO"
PIPE_HINT = "ffmpeg -i FILE -f s16le -ac 1 -ar 16000 - | stt listen -"


class ListenError(Exception):
    """Why listening stopped: said to the user, with the exit code it deserves."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ListenOptions:
    """What the session is asked for (None: the gateway's default)."""

    model: str | None = None
    language: str | None = None
    task: str | None = None
    prompt: str | None = None
    vad: bool = True
    fast: bool = False

    def message(self) -> dict[str, Any]:
        """WhisperLive's options message."""
        return {
            "uid": str(uuid.uuid4()),
            "model": self.model,
            "language": self.language,
            "task": self.task or "transcribe",
            "initial_prompt": self.prompt,
            "use_vad": self.vad,
            "send_last_n_segments": 10,
            "audio_format": "int16",
        }


def websocket_url(http_url: str) -> str:
    """``http://host:port/prefix`` -> ``ws://host:port/prefix/`` (the WhisperLive socket)."""
    if http_url.startswith("https://"):
        rest, scheme = http_url[len("https://") :], "wss://"
    elif http_url.startswith("http://"):
        rest, scheme = http_url[len("http://") :], "ws://"
    else:
        rest, scheme = http_url, "ws://"
    return scheme + rest.rstrip("/") + "/"


def file_pcm(path: Path) -> Iterator[bytes]:
    """16 kHz mono s16le PCM decoded from any file FFmpeg reads (PyAV); opened at once."""
    try:
        import av
    except ImportError:
        raise ListenError(
            f"decoding a file needs PyAV (pip install av); or: {PIPE_HINT}", 2
        ) from None
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise ListenError(f"{path}: cannot decode: {exc}") from None
    if not container.streams.audio:
        container.close()
        raise ListenError(f"{path}: no audio stream")
    chunks = _decoded(container, av, path)
    # A file FFmpeg opens but cannot decode fails here, before a session is opened.
    first = next(chunks, None)
    if first is None:
        raise ListenError(f"{path}: no audio in it")
    return itertools.chain([first], chunks)


def _decoded(container: Any, av: Any, path: Path) -> Iterator[bytes]:
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    try:
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                yield bytes(out.planes[0])[: out.samples * 2]
        for out in resampler.resample(None):
            yield bytes(out.planes[0])[: out.samples * 2]
    except av.FFmpegError as exc:
        raise ListenError(f"{path}: cannot decode: {exc}") from None
    finally:
        container.close()


def raw_pcm(stream: IO[bytes]) -> Iterator[bytes]:
    """Raw PCM as it comes (stdin)."""
    while chunk := stream.read(CHUNK_BYTES):
        yield chunk


async def paced(source: Iterator[bytes], fast: bool) -> AsyncIterator[bytes]:
    """Whole-sample chunks of ``CHUNK_BYTES``, at real-time pace unless ``fast``."""
    pending = bytearray()
    sent = 0.0
    started = time.monotonic()
    done = False
    while not done:
        # Decoding and reading stdin block: off the event loop, so messages keep coming in.
        data = await asyncio.to_thread(next, source, None)
        done = data is None
        pending += data or b""
        while len(pending) >= CHUNK_BYTES or (done and len(pending) >= 2):
            size = min(CHUNK_BYTES, len(pending) & ~1)
            chunk = bytes(pending[:size])
            del pending[:size]
            if not fast:
                await asyncio.sleep(max(0.0, started + sent - time.monotonic()))
            sent += size / (2 * SAMPLE_RATE)
            yield chunk


@dataclass
class LiveText:
    """Committed lines as they land; on a terminal the unconfirmed tail too, redrawn in place."""

    stream: TextIO
    tty: bool = False
    _shown: deque[tuple[str, str, str]] = field(default_factory=lambda: deque(maxlen=64))
    _partial: bool = False

    def segments(self, segments: list[dict[str, Any]]) -> None:
        """Show a ``segments`` message: new completed segments, then the one in progress."""
        for segment in segments:
            key = (str(segment.get("start")), str(segment.get("end")), str(segment.get("text")))
            if segment.get("completed") and key not in self._shown:
                self._shown.append(key)
                self._line(str(segment.get("text", "")).strip())
        last = segments[-1] if segments else None
        if self.tty and last is not None and not last.get("completed"):
            self._draw(str(last.get("text", "")).strip())

    def clear(self) -> None:
        """Take the tentative line away (the end)."""
        if self.tty and self._partial:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._partial = False

    def _line(self, text: str) -> None:
        prefix = "\r\x1b[2K" if self.tty and self._partial else ""
        self.stream.write(f"{prefix}{text}\n")
        self.stream.flush()
        self._partial = False

    def _draw(self, text: str) -> None:
        width = max(20, _columns(self.stream) - 1)
        if len(text) > width:  # the newest words matter: cut at the front
            text = "…" + text[-(width - 1) :]
        self.stream.write(f"\r\x1b[2K{text}")
        self.stream.flush()
        self._partial = True


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    # A pseudo-terminal with no size set says 0.
    return columns if columns >= 20 else 80


async def listen(
    url: str,
    source: Iterator[bytes],
    options: ListenOptions,
    text: LiveText,
    *,
    api_key: str | None = None,
    say: Callable[[str], None] = print,
) -> str | None:
    """Stream ``source``; show what comes back. The session's job id (None if not said)."""
    try:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus
    except ImportError:
        raise ListenError(
            "stt listen needs websockets: pip install 'stt-jobs[client]'", 2
        ) from None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    target = websocket_url(url)
    try:
        async with connect(target, additional_headers=headers, open_timeout=30) as ws:
            job_id, problem = await _session(ws, source, options, text, say)
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = " (a missing or wrong API key?)" if status in (401, 403) else ""
        raise ListenError(f"the gateway refused the websocket: HTTP {status}{hint}") from None
    except ConnectionClosed as exc:
        reason = exc.rcvd.reason if exc.rcvd is not None else str(exc)
        raise ListenError(f"the connection closed: {reason or 'no reason given'}") from None
    except OSError as exc:
        raise ListenError(f"cannot reach the gateway at {target} ({exc})", 2) from None
    if isinstance(problem, ListenError):
        raise problem
    return job_id


async def _session(
    ws: Any,
    source: Iterator[bytes],
    options: ListenOptions,
    text: LiveText,
    say: Callable[[str], None],
) -> tuple[str | None, BaseException | None]:
    """Options, then audio out and text in at once, until the gateway closes.

    The job id, and the sender's problem: a ListenError about the audio, else none
    (or its cancellation, when the gateway closed first).
    """
    await ws.send(json.dumps(options.message()))
    job_id = await _ready(ws, say)
    sender = asyncio.create_task(_send_audio(ws, source, options.fast))
    try:
        async for raw in ws:
            _show(json.loads(raw), text, say)
    finally:
        text.clear()
        sender.cancel()
    problem = (await asyncio.gather(sender, return_exceptions=True))[0]
    return job_id, problem


async def _ready(ws: Any, say: Callable[[str], None]) -> str | None:
    """Wait for SERVER_READY; WAIT and ERROR become ListenError."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 60))
        status = message.get("status")
        if status == "WAIT":
            minutes = message.get("message")
            raise ListenError(
                f"the gateway runs all the live sessions it may; retry in ~{minutes} min"
            )
        if status == "ERROR":
            raise ListenError(f"the gateway refused the session: {message.get('message')}")
        if status == "WARNING":
            say(f"the gateway warns: {message.get('message')}")
        if message.get("message") == "SERVER_READY":
            job_id = message.get("job_id")
            if job_id:
                say(f"session {job_id} (afterwards: stt result {job_id})")
            return str(job_id) if job_id else None


async def _send_audio(ws: Any, source: Iterator[bytes], fast: bool) -> ListenError | None:
    """Send the audio, then END_OF_AUDIO; a decoding error is returned, after the end."""
    from websockets.exceptions import ConnectionClosed

    problem = None
    try:
        try:
            async for chunk in paced(source, fast):
                await ws.send(chunk)  # waits while the gateway holds back: its backpressure
        except ListenError as exc:
            problem = exc  # what was sent is still transcribed
        await ws.send(END_OF_AUDIO)
    except ConnectionClosed:
        pass  # the gateway ended the session: its reason comes with the close
    return problem


def _show(message: dict[str, Any], text: LiveText, say: Callable[[str], None]) -> None:
    if "segments" in message:
        text.segments(message["segments"])
    elif message.get("status") == "ERROR":
        text.clear()
        raise ListenError(f"the gateway ended the session: {message.get('message')}")
    elif message.get("status") == "WARNING":
        say(f"the gateway warns: {message.get('message')}")
    elif message.get("message") == "DISCONNECT":
        say("the gateway ended the session (its idle or length limit)")
    elif "language" in message:
        say(f"language: {message['language']}")
