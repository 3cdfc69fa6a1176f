"""The OpenAI-compatible routes with a fake broker and an in-memory status store (no RabbitMQ)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai as openai_sdk
import pytest
from fastapi import FastAPI
from openai.types.audio import TranscriptionDiarized

from gateway import openai_form
from gateway.broker import BrokerUnavailable, QueueFull
from gateway.config import GatewaySettings
from gateway.fleet import Fleet
from gateway.routes import openai
from gateway.services import Services
from gateway.store import JobRecord
from gateway.store.base import advance
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import (
    Diarize,
    ErrorCode,
    ErrorInfo,
    EventType,
    JobEvent,
    JobMessage,
    Segment,
    SpeakerTurn,
    Task,
    TranscriptResult,
    Word,
)

#: What the fake broker does with a job: an event to record at once, None (never
#: finishes), or an exception to raise instead of publishing.
Outcome = Callable[[JobMessage], JobEvent | None] | Exception


class MemoryStore:
    """The status store's interface over a dict."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}

    async def create(self, record: JobRecord) -> None:
        self.jobs.setdefault(record.id, record)

    async def discard(self, job_id: str) -> None:
        self.jobs.pop(job_id, None)

    async def get(self, job_id: str) -> JobRecord | None:
        return self.jobs.get(job_id)

    async def apply(self, event: JobEvent) -> bool:
        record = advance(self.jobs.get(event.job_id), event)
        if record is not None:
            self.jobs[event.job_id] = record
        return record is not None

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        pass


class FakeBroker:
    """Publishes nowhere: the job's outcome is recorded as soon as it is published."""

    ready = True

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.outcome: Outcome = succeed
        self.published: list[JobMessage] = []

    async def publish_job(self, job: JobMessage) -> None:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        self.published.append(job)
        event = self.outcome(job)
        if event is not None:
            await self.store.apply(event)


def succeed(job: JobMessage) -> JobEvent:
    """A result as the daemon would send it (words only when asked, speakers when asked)."""
    if job.options.diarize is Diarize.SPEAKERS:
        return JobEvent(event=EventType.SUCCEEDED, job_id=job.job_id, result=two_voices(job))
    words = [Word(start=0.0, end=0.5, word=" Hello", probability=0.9)]
    segment = Segment(
        id=0,
        start=0.0,
        end=1.0,
        text=" Hello world.",
        words=words if job.options.word_timestamps else None,
    )
    result = TranscriptResult(
        text="Hello world.",
        language="en",
        duration=1.0,
        model=job.options.model,
        task=job.options.task,
        segments=[segment],
    )
    return JobEvent(event=EventType.SUCCEEDED, job_id=job.job_id, result=result)


def two_voices(job: JobMessage) -> TranscriptResult:
    """What a daemon answers with diarize=speakers: two voices, the first coming back."""
    lines = [
        (0.0, " Hello.", "SPEAKER_00"),
        (1.0, " Hi there.", "SPEAKER_01"),
        (2.0, " Bye.", "SPEAKER_00"),
    ]
    segments = [
        Segment(
            id=i,
            start=start,
            end=start + 1,
            text=text,
            speaker=who,
            words=[Word(start=start, end=start + 1, word=text, probability=0.9, speaker=who)]
            if job.options.word_timestamps
            else None,
        )
        for i, (start, text, who) in enumerate(lines)
    ]
    turns = [SpeakerTurn(start=s.start, end=s.end, speaker=s.speaker or "") for s in segments]
    return TranscriptResult(
        text="Hello. Hi there. Bye.",
        language="en",
        duration=3.0,
        model=job.options.model,
        task=job.options.task,
        segments=segments,
        speaker_turns=turns,
    )


def fail(code: ErrorCode) -> Callable[[JobMessage], JobEvent]:
    """An outcome: the job failed with this code."""

    def outcome(job: JobMessage) -> JobEvent:
        error = ErrorInfo(code=code, message=f"it went wrong: {code.value}")
        return JobEvent(event=EventType.FAILED, job_id=job.job_id, error=error)

    return outcome


