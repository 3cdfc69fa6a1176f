"""``stt-wyoming`` as Home Assistant meets it: a real process, a real broker, a tiny.en daemon.

The client is the ``wyoming`` package's own (``AsyncTcpClient``), as Home
Assistant's integration uses it; the raw socket is for what no client would send.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from faster_whisper import decode_audio
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from stack import JFK, Proc, Stack, normalise
from stt_daemon.localbroker import free_port

pytestmark = pytest.mark.integration

PHRASE = "what your country can do for you"
_SCRIPT = Path(sys.executable).parent / "stt-wyoming"
#: The console script of this venv (or the module, when not installed).
WYOMING = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "gateway.wyoming"]
#: Samples a chunk, as Home Assistant sends them.
SAMPLES_PER_CHUNK = 1024


async def start_wyoming(
    stack: Stack, *args: str, wait: bool = True, **env: str
) -> tuple[Proc, int]:
    """``stt-wyoming`` on a free loopback port, as the gateway's broker user."""
    port = free_port()
    argv = [*WYOMING, "--uri", f"tcp://127.0.0.1:{port}", *args]
    proc = Proc("wyoming", argv, stack._env(env, role="gateway"), stack.data_dir)
    stack.procs.append(proc)
    if wait:
        await proc.wait_for_log("wyoming.started")
        await proc.wait_for_log("live.client_started")
    return proc, port


def jfk_pcm(rate: int = 16000, channels: int = 1) -> bytes:
    """jfk.flac as 16-bit PCM at ``rate``, ``channels`` interleaved, and 1 s of silence after."""
    samples: npt.NDArray[np.float32] = decode_audio(str(JFK), sampling_rate=rate)
    samples = np.concatenate([samples, np.zeros(rate, dtype=np.float32)])
    frames = np.repeat(samples, channels)  # L R L R ...: the same voice on both sides
    return (np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes()


async def send_audio(
    client: AsyncTcpClient, pcm: bytes, rate: int, channels: int, pace: float
) -> None:
    """audio-start, chunks at ``pace`` x real time, audio-stop."""
    await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
    step = SAMPLES_PER_CHUNK * 2 * channels
    for i in range(0, len(pcm), step):
        await client.write_event(AudioChunk(rate, 2, channels, pcm[i : i + step]).event())
        await asyncio.sleep(SAMPLES_PER_CHUNK / rate / pace)
    await client.write_event(AudioStop().event())


async def read_until(client: AsyncTcpClient, last: str, timeout: float = 90) -> list[Event]:
    """Events until one of type ``last`` (or an error, which fails)."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not events or events[-1].type != last:
        event = await asyncio.wait_for(client.read_event(), deadline - time.monotonic())
        assert event is not None, f"connection closed after {[e.type for e in events]}"
        assert not Error.is_type(event.type), event.data
        events.append(event)
    return events


async def transcription(
    client: AsyncTcpClient, pcm: bytes, rate: int, channels: int, pace: float = 2.0
) -> tuple[str, list[str]]:
    """One streamed transcription: its transcript and the transcript-chunk texts before it."""
    await client.write_event(Transcribe(name="tiny.en", language="en").event())
    sender = asyncio.create_task(send_audio(client, pcm, rate, channels, pace))
    events = await read_until(client, "transcript-stop")
    await sender
    kinds = [e.type for e in events]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"]
    assert set(kinds[1:-2]) <= {"transcript-chunk"}, kinds
    chunks = [TranscriptChunk.from_event(e).text for e in events[1:-2]]
    return Transcript.from_event(events[-2]).text, chunks


async def test_describe_then_two_transcriptions_on_one_connection(stack: Stack) -> None:
    await stack.daemon()
    proc, port = await start_wyoming(stack)
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        described = await asyncio.wait_for(read_until(client, "info"), 10)
        info = Info.from_event(described[-1])
        (program,) = info.asr
        assert program.supports_transcript_streaming
        models = {m.name: m.languages for m in program.models}
        assert models["tiny.en"] == ["en"]

        # As Home Assistant sends it: 16 kHz, 16-bit, mono.
        text, chunks = await transcription(client, jfk_pcm(), 16000, 1)
        assert PHRASE in normalise(text), text
        assert chunks and "".join(chunks) == text

        # Converted on the way in: 22.05 kHz stereo, on the same connection.
        text, chunks = await transcription(client, jfk_pcm(22050, 2), 22050, 2)
        assert PHRASE in normalise(text), text
        assert "".join(chunks) == text

    await wait_for_lines(proc, "wyoming.transcription_ended", 2)
    ended = [
        line for line in proc.log_lines() if line.get("event") == "wyoming.transcription_ended"
    ]
    assert len(ended) == 2 and all(line["error"] is None for line in ended), ended
    assert [line["streaming"] for line in ended] == [True, True]
    await proc.stop()
    assert proc.popen.returncode == 0
    assert any(line.get("event") == "wyoming.stopped" for line in proc.log_lines())


async def wait_for_lines(proc: Proc, event: str, count: int, timeout: float = 30) -> None:
    """Until the process logged ``event`` ``count`` times."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(line.get("event") == event for line in proc.log_lines()) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} {event!r} within {timeout}s")


