"""OpenAI's realtime transcription API on a real gateway, with real daemons behind it.

The official ``openai`` package's realtime client connects to the gateway as it
would to OpenAI (``client.realtime.connect(extra_query={"intent": "transcription"})``)
and streams jfk.flac at real-time pace; the beta dialect (``OpenAI-Beta:
realtime=v1``, ``transcription_session.update``) is spoken with plain ``websockets``,
exactly as documented.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import openai
import pytest
import websockets
from faster_whisper import decode_audio
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stack import JFK, JFK_WORDS, Gateway, Stack, normalise

pytestmark = pytest.mark.integration

COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
#: 100 ms of 24 kHz PCM16.
CHUNK = 4800
KEY = "rt-key-0123456789"


def jfk_pcm24(silence_after: float = 2.0) -> bytes:
    """jfk.flac as OpenAI wants it: 24 kHz mono PCM16, then some silence."""
    samples = decode_audio(str(JFK), sampling_rate=24000)
    samples = np.concatenate([samples, np.zeros(int(24000 * silence_after), dtype=np.float32)])
    pcm: bytes = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    return pcm


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


def ws_url(gw: Gateway) -> str:
    url: str = gw.url.replace("http://", "ws://")
    return url + "/v1/realtime?intent=transcription"


def openai_client(gw: Gateway, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key, base_url=f"{gw.url}/v1", max_retries=0)


def items(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per item id: its deltas joined, its completed transcript, its job."""
    found: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["type"] == DELTA:
            entry = found.setdefault(event["item_id"], {"deltas": "", "transcript": None})
            entry["deltas"] += event["delta"]
        elif event["type"] == COMPLETED:
            entry = found.setdefault(event["item_id"], {"deltas": "", "transcript": None})
            entry["transcript"] = event["transcript"]
            entry["job_id"] = event["job_id"]
    return found


async def test_the_openai_client_streams_jfk_at_real_time_pace(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    events: list[dict[str, Any]] = []
    async with openai_client(gw).realtime.connect(
        extra_query={"intent": "transcription"}
    ) as connection:
        created = await connection.recv()
        assert created.type == "session.created"
        await connection.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    }
                },
            }
        )
        updated = await connection.recv()
        assert updated.type == "session.updated", updated

        async def listen() -> None:
            async for event in connection:
                events.append(json.loads(event.to_json()))

        listener = asyncio.create_task(listen())
        pcm = jfk_pcm24()
        started = time.monotonic()
        for n, offset in enumerate(range(0, len(pcm), CHUNK)):
            await connection.input_audio_buffer.append(audio=b64(pcm[offset : offset + CHUNK]))
            await asyncio.sleep(max(0.0, started + (n + 1) * 0.1 - time.monotonic()))
        # The commit ends the buffer's live session once everything is transcribed; the
        # update after it is answered only then, so its answer marks the end.
        await connection.input_audio_buffer.commit()
        await connection.session.update(session={"type": "transcription"})
        deadline = time.monotonic() + 60
        while not any(e["type"] == "session.updated" for e in events):
            assert time.monotonic() < deadline, [e["type"] for e in events]
            await asyncio.sleep(0.1)
        listener.cancel()
    kinds = [e["type"] for e in events]
    assert "error" not in kinds, events
    assert "input_audio_buffer.speech_started" in kinds
    assert "input_audio_buffer.speech_stopped" in kinds
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index(COMPLETED)
    found = items(events)
    spoken = [entry for entry in found.values() if entry["transcript"]]
    assert spoken, events
    for entry in found.values():
        # Append-only: the deltas are the transcript, never revised.
        assert entry["transcript"] is not None and entry["deltas"] == entry["transcript"]
    transcript = normalise(" ".join(entry["transcript"] for entry in spoken))
    assert "what your country can do for you" in transcript
    # Every item names the job its audio went to: one live session, one job.
    jobs = {entry["job_id"] for entry in found.values()}
    assert len(jobs) == 1
    job = await gw.wait_final(jobs.pop(), timeout=30)
    assert job["status"] == "succeeded", job
    async with gw.client() as http:
        result = (await http.get(f"/v1/jobs/{job['id']}/result")).json()
    assert JFK_WORDS in normalise(result["text"])


