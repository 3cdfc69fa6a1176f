"""Live sockets are bounded by the session limit, not by websocket upload slots.

Upload slots (``STT_WS_MAX_UPLOADS``) bound how many websockets may be sending a whole
recording at once; a live socket sends audio for as long as its session lasts, so it
would hold a slot throughout. With two slots, a third live client was never read
while the first two streamed. Each live socket here sends far more than the slot-free
16 KB, all three at once, and each must be answered while all three are streaming.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets
from faster_whisper import decode_audio

from stack import JFK, Stack

pytestmark = pytest.mark.integration

CHUNK_S = 0.25


async def one_client(url: str, uid: str, audio: np.ndarray, streaming: asyncio.Barrier) -> bool:
    """WhisperLive-protocol client streaming at real-time pace; answered mid-stream?"""
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"uid": uid, "language": "en", "model": "tiny.en"}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert ready.get("message") == "SERVER_READY", ready
        await streaming.wait()  # all three are connected: stream together
        answered = asyncio.Event()

        async def listen() -> None:
            async for message in ws:
                if "segments" in json.loads(message):
                    answered.set()

        listener = asyncio.create_task(listen())
        step = int(CHUNK_S * 16000)
        for offset in range(0, len(audio), step):
            await ws.send(audio[offset : offset + step].tobytes())
            await asyncio.sleep(CHUNK_S)
        mid_stream = answered.is_set()
        await ws.send(b"END_OF_AUDIO")
        await asyncio.wait_for(listener, 60)
        return mid_stream


async def test_more_live_sockets_than_upload_slots_all_stream(stack: Stack) -> None:
    gw = await stack.gateway(STT_WS_MAX_UPLOADS="2", STT_LIVE_MAX_SESSIONS="4")
    await stack.daemon()
    samples = decode_audio(str(JFK), sampling_rate=16000).astype(np.float32)  # 11 s each
    url = gw.url.replace("http://", "ws://") + "/"
    streaming = asyncio.Barrier(3)
    answered = await asyncio.wait_for(
        asyncio.gather(*(one_client(url, f"c{i}", samples, streaming) for i in range(3))), 180
    )
    assert answered == [True, True, True]