def build_app(tmp_path: Path) -> tuple[FastAPI, FakeBroker]:
    """An app with only the OpenAI router, a memory store and a fake broker."""
    settings = GatewaySettings(data_dir=tmp_path, models=["tiny.en", "base"], sync_timeout=0.3)
    store = MemoryStore()
    broker = FakeBroker(store)
    app = FastAPI()
    app.include_router(openai.router)
    app.state.services = Services(
        settings=settings,
        blobs=BlobStore(settings.resolved_blob_url),
        store=store,  # type: ignore[arg-type]
        broker=broker,  # type: ignore[arg-type]
        fleet=Fleet(settings.names),  # hears no daemon: the configured models are accepted
    )
    return app, broker


@pytest.fixture
async def gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeBroker, Path]]:
    """The app, spoken to with httpx."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    app, broker = build_app(tmp_path)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client, broker, tmp_path / "blobs"


@pytest.fixture
async def sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[openai_sdk.AsyncOpenAI, FakeBroker]]:
    """The app, spoken to with the official client (its own form encoding and parsing)."""
    monkeypatch.chdir(tmp_path)
    app, broker = build_app(tmp_path)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://gw")
    client = openai_sdk.AsyncOpenAI(
        api_key="unused", base_url="http://gw/v1", http_client=http, max_retries=0
    )
    async with client:
        yield client, broker


async def post(
    client: httpx.AsyncClient, path: str = "transcriptions", **fields: Any
) -> httpx.Response:
    """POST an OpenAI form with a small file."""
    data = {"model": "whisper-1", **fields}
    files = {"file": ("a.wav", b"RIFF....WAVE")}
    return await client.post(f"/v1/audio/{path}", files=files, data=data)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object, checking OpenAI's shape on the way."""
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_json_is_openai_text_only(gateway: Any) -> None:
    client, broker, _ = gateway
    response = await post(client, model="gpt-4o-transcribe", temperature="0", language="en")
    assert response.status_code == 200
    assert response.json() == {"text": "Hello world."}
    options = broker.published[0].options
    assert options.model == "tiny.en" and options.task is Task.TRANSCRIBE
    # OpenAI's 0 means Whisper's fallback schedule: left unset.
    assert options.temperature is None and options.language == "en"
    assert response.headers["x-job-id"] == broker.published[0].job_id


async def test_translation_ignores_language_and_keeps_our_models(gateway: Any) -> None:
    client, broker, _ = gateway
    response = await post(client, "translations", model="base", language="fr", temperature="0.4")
    assert response.status_code == 200
    options = broker.published[0].options
    assert options.task is Task.TRANSLATE and options.language is None
    assert options.model == "base" and options.temperature == 0.4


@pytest.mark.parametrize(
    ("granularity", "has_words", "has_segments"),
    [(None, False, True), ("word", True, False), ("segment", False, True)],
)
async def test_verbose_json_follows_granularities(
    gateway: Any, granularity: str | None, has_words: bool, has_segments: bool
) -> None:
    client, broker, _ = gateway
    fields = {"response_format": "verbose_json"}
    if granularity:
        fields["timestamp_granularities[]"] = granularity
    body = (await post(client, **fields)).json()
    assert body["task"] == "transcribe" and body["language"] == "en"
    assert ("words" in body) is has_words
    assert ("segments" in body) is has_segments
    assert broker.published[0].options.word_timestamps is has_words


async def test_subtitles_and_text(gateway: Any) -> None:
    client, _, _ = gateway
    srt = await post(client, response_format="srt")
    assert srt.text.startswith("1\n00:00:00,000 --> 00:00:01,000\nHello world.")
    assert (await post(client, response_format="vtt")).text.startswith("WEBVTT")
    text = await post(client, response_format="text")
    assert text.text == "Hello world.\n" and text.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "large-v9"}, "model"),
        ({"response_format": "docx"}, "response_format"),
        ({"timestamp_granularities[]": "word"}, "timestamp_granularities"),
        ({"timestamp_granularities[]": "sentence", "response_format": "verbose_json"}, None),
        ({"temperature": "2"}, None),
        ({"stream": "true", "response_format": "vtt"}, "response_format"),
    ],
)
async def test_refused_forms_are_400_and_leave_nothing(
    gateway: Any, fields: dict[str, str], param: str | None
) -> None:
    client, broker, blobs = gateway
    response = await post(client, **fields)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert param is None or error["param"] == param
    assert not broker.published and not list(blobs.iterdir())


