"""Speech in another language never vanishes silently: the result says where it was.

Real RabbitMQ, a real daemon serving tiny.en (English-only, the default model) and
base (multilingual, which names the language heard where tiny.en wrote nothing),
and a real gateway. Speech is jfk.flac (tests/data) and Spanish from espeak-ng.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stack import JFK, JFK_WORDS, Gateway, Stack, normalise
from stt_daemon.audio import SAMPLE_RATE, decode

pytestmark = pytest.mark.integration

#: About 11 s from espeak-ng; tiny.en writes nothing for it after English, base hears it.
SPANISH = (
    "Buenos días a todos. Hoy vamos a hablar del tiempo en la ciudad. Mañana va a "
    "llover por la tarde, y el domingo hará sol. Después iremos al mercado a comprar "
    "frutas y verduras."
)
#: Silence between the English and the Spanish, seconds.
GAP_S = 1.0
#: How far a warning's edges may sit from where the Spanish starts and ends (the
#: VAD pads speech by 0.2 s, and segment ends are approximate).
EDGE_S = 1.0


def _write_wav(path: Path, audio: np.ndarray) -> Path:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return path


def _spanish(work: Path) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing (deploy/local/bootstrap installs it)")
    raw = work / "es-raw.wav"
    subprocess.run(["espeak-ng", "-v", "es", "-w", str(raw), SPANISH], check=True)
    return decode(raw, max_seconds=60)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """English (jfk.flac), Spanish, and the two one after the other, as WAV files."""
    work = tmp_path_factory.mktemp("coverage-speech")
    english, spanish = decode(JFK, max_seconds=60), _spanish(work)
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    spanish_at = (len(english) + len(gap)) / SAMPLE_RATE
    return {
        "english": JFK,
        "spanish": _write_wav(work / "es.wav", spanish),
        "bilingual": _write_wav(work / "en-es.wav", np.concatenate([english, gap, spanish])),
        "spanish_from": spanish_at,
        "spanish_to": spanish_at + len(spanish) / SAMPLE_RATE,
    }


@pytest.fixture(scope="module")
async def gateway(
    amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    """One gateway and one daemon serving tiny.en (the default) and base, as ``make up`` does."""
    stack = Stack(amqp_url=amqp_url, data_dir=tmp_path_factory.mktemp("coverage"))
    cache = tmp_path_factory.mktemp("model-cache")
    try:
        gw = await stack.gateway(STT_MODELS="tiny.en,base")
        await stack.daemon(STT_MODELS="tiny.en,base", STT_MODEL_CACHE=str(cache))
        yield gw
    finally:
        await stack.stop_all()
        await stack.forget()


async def run(gw: Gateway, audio: Path, **fields: str) -> tuple[str, dict[str, Any]]:
    """Submit, wait for success, and return the job id and its JSON result."""
    job = await gw.submit(audio, **fields)
    final = await gw.wait_final(job["id"], timeout=240)
    assert final["status"] == "succeeded", final.get("error")
    async with gw.client() as client:
        body: dict[str, Any] = (await client.get(f"/v1/jobs/{job['id']}/result")).json()
    return job["id"], body


async def test_spanish_after_english_on_tiny_en_is_reported_where_it_is(
    gateway: Gateway, speech: dict[str, Any]
) -> None:
    job_id, result = await run(gateway, speech["bilingual"])
    assert result["model"] == "tiny.en"
    assert JFK_WORDS in normalise(result["text"]), result["text"]
    [warning] = result["warnings"]
    assert warning["code"] == "untranscribed_speech"
    assert abs(warning["start"] - speech["spanish_from"]) <= EDGE_S, warning
    assert abs(warning["end"] - speech["spanish_to"]) <= EDGE_S, warning
    # base, served beside it, heard what it was; the message says what to do.
    assert warning["language"] == "es", warning
    assert "English-only" in warning["message"] and "'base'" in warning["message"]
    async with gateway.client() as client:
        verbose = (await client.get(f"/v1/jobs/{job_id}/result?format=verbose_json")).json()
        original = (await client.get(f"/result/{job_id}")).json()
    assert verbose["warnings"] == [{k: v for k, v in warning.items() if v is not None}]
    assert original == {"result": result["text"], "warnings": verbose["warnings"]}


async def test_english_on_tiny_en_has_no_warning(gateway: Gateway, speech: dict[str, Any]) -> None:
    job_id, result = await run(gateway, speech["english"])
    assert JFK_WORDS in normalise(result["text"])
    assert result["warnings"] == []
    async with gateway.client() as client:
        original = (await client.get(f"/result/{job_id}")).json()
        verbose = (await client.get(f"/v1/jobs/{job_id}/result?format=verbose_json")).json()
    # The original API's answer is the original's, byte for byte, when all is well.
    assert original == {"result": result["text"]}
    assert "warnings" not in verbose


async def test_base_skipping_the_second_language_says_so(
    gateway: Gateway, speech: dict[str, Any]
) -> None:
    # Whisper keeps to the language it detected from the first 30 s: base was seen
    # writing nothing for the Spanish after English (and, here, writing the English
    # in Spanish). Whatever it does with the English, the Spanish must not vanish.
    _, result = await run(gateway, speech["bilingual"], model="base")
    spanish_words = {"buenos", "ciudad", "domingo", "mercado"}
    if spanish_words <= set(normalise(result["text"]).split()):
        # It did transcribe the Spanish after all: then nothing is missing.
        assert result["warnings"] == [], result
        return
    stretches = [(w["start"], w["end"], w["language"]) for w in result["warnings"]]
    assert any(
        abs(start - speech["spanish_from"]) <= EDGE_S
        and abs(end - speech["spanish_to"]) <= EDGE_S
        and language == "es"
        for start, end, language in stretches
    ), result


async def test_spanish_on_base_has_no_warning(gateway: Gateway, speech: dict[str, Any]) -> None:
    _, result = await run(gateway, speech["spanish"], model="base")
    assert result["language"] == "es"
    assert {"buenos", "ciudad", "domingo"} <= set(normalise(result["text"]).split())
    assert result["warnings"] == []
