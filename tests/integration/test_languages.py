"""Multilingual Whisper (``base``): language detection, a given language, translation, options.

Speech comes from the ``pytest-audioeval`` package's samples (real WAV files with their
transcripts) and from espeak-ng; ``base`` is assembled from its two PyPI wheels by the daemon.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pytest_audioeval.samples import registry

from stack import HOTWORDS, Gateway, Stack, normalise

pytestmark = pytest.mark.integration

SAMPLES = Path(registry.__file__).parent / "audio"
#: Spoken by espeak-ng; Whisper base hears it with language probability about 0.9.
SPANISH = (
    "Buenos días. Hoy vamos a hablar del tiempo en la ciudad. "
    "Mañana va a llover por la tarde, y el domingo hará sol."
)


def _run(*argv: str) -> None:
    if shutil.which(argv[0]) is None:
        pytest.fail(f"{argv[0]} is missing (deploy/local/bootstrap installs it)")
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def spanish(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Spanish sentence spoken by espeak-ng."""
    out = tmp_path_factory.mktemp("speech") / "es.wav"
    _run("espeak-ng", "-v", "es", "-w", str(out), SPANISH)
    return out


@pytest.fixture(scope="module")
def french(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Two of pytest-audioeval's French recordings joined, with their transcript."""
    names = ["bonjour_monde", "pangrama"]
    out = tmp_path_factory.mktemp("speech") / "fr.wav"
    _run("sox", *(str(SAMPLES / "fr" / f"{name}.wav") for name in names), "-b", "16", str(out))
    text = " ".join((SAMPLES / "fr" / f"{name}.txt").read_text() for name in names)
    return out, text


@pytest.fixture(scope="module")
async def base_gateway(
    amqp_url: str, tmp_path_factory: pytest.TempPathFactory, audio_dir: Path
) -> AsyncIterator[Gateway]:
    """One gateway and one daemon serving ``base`` for the whole module (loading it is slow)."""
    stack = Stack(amqp_url=amqp_url, data_dir=tmp_path_factory.mktemp("languages"))
    cache = tmp_path_factory.mktemp("model-cache")
    try:
        gw = await stack.gateway(STT_MODELS="base")
        daemon = await stack.daemon(STT_MODELS="base", STT_MODEL_CACHE=str(cache))
        loaded = await daemon.wait_for_log("model.loaded")
        assert loaded["model"] == "base" and loaded["path"].startswith(str(cache))
        yield gw
    finally:
        await stack.stop_all()


async def transcribe(gw: Gateway, audio: Path, **fields: str) -> dict[str, Any]:
    """Submit, wait, and return the JSON result (failing on anything but success)."""
    job = await gw.submit(audio, **fields)
    final = await gw.wait_final(job["id"], timeout=240)
    assert final["status"] == "succeeded", final
    async with gw.client() as client:
        body: dict[str, Any] = (await client.get(f"/v1/jobs/{job['id']}/result")).json()
    return body


def heard(reference: str, text: str) -> float:
    """Share of the reference's words found in the text (Whisper base is not perfect)."""
    words = normalise(reference).split()
    got = set(normalise(text).split())
    return sum(word in got for word in words) / len(words)


async def test_language_is_detected_when_not_given(
    base_gateway: Gateway, spanish: Path, french: tuple[Path, str]
) -> None:
    french_audio, french_text = french
    es, fr = await asyncio.gather(
        transcribe(base_gateway, spanish), transcribe(base_gateway, french_audio)
    )
    assert (es["language"], es["model"], es["task"]) == ("es", "base", "transcribe")
    assert es["language_probability"] > 0.5
    assert heard(SPANISH, es["text"]) >= 0.6, es["text"]
    assert fr["language"] == "fr" and fr["language_probability"] > 0.5
    assert heard(french_text, fr["text"]) >= 0.6, fr["text"]


async def test_given_language_is_honoured(base_gateway: Gateway, spanish: Path) -> None:
    result = await transcribe(base_gateway, spanish, language="es")
    assert result["language"] == "es"
    assert heard(SPANISH, result["text"]) >= 0.6, result["text"]


async def test_translate_gives_english_and_keeps_the_source_language(
    base_gateway: Gateway, spanish: Path
) -> None:
    result = await transcribe(base_gateway, spanish, task="translate")
    assert result["task"] == "translate"
    assert result["language"] == "es"
    words = set(normalise(result["text"]).split())
    assert {"good", "morning", "today"} <= words, result["text"]
    assert not {"buenos", "hoy", "mañana"} & words, result["text"]


async def test_whisper_options_reach_the_model(base_gateway: Gateway) -> None:
    # Whisper base hears the product name in hotwords.mp3 as "confu i" unless told it.
    tuned = {"vad_filter": "true", "beam_size": "2", "temperature": "0", "language": "en"}
    plain, hot, prompted = await asyncio.gather(
        transcribe(base_gateway, HOTWORDS, language="en"),
        transcribe(base_gateway, HOTWORDS, hotwords="ComfyUI", **tuned),
        transcribe(base_gateway, HOTWORDS, prompt="ComfyUI", **tuned),
    )
    assert "comfyui" not in normalise(plain["text"]), plain["text"]
    assert "comfyui" in normalise(hot["text"]), hot["text"]
    assert "comfyui" in normalise(prompted["text"]), prompted["text"]


async def test_whisper_options_are_recorded_on_the_job(base_gateway: Gateway) -> None:
    fields = {
        "prompt": "Glossary: ComfyUI.",
        "hotwords": "ComfyUI",
        "vad_filter": "true",
        "beam_size": "3",
        "temperature": "0.4",
    }
    job = await base_gateway.submit(HOTWORDS, **fields)
    assert job["model"] == "base"
    assert {key: job["options"][key] for key in fields} == {
        "prompt": "Glossary: ComfyUI.",
        "hotwords": "ComfyUI",
        "vad_filter": True,
        "beam_size": 3,
        "temperature": 0.4,
    }
    assert (await base_gateway.wait_final(job["id"], timeout=240))["status"] == "succeeded"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("beam_size", "0"),
        ("beam_size", "11"),
        ("beam_size", "five"),
        ("temperature", "2"),
        ("temperature", "-0.5"),
        ("vad_filter", "maybe"),
        ("prompt", "x" * 2001),
        ("hotwords", "y" * 1001),
    ],
)
async def test_invalid_whisper_options_are_422_naming_the_field(
    base_gateway: Gateway, field: str, value: str
) -> None:
    async with base_gateway.client() as client:
        response = await client.post(
            "/v1/jobs", files={"file": ("a.mp3", HOTWORDS.read_bytes())}, data={field: value}
        )
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