@asynccontextmanager
async def raw(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def until_closed(
    reader: asyncio.StreamReader, timeout: float = 15
) -> list[dict[str, object]]:
    """The header lines the server sends until it closes the connection."""
    lines = []
    async with asyncio.timeout(timeout):
        while line := await reader.readline():
            header = json.loads(line)
            if header.get("data_length"):
                header["data"] = json.loads(await reader.readexactly(header["data_length"]))
            lines.append(header)
    return lines


async def test_limits_and_hostile_clients_end_only_their_connection(stack: Stack) -> None:
    await stack.daemon()
    proc, port = await start_wyoming(stack, STT_LIVE_MAX_SESSIONS="1", STT_LIVE_IDLE_TIMEOUT="3")
    async with AsyncTcpClient("127.0.0.1", port) as first:
        # The one session this server may run, fed at real time while the others misbehave.
        await first.write_event(Transcribe().event())
        sender = asyncio.create_task(send_audio(first, jfk_pcm(), 16000, 1, pace=1.0))
        first_events = asyncio.create_task(read_until(first, "transcript-stop"))
        await proc.wait_for_log("live.session_opened")

        async with AsyncTcpClient("127.0.0.1", port) as second:
            await second.write_event(Transcribe().event())
            refusal = await asyncio.wait_for(second.read_event(), 10)
            assert refusal is not None and Error.is_type(refusal.type)
            assert Error.from_event(refusal).code == "busy", refusal.data
            await second.write_event(Describe().event())  # still served
            info = await asyncio.wait_for(second.read_event(), 10)
            assert info is not None and Info.is_type(info.type)

        hostile = [
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not wyoming\n",  # a TLS hello
            b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}, '
            b'"payload_length": 4}\n\x00\x00\x00\x00',  # audio before audio-start
            b'{"type": "describe", "payload_length": 1099511627776}\n',  # 1 TiB announced
            b"x" * 200_000,  # a header line that never ends
        ]
        for data in hostile:
            async with raw(port) as (reader, writer):
                writer.write(data)
                answers = await until_closed(reader)
            assert [a["type"] for a in answers] == ["error"], (data[:40], answers)
            assert answers[0]["data"]["code"] == "bad-event"  # type: ignore[index]

        async with raw(port) as (reader, _):
            started = time.monotonic()
            answers = await until_closed(reader)  # says nothing: closed after 3 s
            assert 2.5 < time.monotonic() - started < 10
            assert answers[0]["data"]["code"] == "timeout"  # type: ignore[index]

        await sender
        events = await first_events
    text = Transcript.from_event(events[-2]).text
    assert PHRASE in normalise(text), text

    # A session that gets no audio is closed after the idle timeout, its job recorded.
    await wait_for_lines(proc, "wyoming.transcription_ended", 1)  # its slot is free
    async with raw(port) as (reader, writer):
        writer.write(b'{"type": "transcribe"}\n')
        writer.write(
            b'{"type": "audio-start", "data": {"rate": 16000, "width": 2, "channels": 1}}\n'
        )
        answers = await until_closed(reader)
    assert answers[-1]["data"]["code"] == "timeout"  # type: ignore[index]
    await wait_for_lines(proc, "wyoming.transcription_ended", 2)
    assert proc.popen.poll() is None


async def test_refuses_to_start_beside_api_keys_unless_allowed(stack: Stack) -> None:
    proc, _ = await start_wyoming(stack, wait=False, STT_API_KEYS="k1,k2")
    assert await proc.wait_exit(60) == 2
    refused = [line for line in proc.log_lines() if line.get("event") == "wyoming.refused_to_start"]
    assert refused and "--allow-unauthenticated" in refused[0]["reason"]
    assert "k1" not in proc.output()

    proc, port = await start_wyoming(stack, "--allow-unauthenticated", STT_API_KEYS="k1,k2")
    assert any(line.get("event") == "wyoming.bypasses_api_keys" for line in proc.log_lines())
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        info = await asyncio.wait_for(client.read_event(), 10)
        assert info is not None and Info.is_type(info.type)