async def test_upload_errors_take_openai_shape(gateway: Any) -> None:
    client, _, _ = gateway
    no_file = await client.post("/v1/audio/transcriptions", files={"audio": ("a.wav", b"x")})
    assert no_file.status_code == 400 and "'file'" in error_of(no_file)["message"]
    not_multipart = await client.post("/v1/audio/transcriptions", content=b"x")
    assert not_multipart.status_code == 415
    assert error_of(not_multipart)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("code", "status", "retry"),
    [
        (ErrorCode.BAD_AUDIO, 400, None),
        (ErrorCode.AUDIO_TOO_LONG, 400, None),
        (ErrorCode.INTERNAL, 500, "false"),
        (ErrorCode.TOO_MANY_ATTEMPTS, 500, "false"),
    ],
)
async def test_failed_jobs(gateway: Any, code: ErrorCode, status: int, retry: str | None) -> None:
    client, broker, _ = gateway
    broker.outcome = fail(code)
    response = await post(client)
    assert response.status_code == status
    error = error_of(response)
    assert error["code"] == code.value and code.value in error["message"]
    assert error["type"] == ("server_error" if status == 500 else "invalid_request_error")
    assert response.headers.get("x-should-retry") == retry


async def test_cancelled_job_is_409_not_retried(gateway: Any) -> None:
    client, broker, _ = gateway
    broker.outcome = lambda job: JobEvent(event=EventType.CANCELLED, job_id=job.job_id)
    response = await post(client)
    assert response.status_code == 409 and error_of(response)["code"] == "cancelled"
    # The official clients retry 409 unless told otherwise.
    assert response.headers["x-should-retry"] == "false"


async def test_timeout_is_504_naming_the_job(gateway: Any) -> None:
    client, broker, _ = gateway
    broker.outcome = lambda job: None
    response = await post(client)
    assert response.status_code == 504
    job_id = broker.published[0].job_id
    error = error_of(response)
    assert error["type"] == "server_error" and f"/v1/jobs/{job_id}" in error["message"]
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(("exc", "status"), [(QueueFull(), 429), (BrokerUnavailable("down"), 503)])
async def test_broker_refusals(gateway: Any, exc: Exception, status: int) -> None:
    client, broker, blobs = gateway
    broker.outcome = exc
    response = await post(client)
    assert response.status_code == status
    assert response.headers["retry-after"] == "5"
    assert error_of(response)["code"] in {"queue_full", "queue_unavailable"}
    assert not list(blobs.iterdir())


def test_comma_separated_granularities() -> None:
    form = {"timestamp_granularities": "word, segment", "response_format": "verbose_json"}
    asked = openai_form.parse_form(form, Task.TRANSCRIBE, "tiny.en")
    assert asked.granularities == {openai_form.Granularity.WORD, openai_form.Granularity.SEGMENT}
    assert asked.fields["word_timestamps"] is True


# --- speakers -------------------------------------------------------------------------


async def test_diarized_json_through_the_official_client(sdk: Any) -> None:
    client, broker = sdk
    diarized = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("call.wav", b"RIFF....WAVE"),
        response_format="diarized_json",
        chunking_strategy="auto",  # ignored: long recordings are split at pauses anyway
        extra_body={"num_speakers": 2},
    )
    assert isinstance(diarized, TranscriptionDiarized)
    assert [(s.speaker, s.text) for s in diarized.segments] == [
        ("A", "Hello."),
        ("B", "Hi there."),
        ("A", "Bye."),
    ]
    assert diarized.task == "transcribe" and diarized.duration == 3.0
    options = broker.published[0].options
    assert options.diarize is Diarize.SPEAKERS and options.num_speakers == 2
    assert options.model == "tiny.en"


async def test_known_speaker_names_are_refused_by_name(sdk: Any) -> None:
    client, broker = sdk
    with pytest.raises(openai_sdk.BadRequestError) as refused:
        await client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=("call.wav", b"RIFF....WAVE"),
            response_format="diarized_json",
            known_speaker_names=["agent", "customer"],
            known_speaker_references=["data:audio/wav;base64,UklGRg==", "data:,"],
        )
    assert refused.value.param == "known_speaker_names"
    assert "not supported" in refused.value.message
    assert not broker.published


