"""A daemon with the stand-in engine completes real jobs through the broker and the gateway."""

from __future__ import annotations

import asyncio

import pytest

from stack import HOTWORDS, JFK, Stack

pytestmark = [pytest.mark.integration, pytest.mark.standin]


async def test_standin_daemon_completes_jobs_end_to_end(stack: Stack) -> None:
    gw = await stack.gateway(STT_ANNOUNCE_INTERVAL="0.5")
    daemon = await stack.daemon(STT_ENGINE="standin", STT_STANDIN_RTF="0.05")
    loaded = await daemon.wait_for_log("model.loaded")
    assert loaded["engine"] == "standin"
    submitted = [await gw.submit(JFK), await gw.submit(HOTWORDS), await gw.submit(JFK)]
    finals = await asyncio.gather(*(gw.wait_final(job["id"]) for job in submitted))
    assert [f["status"] for f in finals] == ["succeeded"] * 3
    async with gw.client() as client:
        result = (await client.get(f"/v1/jobs/{submitted[0]['id']}/result")).json()
        models = (await client.get("/v1/models")).json()
    # jfk.flac is 11 s long: the stand-in decoded the real audio to know that.
    assert result["text"] == "[stand-in] 11.0 s of audio"
    assert result["language"] == "en"
    assert len(result["segments"]) == 1
    assert [m["id"] for m in models["data"]] == ["tiny.en"]  # announced like a real engine
    done = [line for line in daemon.log_lines() if line.get("event") == "job.done"]
    assert len(done) == 3 and all(line["status"] == "succeeded" for line in done)
