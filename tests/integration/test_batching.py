"""Batched decoding (`STT_BATCH_SIZE`, the default on GPUs) reads like window-by-window decoding.

CI has no GPU; the batched pipeline is the same code on a CPU, only slower there
than jobs side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from audiofiles import long_talk
from stack import JFK, JFK_WORDS, Gateway, Stack, normalise
from wer import word_error_rate

pytestmark = pytest.mark.integration


async def transcript(gw: Gateway, audio: Path) -> dict[str, Any]:
    job = await gw.submit(audio)
    final = await gw.wait_final(job["id"], timeout=180)
    assert final["status"] == "succeeded", final
    async with gw.client() as client:
        result: dict[str, Any] = (await client.get(f"/v1/jobs/{job['id']}/result")).json()
    return result


async def test_batched_decoding_matches_window_by_window(stack: Stack, tmp_path: Path) -> None:
    talk = long_talk(tmp_path / "talk.wav", 100, tmp_path)
    gw = await stack.gateway()
    one_by_one = await stack.daemon(STT_BATCH_SIZE="0")
    expected = await transcript(gw, talk)
    await one_by_one.stop()

    batched = await stack.daemon(STT_BATCH_SIZE="8")
    loaded = next(line for line in batched.log_lines() if line.get("event") == "model.loaded")
    assert loaded["batch_size"] == 8
    result = await transcript(gw, talk)
    assert word_error_rate(expected["text"], result["text"]) <= 0.08, (expected, result)
    starts = [s["start"] for s in result["segments"]]
    assert starts == sorted(starts) and result["segments"][-1]["end"] <= 100.0
    assert JFK_WORDS in normalise((await transcript(gw, JFK))["text"])
