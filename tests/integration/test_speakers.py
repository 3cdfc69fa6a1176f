"""diarize=channels: one speaker per channel, one time-ordered transcript."""

from __future__ import annotations

from pathlib import Path

import pytest

from audiofiles import two_speakers
from stack import HOTWORDS, JFK, JFK_WORDS, Stack, normalise

pytestmark = pytest.mark.integration


async def test_stereo_call_gets_one_speaker_per_channel(stack: Stack, tmp_path: Path) -> None:
    second_start, _ = two_speakers(JFK, HOTWORDS, tmp_path / "call.wav")
    gw = await stack.gateway()
    await stack.daemon()
    job = await gw.submit(tmp_path / "call.wav", diarize="channels")
    final = await gw.wait_final(job["id"])
    assert final["status"] == "succeeded", final
    async with gw.client() as client:
        result = (await client.get(f"/v1/jobs/{job['id']}/result")).json()
        srt = (await client.get(f"/v1/jobs/{job['id']}/result", params={"format": "srt"})).text
    segments = result["segments"]
    speakers = [s["speaker"] for s in segments]
    assert set(speakers) == {"channel_0", "channel_1"}
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts)
    first = " ".join(s["text"] for s in segments if s["speaker"] == "channel_0")
    second = " ".join(s["text"] for s in segments if s["speaker"] == "channel_1")
    assert JFK_WORDS in normalise(first)
    assert "comfy" in normalise(second) and "country" not in normalise(second)
    assert min(s["start"] for s in segments if s["speaker"] == "channel_1") >= second_start - 0.5
    assert "channel_1: " in srt


async def test_without_diarize_a_stereo_file_is_mixed_down(stack: Stack, tmp_path: Path) -> None:
    two_speakers(JFK, HOTWORDS, tmp_path / "call.wav")
    gw = await stack.gateway()
    await stack.daemon()
    job = await gw.submit(tmp_path / "call.wav")
    await gw.wait_final(job["id"])
    async with gw.client() as client:
        result = (await client.get(f"/v1/jobs/{job['id']}/result")).json()
    assert all(s.get("speaker") is None for s in result["segments"])
    assert JFK_WORDS in normalise(result["text"])
