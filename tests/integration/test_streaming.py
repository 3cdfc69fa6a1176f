"""Streaming a job as it goes: ``stream=true`` with the official ``openai`` client, and
``GET /v1/jobs/{id}/events``, against a real broker, gateway and daemon."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest

from stack import JFK, Gateway, Stack, normalise

pytestmark = pytest.mark.integration

WORDS = "what your country can do for you"
K1 = f"k1-{uuid.uuid4().hex}"
K2 = f"k2-{uuid.uuid4().hex}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class EventReader:
    """Server-sent events as a client reads them: (event name, data) pairs."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 120) -> tuple[str | None, str]:
        """The next event (comments such as keep-alives skipped)."""
        name: str | None = None
        data: list[str] = []
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line.startswith(":"):
                    continue
                if not line:
                    if data:
                        return name, "\n".join(data)
                    continue
                field, _, value = line.partition(": ")
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
        raise AssertionError("the stream ended")

    async def all(self, timeout: float = 120) -> list[tuple[str | None, dict[str, Any]]]:
        """Every event up to the end of the stream."""
        events = []
        try:
            while True:
                name, data = await self.next(timeout)
                events.append((name, json.loads(data)))
        except AssertionError:
            return events


@asynccontextmanager
async def job_events(
    gw: Gateway, job_id: str, headers: dict[str, str] | None = None
) -> AsyncIterator[EventReader]:
    """``GET /v1/jobs/{id}/events``, answered 200 as server-sent events."""
    async with (
        httpx.AsyncClient(base_url=gw.url, timeout=180, headers=headers) as client,
        client.stream("GET", f"/v1/jobs/{job_id}/events") as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventReader(response)


async def test_openai_client_streams_deltas_then_the_text(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def transcribe() -> list[Any]:
        stream = client.audio.transcriptions.create(model="whisper-1", file=JFK, stream=True)
        return list(stream)

    events = await asyncio.to_thread(transcribe)
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and kinds.count("transcript.text.done") == 1
    assert kinds[0] == "transcript.text.delta", kinds
    deltas = "".join(e.delta for e in events[:-1])
    assert normalise(deltas) == normalise(events[-1].text)
    assert WORDS in normalise(events[-1].text)


async def test_job_events_from_queued_to_succeeded_and_for_a_late_client(stack: Stack) -> None:
    gw = await stack.gateway()
    job = await gw.submit(JFK)  # no daemon yet: the job waits, the stream sees it start
    async with job_events(gw, job["id"]) as reader:
        name, data = await reader.next()
        assert name == "job.status" and json.loads(data)["status"] == "queued"
        await stack.daemon()
        events = await reader.all()
    names = [name for name, _ in events]
    assert names[0] == "job.started" and names[-1] == "job.succeeded", names
    assert set(names[1:-1]) == {"job.progress"}, names
    progress = [data for name, data in events if name == "job.progress"]
    # tiny.en hears two segments in jfk.flac: the first comes with progress, the last
    # (the end of the audio) with the result.
    assert any(p.get("segments") for p in progress), progress
    final = events[-1][1]
    assert WORDS in normalise(final["result"]["text"])
    assert "producer" not in final and "worker" not in final

    # A client that comes after the end gets the final event at once, and the end.
    async with job_events(gw, job["id"]) as reader:
        late = await reader.all(timeout=10)
    assert [name for name, _ in late] == ["job.status", "job.succeeded"]
    assert late[0][1]["status"] == "succeeded"
    assert late[1][1]["result"]["text"] == final["result"]["text"]


async def test_a_key_streams_only_its_own_jobs(stack: Stack) -> None:
    gw = await stack.gateway(STT_API_KEYS=f"{K1},{K2}")
    async with gw.client(headers=bearer(K1)) as client:
        response = await client.post("/v1/jobs", files={"file": ("jfk.flac", JFK.read_bytes())})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        other = await client.get(f"/v1/jobs/{job_id}/events", headers=bearer(K2))
        assert other.status_code == 404 and other.json() == {"detail": "job not found"}
        nobody = await client.get(f"/v1/jobs/{job_id}/events", headers={"Authorization": ""})
        assert nobody.status_code == 401
    async with job_events(gw, job_id, bearer(K1)) as reader:
        name, data = await reader.next()
    assert name == "job.status" and json.loads(data)["id"] == job_id


async def test_streams_past_the_limit_are_refused(stack: Stack) -> None:
    gw = await stack.gateway(STT_MAX_EVENT_STREAMS="1")
    job = await gw.submit(JFK)  # no daemon: it stays queued, its stream stays open
    async with job_events(gw, job["id"]) as reader:
        assert (await reader.next())[0] == "job.status"
        async with gw.client() as client:
            refused = await client.get(f"/v1/jobs/{job['id']}/events")
        assert refused.status_code == 503
        assert "STT_MAX_EVENT_STREAMS" in refused.json()["detail"]
        assert "retry-after" in refused.headers
        client_ = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as raised:
            await asyncio.to_thread(
                client_.audio.transcriptions.create, model="whisper-1", file=JFK, stream=True
            )
        assert raised.value.status_code == 503
    # The closed stream gave its slot back.
    for _ in range(50):
        async with (
            gw.client() as client,
            client.stream("GET", f"/v1/jobs/{job['id']}/events") as again,
        ):
            if again.status_code == 200:
                break
        await asyncio.sleep(0.1)
    assert again.status_code == 200
