"""WhisperLive's own client (the ``whisper-live`` package) against a real gateway and daemon.

Nobody here wrote the client: ``pip install --no-deps whisper-live`` (deploy/local/bootstrap),
so these tests hold the gateway to the protocol as WhisperLive's code speaks it. Hostile
frames come from a plain websocket, since the real client never sends them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import websockets
from faster_whisper import decode_audio
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stack import JFK, Gateway, Stack, normalise

whisper_live_client = pytest.importorskip(
    "whisper_live.client", reason="pip install --no-deps whisper-live (deploy/local/bootstrap)"
)

pytestmark = pytest.mark.integration

KEY = "wl-key-0123456789"
OTHER = "wl-key-other-987654"
#: The real client's own chunk (TranscriptionTeeClient.chunk): 4096 samples, 256 ms.
CHUNK = 4096
#: What tiny.en hears in jfk.flac in every live run (one heard "Ask not! Yeah." for "ask not").
WORDS = "what your country can do for you"


def address(gw: Gateway) -> tuple[str, int]:
    """Host and port, as WhisperLive's clients take them."""
    parts = urlsplit(gw.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def ws_url(gw: Gateway, query: str = "") -> str:
    return gw.url.replace("http://", "ws://") + "/" + query


@pytest.fixture
def heard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every message the real clients receive, decoded (their own handler still runs)."""
    messages: list[dict[str, Any]] = []
    original = whisper_live_client.Client.on_message

    def spy(self: Any, ws: Any, message: str) -> None:
        messages.append(json.loads(message))
        original(self, ws, message)

    monkeypatch.setattr(whisper_live_client.Client, "on_message", spy)
    yield messages


def jfk_float32() -> np.ndarray:
    samples: np.ndarray = decode_audio(str(JFK), sampling_rate=16000)
    return samples.astype(np.float32)


def stream_jfk(host: str, port: int | str, pace: float = 1.0) -> tuple[list[str], Any]:
    """jfk.flac through StreamingTranscriptionClient at ``pace`` x real time; committed texts."""
    committed: list[str] = []
    client = whisper_live_client.StreamingTranscriptionClient(
        host,
        port,
        model="small",  # what WhisperLive users ask for: the gateway uses its own default
        on_committed_transcript=lambda text, _segments: committed.append(text),
    )
    samples = jfk_float32()
    with client:
        for i in range(0, len(samples), CHUNK):
            chunk = samples[i : i + CHUNK]
            client.send_array(chunk)
            time.sleep(len(chunk) / 16000 / pace)
    return committed, client


async def hostile(url: str, *frames: str | bytes, ready: bool = False) -> tuple[list[Any], int]:
    """Send ``frames`` (after the options' SERVER_READY when ``ready``); messages and close code."""
    messages: list[Any] = []
    async with websockets.connect(url) as ws:
        if ready:
            await ws.send(json.dumps({"uid": "h1", "model": "small", "language": "en"}))
            while not messages or messages[-1].get("message") != "SERVER_READY":
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
        for frame in frames:
            await ws.send(frame)
        try:
            while True:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return messages, exc.rcvd.code


async def job_of(gw: Gateway, job_id: str, key: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + 60
    async with gw.client(headers=headers) as client:
        while time.monotonic() < deadline:
            response = await client.get(f"/v1/jobs/{job_id}")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            if body["status"] != "processing":
                result = await client.get(f"/v1/jobs/{job_id}/result")
                body["result"] = result.json() if result.status_code == 200 else None
                return body
            await asyncio.sleep(0.2)
    raise AssertionError(f"session {job_id} still processing")


def ready_of(messages: list[dict[str, Any]], uid: str) -> dict[str, Any]:
    return next(m for m in messages if m.get("uid") == uid and m.get("message") == "SERVER_READY")


async def test_the_real_client_streams_jfk_after_hostile_frames_and_the_session_is_a_job(
    stack: Stack, heard: list[dict[str, Any]]
) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    # Frames the protocol does not allow end their own session, clearly.
    messages, code = await hostile(ws_url(gw), "this is not json")
    assert code == 1007
    assert messages[0]["status"] == "ERROR" and "JSON options" in messages[0]["message"]
    messages, code = await hostile(ws_url(gw), b"\0" * 6400, "hello", ready=True)
    assert messages[0] == {
        "uid": "h1",
        "status": "WARNING",
        "message": "model 'small' is not served here; using 'tiny.en'",
    }
    assert messages[1]["message"] == "SERVER_READY" and messages[1]["backend"] == "faster_whisper"
    assert code == 1003
    assert messages[-1]["status"] == "ERROR" and "binary" in messages[-1]["message"]
    messages, code = await hostile(ws_url(gw), b"\0" * 6, ready=True)  # not whole float32 samples
    assert code == 1007 and messages[-1]["status"] == "ERROR"

    # ...and the gateway still serves the next client: WhisperLive's, at real-time pace.
    committed, client = await asyncio.to_thread(stream_jfk, *address(gw))
    uid = client._client.uid
    assert WORDS in normalise(" ".join(committed)), committed
    ours = [m for m in heard if m.get("uid") == uid]
    assert {"uid": uid, "language": "en", "language_prob": None} in ours
    segments = [s for m in ours for s in m.get("segments", [])]
    assert any(not s["completed"] for s in segments), "no segment updated in place"
    for s in segments:
        assert isinstance(s["start"], str) and float(s["start"]) <= float(s["end"])
        assert s["text"].startswith(" ")  # Whisper's leading space, as WhisperLive sends it
    # After END_OF_AUDIO the tail is committed and the socket closed, as WhisperLive's
    # server closes it: no DISCONNECT (its client would print "due to overtime").
    assert all(s["completed"] for s in ours[-1]["segments"])
    assert not any(m.get("message") == "DISCONNECT" for m in ours)

    job_id = ready_of(heard, uid)["job_id"]
    job = await job_of(gw, job_id)
    assert job["status"] == "succeeded", job
    # A session's record says it was live (docs/api/live/index.md, "Sessions are jobs").
    assert job["options"]["live"] is True, job
    assert WORDS in normalise(job["result"]["text"])
    completed_text = " ".join(s["text"] for s in ours[-1]["segments"])
    assert normalise(job["result"]["text"]) == normalise(completed_text)


async def test_the_session_limit_answers_wait_and_idle_clients_are_closed(
    stack: Stack, heard: list[dict[str, Any]]
) -> None:
    gw = await stack.gateway(STT_LIVE_MAX_SESSIONS="1", STT_LIVE_IDLE_TIMEOUT="2")
    host, port = address(gw)
    first = await asyncio.to_thread(
        lambda: whisper_live_client.StreamingTranscriptionClient(host, port).connect()
    )
    second = whisper_live_client.StreamingTranscriptionClient(host, port)
    # "Server is full", or the close just after the WAIT (websocket-client reports a
    # server's close as an error): either way connect() gives up, as it should.
    with pytest.raises(RuntimeError):
        await asyncio.to_thread(second.connect)
    waits = [m for m in heard if m.get("uid") == second._client.uid]
    assert waits == [{"uid": second._client.uid, "status": "WAIT", "message": 1.0}]
    await asyncio.to_thread(second._client.close_websocket)
    await asyncio.to_thread(first.close)  # END_OF_AUDIO with no audio: a session all the same
    assert [m for m in heard if m.get("uid") == first._client.uid][-1]["message"] == "SERVER_READY"

    # The slot is free again. A client that then sends nothing is closed after the idle
    # timeout, its session ended as at END_OF_AUDIO.
    started = time.monotonic()
    messages, code = await hostile(ws_url(gw), ready=True)
    assert 1.5 < time.monotonic() - started < 20
    assert messages[1]["message"] == "SERVER_READY"
    assert messages[-1] == {"uid": "h1", "message": "DISCONNECT"} and code == 1000
    job = await job_of(gw, messages[1]["job_id"])
    assert job["status"] == "succeeded" and job["result"]["text"] == ""
    # Nor may a socket hold on without ever sending its options.
    messages, code = await hostile(ws_url(gw))
    assert messages == [] and code == 1007


def transcribe_file(host: str, port: str, workdir: Path) -> str:
    """TranscriptionClient on a file: WhisperLive's own file path (PyAV resampling, paced)."""
    client = whisper_live_client.TranscriptionClient(
        host,
        port,
        lang="en",
        model="small",
        mute_audio_playback=True,
        log_transcription=False,
        output_transcription_path=str(workdir / "jfk.srt"),
    )
    # It waits this long without news before END_OF_AUDIO (15 s, spinning a core).
    client.client.disconnect_if_no_response_for = 3
    text: str = client(str(JFK))
    return text


async def test_keys_are_taken_where_whisperlive_takes_them(
    stack: Stack, heard: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await stack.gateway(STT_API_KEYS=f"{KEY},{OTHER}")
    await stack.daemon()
    host, port = address(gw)
    # No key, or a wrong one: the handshake is refused, no session is opened.
    for query in ("", "?token=wrong"):
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(ws_url(gw, query)):
                pass
        assert refused.value.response.status_code == 403
    anonymous = whisper_live_client.StreamingTranscriptionClient(host, port)
    with pytest.raises(RuntimeError):
        await asyncio.to_thread(anonymous.connect)
    assert not [m for m in heard if m.get("uid") == anonymous._client.uid]

    # Browsers: the key as a subprotocol beside "bearer", which the gateway echoes.
    async with websockets.connect(ws_url(gw), subprotocols=["bearer", KEY]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"
        await ws.send(json.dumps({"uid": "b1"}))
        assert json.loads(await ws.recv())["message"] == "SERVER_READY"
        await ws.send(b"END_OF_AUDIO")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1000

    # WhisperLive's Python client has no key option, but its URL is f"ws://{host}:{port}".
    monkeypatch.chdir(tmp_path)  # it writes jfk_resampled.wav to the working directory
    text = await asyncio.to_thread(transcribe_file, host, f"{port}/?token={KEY}", tmp_path)
    assert WORDS in normalise(text), text
    assert (tmp_path / "jfk.srt").read_text().startswith("1\n")
    ready = [m for m in heard if m.get("message") == "SERVER_READY"][-1]
    job = await job_of(gw, ready["job_id"], KEY)
    assert job["status"] == "succeeded"
    # The session belongs to its key, as any job does.
    async with gw.client(headers={"Authorization": f"Bearer {OTHER}"}) as client:
        assert (await client.get(f"/v1/jobs/{ready['job_id']}")).status_code == 404
