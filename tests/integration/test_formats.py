"""Containers and codecs people upload: all decoded by PyAV and transcribed alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import pytest

from audiofiles import FORMATS, convert
from stack import HOTWORDS, JFK, JFK_WORDS, Stack, normalise

pytestmark = pytest.mark.integration


async def test_every_common_format_is_transcribed(stack: Stack, tmp_path: Path) -> None:
    files = [convert(JFK, tmp_path / f"jfk.{suffix}") for suffix in FORMATS]
    with av.open(str(tmp_path / "jfk.mp4")) as container:
        assert container.streams.video, "the mp4 must really be a video file"
    gw = await stack.gateway()
    await stack.daemon()
    jobs = {path.name: await gw.submit(path) for path in [*files, JFK, HOTWORDS]}
    finals = await asyncio.gather(*(gw.wait_final(job["id"]) for job in jobs.values()))
    async with gw.client() as client:
        for (name, job), final in zip(jobs.items(), finals, strict=True):
            assert final["status"] == "succeeded", (name, final)
            text = (await client.get(f"/v1/jobs/{job['id']}/result")).json()["text"]
            expected = "comfy" if name == "hotwords.mp3" else JFK_WORDS
            assert expected in normalise(text), (name, text)
