"""The OpenAI-compatible endpoints, driven by the official ``openai`` client against real parts."""

from __future__ import annotations

import asyncio
import re
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import openai
import pytest

from stack import HOTWORDS, JFK, JFK_WORDS, Gateway, Stack, normalise
from stt_daemon.localbroker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]

SRT_TIME = r"\d{2}:\d{2}:\d{2},\d{3} --> \d{2}:\d{2}:\d{2},\d{3}"


def openai_client(gw: Gateway) -> openai.OpenAI:
    """The official client pointed at our gateway; no retries, so failures show at once."""
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)


async def transcribe(gw: Gateway, **kwargs: Any) -> Any:
    """``client.audio.transcriptions.create`` (a sync client) off the event loop."""
    kwargs.setdefault("model", "whisper-1")
    kwargs.setdefault("file", JFK)
    client = openai_client(gw)
    return await asyncio.to_thread(lambda: client.audio.transcriptions.create(**kwargs))


async def test_transcription_in_every_format(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    with JFK.open("rb") as fh:
        default = await transcribe(gw, file=fh)
    assert JFK_WORDS in normalise(default.text)

    text = await transcribe(gw, response_format="text")
    assert isinstance(text, str) and JFK_WORDS in normalise(text)

    srt = await transcribe(gw, response_format="srt", model="gpt-4o-transcribe")
    cues = srt.strip().split("\n\n")
    for number, cue in enumerate(cues, start=1):
        lines = cue.splitlines()
        assert lines[0] == str(number)
        assert re.fullmatch(SRT_TIME, lines[1]), lines[1]
    assert JFK_WORDS in normalise(srt)

    vtt = await transcribe(gw, response_format="vtt", model="tiny.en")
    assert vtt.startswith("WEBVTT")
    assert JFK_WORDS in normalise(vtt)


async def test_verbose_json_word_granularity(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    result = await transcribe(
        gw, response_format="verbose_json", timestamp_granularities=["word"], language="en"
    )
    body = result.model_dump()
    # faster-whisper reports ISO codes; OpenAI would say "english" (see the README).
    assert body["language"] == "en"
    assert body["duration"] == pytest.approx(11.0, abs=0.1)
    assert "segments" not in body or body["segments"] is None
    words = body["words"]
    assert "country" in normalise(" ".join(w["word"] for w in words))
    assert all(0 <= w["start"] <= w["end"] <= 11.5 for w in words)

    plain = (await transcribe(gw, response_format="verbose_json")).model_dump()
    assert plain["segments"] and all(s["start"] < s["end"] for s in plain["segments"])
    assert plain.get("words") is None


async def test_verbose_json_word_and_segment_granularities(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    result = await transcribe(
        gw, response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    body = result.model_dump()
    assert body["segments"] and all(s["start"] < s["end"] for s in body["segments"])
    assert body["words"] and all(w["start"] <= w["end"] for w in body["words"])


def _sample(relative: str) -> Path:
    """A recording shipped by pytest-audioeval (speech in other languages)."""
    spec = find_spec("pytest_audioeval")
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = Path(*roots[:1], "samples", "audio", relative)
    if not roots or not path.is_file():
        pytest.fail(f"pytest-audioeval sample missing: {path}")
    return path


# The official client marks audio.translations.create deprecated; it is what we serve.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_translations_give_english(stack: Stack) -> None:
    models = "tiny.en,base"
    gw = await stack.gateway(STT_MODELS=models)
    await stack.daemon(STT_MODELS=models)
    client = openai_client(gw)
    translate = client.audio.translations.create
    with JFK.open("rb") as fh:
        english = await asyncio.to_thread(translate, model="whisper-1", file=fh)
    assert JFK_WORDS in normalise(english.text)

    french = _sample("fr/bonjour_monde.wav")
    said = await transcribe(gw, model="base", file=french, language="fr")
    assert "bonjour" in normalise(said.text)
    translated = await asyncio.to_thread(
        translate, model="base", file=french, response_format="verbose_json"
    )
    body = translated.model_dump()
    assert "hello" in normalise(body["text"]) and "bonjour" not in normalise(body["text"])
    assert body["task"] == "translate" and body["language"] == "fr"


async def test_prompt_passes_through(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    # tiny.en hears "comfy eye" unless the prompt spells the name.
    plain = await transcribe(gw, file=HOTWORDS, response_format="text")
    assert "ComfyUI" not in plain
    prompted = await transcribe(gw, file=HOTWORDS, prompt="ComfyUI", temperature=0)
    assert "ComfyUI" in prompted.text


async def test_bad_requests_raise_the_clients_errors(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    with pytest.raises(openai.BadRequestError) as garbage:
        await transcribe(gw, file=("garbage.wav", b"this is not audio" * 64))
    error = garbage.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert error["code"] == "bad_audio"

    with pytest.raises(openai.BadRequestError) as unknown:
        await transcribe(gw, model="large-v9")
    assert "large-v9" in unknown.value.message and "tiny.en" in unknown.value.message
    assert isinstance(unknown.value.body, dict) and unknown.value.body["param"] == "model"

    with pytest.raises(openai.BadRequestError) as granularity:
        await transcribe(gw, timestamp_granularities=["word"])
    assert "verbose_json" in granularity.value.message

    with pytest.raises(openai.BadRequestError) as fmt:
        await transcribe(gw, response_format="docx")
    assert isinstance(fmt.value.body, dict) and fmt.value.body["param"] == "response_format"


async def test_sync_timeout_is_504_naming_the_job(stack: Stack) -> None:
    gw = await stack.gateway(STT_SYNC_TIMEOUT="0.5")
    async with gw.client() as client:
        response = await client.post(
            "/v1/audio/transcriptions",
            files={"file": ("jfk.flac", JFK.read_bytes(), "audio/flac")},
            data={"model": "whisper-1"},
        )
        assert response.status_code == 504
        # The official clients retry 5xx: this one would transcribe the audio again.
        assert response.headers["x-should-retry"] == "false"
        error = response.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "timeout"
        job_id = response.headers["x-job-id"]
        assert f"/v1/jobs/{job_id}" in error["message"]
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "queued"
    assert job["options"]["task"] == "transcribe" and job["model"] == "tiny.en"


async def test_gateway_errors_take_openai_shape(stack: Stack) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    gw = await stack.gateway(wait_ready=False, STT_AMQP_URL=dead)
    async with gw.client() as client:
        unavailable = await client.post(
            "/v1/audio/translations", files={"file": ("a.flac", JFK.read_bytes())}
        )
        assert unavailable.status_code == 503
        assert "Retry-After" in unavailable.headers
        assert unavailable.json()["error"]["type"] == "server_error"

        # Our 422 for a form without its file is OpenAI's 400.
        no_file = await client.post(
            "/v1/audio/transcriptions", files={"audio": ("a.flac", JFK.read_bytes())}
        )
        assert no_file.status_code == 400
        assert no_file.json()["error"]["type"] == "invalid_request_error"
        assert "'file'" in no_file.json()["error"]["message"]

        # Other routes keep their own shape.
        assert "detail" in (await client.get("/v1/jobs/nope")).json()
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/v1/audio/transcriptions", "/v1/audio/translations"} <= set(paths)


async def test_client_retries_nothing_it_should_not(stack: Stack) -> None:
    # With its default retries the client still gets one 504, not three jobs.
    gw = await stack.gateway(STT_SYNC_TIMEOUT="0.5")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", timeout=30)
    with pytest.raises(openai.APIStatusError) as timeout:
        await asyncio.to_thread(client.audio.transcriptions.create, model="whisper-1", file=JFK)
    assert timeout.value.status_code == 504
    submitted = [line for line in gw.proc.log_lines() if line.get("event") == "openai.sync_timeout"]
    assert len(submitted) == 1
