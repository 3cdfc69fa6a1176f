"""Speaker options on ``/v1/jobs`` and results with speakers fetched from it.

The real jobs router, error handlers and SQLite status store; a fake broker (no RabbitMQ).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from openai.types.audio import TranscriptionDiarized

from gateway.config import GatewaySettings
from gateway.errors import install_error_handlers
from gateway.fleet import Fleet
from gateway.routes import jobs
from gateway.services import Services
from gateway.store import StatusStore, open_store
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    Diarize,
    EventType,
    JobEvent,
    JobMessage,
    Segment,
    SpeakerTurn,
    TranscriptResult,
)


class FakeBroker:
    """Takes every job (and does nothing with it)."""

    ready = True

    def __init__(self) -> None:
        self.published: list[JobMessage] = []

    async def publish_job(self, job: JobMessage) -> None:
        self.published.append(job)


@dataclass
class Gateway:
    client: httpx.AsyncClient
    store: StatusStore
    broker: FakeBroker
    blobs: Path

    async def submit(self, **fields: str) -> httpx.Response:
        files = {"file": ("call.wav", b"RIFF....WAVE")}
        return await self.client.post("/v1/jobs", files=files, data=fields)

    async def finish(self, job_id: str, result: TranscriptResult) -> None:
        """Record the job's result as the daemon's final event would."""
        record = await self.store.get(job_id)
        assert record is not None
        event = JobEvent(
            event=EventType.SUCCEEDED, job_id=job_id, result=result, producer=record.producer
        )
        assert await self.store.apply(event)


@pytest.fixture
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = GatewaySettings(data_dir=tmp_path, models=["tiny.en"])
    store = open_store(settings.resolved_status_url)
    broker = FakeBroker()
    app = FastAPI()
    app.include_router(jobs.router)
    install_error_handlers(app, retry_after=settings.retry_after)
    app.state.services = Services(
        settings=settings,
        blobs=BlobStore(settings.resolved_blob_url),
        store=store,
        broker=broker,  # type: ignore[arg-type]
        fleet=Fleet(settings.names),
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield Gateway(client, store, broker, tmp_path / "blobs")
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("fields", "hints"),
    [
        ({"diarize": "speakers"}, (None, None, None)),
        ({"diarize": "speakers", "num_speakers": "3"}, (3, None, None)),
        ({"diarize": "speakers", "min_speakers": "2", "max_speakers": "4"}, (None, 2, 4)),
        ({"diarize": "speakers", "min_speakers": "2", "max_speakers": "2"}, (None, 2, 2)),
        ({"diarize": "speakers", "max_speakers": "32"}, (None, None, 32)),
    ],
)
async def test_speaker_options_reach_the_broker(
    gateway: Gateway, fields: dict[str, str], hints: tuple[int | None, ...]
) -> None:
    response = await gateway.submit(**fields)
    assert response.status_code == 202, response.text
    options = gateway.broker.published[0].options
    assert options.diarize is Diarize.SPEAKERS
    assert (options.num_speakers, options.min_speakers, options.max_speakers) == hints
    assert response.json()["options"]["diarize"] == "speakers"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"diarize": "people"}, "diarize: Input should be 'none', 'channels' or 'speakers'"),
        ({"diarize": "speakers", "num_speakers": "abc"}, "num_speakers: Input should be a valid"),
        ({"diarize": "speakers", "num_speakers": "0"}, "num_speakers: Input should be greater"),
        ({"diarize": "speakers", "num_speakers": "33"}, "less than or equal to 32"),
        ({"diarize": "speakers", "min_speakers": "-1"}, "min_speakers: Input should be greater"),
        ({"num_speakers": "2"}, "num_speakers needs diarize=speakers"),
        ({"diarize": "channels", "max_speakers": "2"}, "max_speakers needs diarize=speakers"),
        (
            {"diarize": "none", "min_speakers": "1", "max_speakers": "3"},
            "min_speakers, max_speakers needs diarize=speakers",
        ),
        (
            {"diarize": "speakers", "num_speakers": "2", "max_speakers": "3"},
            "give num_speakers, or min_speakers/max_speakers, not both",
        ),
        (
            {"diarize": "speakers", "min_speakers": "4", "max_speakers": "3"},
            "min_speakers (4) is more than max_speakers (3)",
        ),
        ({"diarize": "speakers", "num_speaker": "2"}, "unknown field(s) num_speaker"),
    ],
)
async def test_bad_speaker_options_are_422_saying_why(
    gateway: Gateway, fields: dict[str, str], reason: str
) -> None:
    response = await gateway.submit(**fields)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, str) and reason in detail
    # One sentence per problem: no pydantic prefixes, locations or stack traces.
    assert "Traceback" not in detail and "Value error" not in detail and ": :" not in detail
    assert not gateway.broker.published and not list(gateway.blobs.iterdir())


TWO_VOICES = TranscriptResult(
    text="Hi. Hello.",
    duration=3.0,
    model="tiny.en",
    segments=[
        Segment(id=0, start=0.0, end=1.0, text=" Hi.", speaker="SPEAKER_00"),
        Segment(id=1, start=1.5, end=2.5, text=" Hello.", speaker="SPEAKER_01"),
    ],
    speaker_turns=[
        SpeakerTurn(start=0.0, end=1.2, speaker="SPEAKER_00"),
        SpeakerTurn(start=1.2, end=2.6, speaker="SPEAKER_01"),
    ],
)


async def test_results_with_speakers_in_every_format(gateway: Gateway) -> None:
    job_id = (await gateway.submit(diarize="speakers", num_speakers="2")).json()["id"]
    await gateway.finish(job_id, TWO_VOICES)

    async def fetch(fmt: str) -> httpx.Response:
        response = await gateway.client.get(f"/v1/jobs/{job_id}/result", params={"format": fmt})
        assert response.status_code == 200, response.text
        return response

    rttm = (await fetch("rttm")).text
    assert rttm.splitlines() == [
        f"SPEAKER {job_id} 1 0.000 1.200 <NA> <NA> SPEAKER_00 <NA> <NA>",
        f"SPEAKER {job_id} 1 1.200 1.400 <NA> <NA> SPEAKER_01 <NA> <NA>",
    ]
    diarized = TranscriptionDiarized.model_validate((await fetch("diarized_json")).json())
    assert [(s.speaker, s.text) for s in diarized.segments] == [("A", "Hi."), ("B", "Hello.")]
    assert (await fetch("text")).text == "SPEAKER_00: Hi.\nSPEAKER_01: Hello.\n"
    assert "<v SPEAKER_01>Hello." in (await fetch("vtt")).text
    assert "SPEAKER_00: Hi." in (await fetch("srt")).text
    assert (await fetch("verbose_json")).json()["speaker_turns"][1]["speaker"] == "SPEAKER_01"
    assert (await fetch("json")).json()["segments"][1]["speaker"] == "SPEAKER_01"


@pytest.mark.parametrize("fmt", ["rttm", "diarized_json"])
async def test_a_speaker_format_of_a_job_without_speakers_is_409(
    gateway: Gateway, fmt: str
) -> None:
    job_id = (await gateway.submit()).json()["id"]
    plain = TWO_VOICES.model_copy(
        update={"segments": [Segment(id=0, start=0, end=1, text=" Hi.")], "speaker_turns": None}
    )
    await gateway.finish(job_id, plain)
    response = await gateway.client.get(f"/v1/jobs/{job_id}/result", params={"format": fmt})
    assert response.status_code == 409
    assert "submit the job with diarize=speakers" in response.json()["detail"]


async def test_an_unknown_format_names_the_formats(gateway: Gateway) -> None:
    job_id = (await gateway.submit()).json()["id"]
    response = await gateway.client.get(f"/v1/jobs/{job_id}/result", params={"format": "ctm"})
    assert response.status_code == 422
    assert "'rttm'" in response.json()["detail"]