@pytest.mark.parametrize("fmt", ["diarized_json", "rttm"])
def test_speaker_formats_turn_diarization_on(fmt: str) -> None:
    asked = openai_form.parse_form({"response_format": fmt}, Task.TRANSCRIBE, "tiny.en")
    assert asked.fields["diarize"] == "speakers"
    # Channels are speakers too: an explicit diarize=channels is kept.
    form = {"response_format": fmt, "diarize": "channels"}
    assert openai_form.parse_form(form, Task.TRANSCRIBE, "tiny.en").fields["diarize"] == "channels"
    # The diarize model's name alone changes nothing: the format decides, as at OpenAI.
    plain = {"response_format": "text", "model": "gpt-4o-transcribe-diarize"}
    assert "diarize" not in openai_form.parse_form(plain, Task.TRANSCRIBE, "tiny.en").fields


async def test_speakers_in_the_other_formats(gateway: Any) -> None:
    client, broker, _ = gateway
    text = await post(client, response_format="text", diarize="speakers")
    assert text.text == "SPEAKER_00: Hello.\nSPEAKER_01: Hi there.\nSPEAKER_00: Bye.\n"
    vtt = await post(client, response_format="vtt", diarize="speakers")
    assert "<v SPEAKER_01>Hi there." in vtt.text
    srt = await post(client, response_format="srt", diarize="speakers")
    assert "SPEAKER_01: Hi there." in srt.text
    fields = {"response_format": "verbose_json", "timestamp_granularities[]": "word,segment"}
    verbose = (await post(client, diarize="speakers", min_speakers="1", **fields)).json()
    assert [w["speaker"] for w in verbose["words"]] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    assert verbose["segments"][1]["speaker"] == "SPEAKER_01"
    assert len(verbose["speaker_turns"]) == 3
    rttm = await post(client, response_format="rttm")
    job_id = rttm.headers["x-job-id"]
    assert rttm.text.splitlines()[1] == (
        f"SPEAKER {job_id} 1 1.000 1.000 <NA> <NA> SPEAKER_01 <NA> <NA>"
    )
    assert broker.published[-1].options.diarize is Diarize.SPEAKERS


async def test_translations_take_speaker_options(gateway: Any) -> None:
    client, broker, _ = gateway
    response = await post(client, "translations", response_format="text", diarize="speakers")
    assert response.status_code == 200 and response.text.startswith("SPEAKER_00: ")
    assert broker.published[0].options.task is Task.TRANSLATE


@pytest.mark.parametrize(
    ("fields", "param", "reason"),
    [
        ({"diarize": "people"}, "diarize", "Input should be 'none', 'channels' or 'speakers'"),
        ({"diarize": "speakers", "num_speakers": "abc"}, "num_speakers", "valid integer"),
        ({"diarize": "speakers", "num_speakers": "0"}, "num_speakers", "greater than or equal"),
        ({"diarize": "speakers", "max_speakers": "33"}, "max_speakers", "less than or equal"),
        ({"num_speakers": "2"}, None, "num_speakers needs diarize=speakers"),
        (
            {"diarize": "speakers", "num_speakers": "2", "min_speakers": "1"},
            None,
            "give num_speakers, or min_speakers/max_speakers, not both",
        ),
        (
            {"response_format": "diarized_json", "min_speakers": "3", "max_speakers": "2"},
            None,
            "min_speakers (3) is more than max_speakers (2)",
        ),
        (
            {"response_format": "diarized_json", "diarize": "none"},
            "diarize",
            "response_format=diarized_json needs speakers",
        ),
        (
            {"response_format": "diarized_json", "stream": "true"},
            "response_format",
            "must be json or text",
        ),
    ],
)
async def test_bad_speaker_options_are_openai_400s(
    gateway: Any, fields: dict[str, str], param: str | None, reason: str
) -> None:
    client, broker, blobs = gateway
    response = await post(client, **fields)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert reason in error["message"] and "Traceback" not in error["message"]
    assert not broker.published and not list(blobs.iterdir())


async def test_diarized_json_is_for_transcriptions_only(gateway: Any) -> None:
    client, broker, _ = gateway
    response = await post(client, "translations", response_format="diarized_json")
    assert response.status_code == 400
    assert error_of(response)["param"] == "response_format"
    assert not broker.published