@asynccontextmanager
async def beta_socket(gw: Gateway, **headers: str) -> AsyncIterator[ClientConnection]:
    async with websockets.connect(
        ws_url(gw), additional_headers={"OpenAI-Beta": "realtime=v1", **headers}
    ) as ws:
        yield ws


async def next_event(ws: ClientConnection, timeout: float = 60) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return event


async def until(ws: ClientConnection, kind: str, timeout: float = 60) -> list[dict[str, Any]]:
    seen = []
    while True:
        seen.append(await next_event(ws, timeout))
        if seen[-1]["type"] == kind:
            return seen


async def test_manual_commits_and_bad_events_in_the_beta_dialect(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    async with beta_socket(gw) as ws:
        assert (await next_event(ws))["type"] == "transcription_session.created"
        await ws.send(
            json.dumps(
                {
                    "type": "transcription_session.update",
                    "session": {
                        "input_audio_format": "pcm16",
                        "input_audio_transcription": {"model": "whisper-1", "prompt": ""},
                        "turn_detection": None,
                    },
                }
            )
        )
        updated = await next_event(ws)
        assert updated["type"] == "transcription_session.updated"
        assert updated["session"]["turn_detection"] is None
        # Bad events: an error each, in OpenAI's shape; the session goes on.
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "no!base64"}))
        error = await next_event(ws)
        assert error["type"] == "error" and error["error"]["param"] == "audio"
        await ws.send(json.dumps({"type": "response.create", "event_id": "evt_x"}))
        error = await next_event(ws)
        assert error["error"]["code"] == "invalid_value"
        assert error["error"]["event_id"] == "evt_x"
        await ws.send("not json")
        assert (await next_event(ws))["error"]["code"] == "invalid_json"
        pcm = jfk_pcm24(silence_after=0.5)
        for offset in range(0, len(pcm), CHUNK * 5):  # twice real time: backpressure decides
            append = {
                "type": "input_audio_buffer.append",
                "audio": b64(pcm[offset : offset + CHUNK * 5]),
            }
            await ws.send(json.dumps(append))
            await asyncio.sleep(0.25)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = await until(ws, COMPLETED, timeout=90)
    kinds = [e["type"] for e in events]
    assert "input_audio_buffer.speech_started" not in kinds  # no turn detection: no VAD events
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    created = next(e for e in events if e["type"] == "conversation.item.created")
    completed = events[-1]
    assert committed["item_id"] == created["item"]["id"] == completed["item_id"]
    assert committed["previous_item_id"] is None
    deltas = "".join(e["delta"] for e in events if e["type"] == DELTA)
    assert deltas == completed["transcript"]
    assert "what your country can do for you" in normalise(completed["transcript"])
    job = await gw.wait_final(completed["job_id"], timeout=30)
    assert job["status"] == "succeeded"


async def test_the_session_limit_refuses_a_second_client(stack: Stack) -> None:
    gw = await stack.gateway(STT_LIVE_MAX_SESSIONS="1")
    silence = b64(bytes(CHUNK * 2))
    async with beta_socket(gw) as first:
        await next_event(first)
        # Audio opens the first client's live session: the gateway is now full.
        await first.send(json.dumps({"type": "input_audio_buffer.append", "audio": silence}))
        await asyncio.sleep(0.5)
        async with beta_socket(gw) as second:
            refused = await next_event(second)
            with pytest.raises(ConnectionClosed) as closed:
                await next_event(second)
        assert refused["type"] == "error"
        assert refused["error"]["code"] == "session_limit_reached"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # The first client is untouched.
        await first.send(json.dumps({"type": "input_audio_buffer.clear"}))
        assert (await next_event(first))["type"] == "input_audio_buffer.cleared"
    # Its session ended with its connection: the next client gets in.
    async with beta_socket(gw) as third:
        assert (await next_event(third))["type"] == "transcription_session.created"


async def test_keys_are_required_when_configured(stack: Stack) -> None:
    gw = await stack.gateway(STT_API_KEYS=KEY)
    for key in (None, "wrong"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with pytest.raises(InvalidStatus) as refused:
            async with beta_socket(gw, **headers):
                pass
        assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        async with openai_client(gw, "wrong").realtime.connect(
            extra_query={"intent": "transcription"}
        ) as connection:
            await connection.recv()
    async with openai_client(gw, KEY).realtime.connect(
        extra_query={"intent": "transcription"}
    ) as connection:
        assert (await connection.recv()).type == "session.created"
