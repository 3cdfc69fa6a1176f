"""The original API (/translate, /status, /result, /ws/test) through the whole pipeline."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from stack import JFK, JFK_WORDS, Gateway, Stack, normalise

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]


async def _poll_status(gw: Gateway, task_id: str, want: str, timeout: float = 120) -> None:
    async with gw.client() as client:
        for _ in range(int(timeout / 0.2)):
            response = await client.get(f"/status/{task_id}")
            assert response.status_code == 200
            if response.json()["status"] == want:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{task_id} never {want}")


async def test_translate_queues_before_any_daemon_then_finishes(stack: Stack) -> None:
    gw = await stack.gateway()
    async with gw.client() as client:
        response = await client.post("/translate", files={"file": ("jfk.flac", JFK.read_bytes())})
        assert response.status_code == 202
        assert list(response.json()) == ["task_id"]
        task_id = response.json()["task_id"]

        # No daemon yet: the job waits durably in its queue.
        status = await client.get(f"/status/{task_id}")
        assert status.json() == {"status": "pending"}
        early = await client.get(f"/result/{task_id}")
        assert early.status_code == 400
        assert early.json() == {"detail": "Task has not finished yet"}

        await stack.daemon()
        await _poll_status(gw, task_id, "finished")
        result = await client.get(f"/result/{task_id}")
        assert result.status_code == 200
        assert list(result.json()) == ["result"]
        assert JFK_WORDS in normalise(result.json()["result"])


async def test_unknown_task_ids_are_404(stack: Stack) -> None:
    gw = await stack.gateway()
    async with gw.client() as client:
        for path in ("/status/nope", "/result/nope", "/v1/jobs/nope", "/v1/jobs/nope/result"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert "detail" in response.json()
        assert (await client.get("/status/nope")).json() == {"detail": "Invalid task ID"}


async def test_failed_job_result_gives_the_reason(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    async with gw.client() as client:
        response = await client.post(
            "/translate", files={"file": ("x.mp3", b"not audio at all" * 64)}
        )
        task_id = response.json()["task_id"]
        await _poll_status(gw, task_id, "failed")
        result = await client.get(f"/result/{task_id}")
    assert result.status_code == 400
    assert "not a readable audio" in result.json()["error"]


async def test_websocket_takes_audio_bytes_and_returns_a_task_id(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    ws_url = gw.url.replace("http://", "ws://") + "/ws/test"
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.send(JFK.read_bytes())
        reply = json.loads(await ws.recv())
    task_id = reply["task_id"]
    await _poll_status(gw, task_id, "finished")
    async with gw.client() as client:
        text = (await client.get(f"/result/{task_id}")).json()["result"]
    assert JFK_WORDS in normalise(text)


async def test_full_queue_answers_429_with_retry_after(stack: Stack) -> None:
    # No daemon: the queue only fills. STT_MAX_QUEUED means exactly that many jobs.
    gw = await stack.gateway(STT_MAX_QUEUED="3", STT_RETRY_AFTER="7")
    statuses = []
    async with gw.client() as client:
        for _ in range(5):
            response = await client.post("/translate", files={"file": ("a.flac", JFK.read_bytes())})
            statuses.append(response.status_code)
        assert statuses == [202, 202, 202, 429, 429]
        assert response.json() == {"detail": "Queue limit reached"}
        assert response.headers["retry-after"] == "7"
        # The resource API is refused the same way.
        response = await client.post("/v1/jobs", files={"file": ("a.flac", JFK.read_bytes())})
        assert response.status_code == 429
