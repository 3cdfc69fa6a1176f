"""The Wyoming server's pieces (no broker, no model): framing, the catalog, streamed
text, audio conversion and the command line. Whole connections with fake live
sessions are in test_wyoming_connections.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from faster_whisper.tokenizer import _LANGUAGE_CODES
from pydantic import SecretStr
from wyoming.info import Info

from gateway.agreement import TimedWord
from gateway.config import GatewaySettings
from gateway.wyoming.__main__ import check_exposure, uri_problem
from gateway.wyoming.catalog import (
    WHISPER_LANGUAGES,
    Unservable,
    build_info,
    choose,
    languages_of,
    prompt_of,
)
from gateway.wyoming.framing import (
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    BadEvent,
    parse_version,
    read_event,
)
from gateway.wyoming.transcription import AudioFormat, StreamedText, Transcription

# -- framing -----------------------------------------------------------------


def stream_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=MAX_HEADER_BYTES)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def frame(header: dict[str, Any], extra: bytes = b"", payload: bytes = b"") -> bytes:
    return json.dumps(header).encode() + b"\n" + extra + payload


async def test_an_event_with_data_and_payload_is_read_whole() -> None:
    extra = json.dumps({"width": 2, "channels": 1}).encode()
    raw = frame(
        {
            "type": "audio-chunk",
            "data": {"rate": 16000},
            "data_length": len(extra),
            "payload_length": 4,
            "version": "1.7.2",
        },
        extra,
        b"\x01\x02\x03\x04",
    )
    incoming = await read_event(stream_of(raw))
    assert incoming is not None
    assert incoming.event.type == "audio-chunk"
    assert incoming.event.data == {"rate": 16000, "width": 2, "channels": 1}
    assert incoming.event.payload == b"\x01\x02\x03\x04"
    assert incoming.version == (1, 7, 2)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"x" * (MAX_HEADER_BYTES + 10) + b"\n", "longer than"),
        (b"this is not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b"[" * 5000 + b"\n", "not JSON"),
        (frame({"data": {}}), "no valid 'type'"),
        (frame({"type": "x" * 100}), "no valid 'type'"),
        (frame({"type": "describe", "data": [1]}), "'data' is not an object"),
        (frame({"type": "describe", "payload_length": -1}), "non-negative"),
        (frame({"type": "describe", "data_length": "12"}), "non-negative"),
        (frame({"type": "describe", "data_length": 10**9}), "data_length over"),
        (frame({"type": "audio-chunk", "payload_length": MAX_PAYLOAD_BYTES + 1}), "over"),
        (frame({"type": "describe", "data_length": 3}, b"[1]"), "not a JSON object"),
    ],
)
async def test_malformed_events_are_named(raw: bytes, message: str) -> None:
    with pytest.raises(BadEvent, match=message):
        await read_event(stream_of(raw))


async def test_a_peer_leaving_mid_event_is_the_end_of_the_stream() -> None:
    assert await read_event(stream_of(b"")) is None
    assert await read_event(stream_of(b'{"type": "describe"')) is None
    cut = frame({"type": "audio-chunk", "payload_length": 100}, payload=b"12")
    assert await read_event(stream_of(cut)) is None


def test_versions() -> None:
    assert parse_version("1.10.2") == (1, 10, 2)
    assert parse_version("1.7") == (1, 7)
    assert parse_version("one") is None
    assert parse_version(7) is None
    assert parse_version(None) is None


# -- catalog -----------------------------------------------------------------


def test_whisper_languages_are_faster_whispers() -> None:
    assert tuple(WHISPER_LANGUAGES) == tuple(_LANGUAGE_CODES)


def test_info_lists_the_models_with_their_languages() -> None:
    info = Info.from_event(build_info(["tiny.en", "base"]).event())
    (program,) = info.asr
    assert program.supports_transcript_streaming
    assert [m.name for m in program.models] == ["tiny.en", "base"]
    assert program.models[0].languages == ["en"]
    assert "de" in program.models[1].languages and len(program.models[1].languages) == 100
    assert all(m.installed for m in program.models)


def test_choose_a_model_for_a_language() -> None:
    models = ["tiny.en", "base"]
    assert choose(models, None, None) == choose(models, "tiny.en", None)
    assert choose(models, None, "en-US").model == "tiny.en"
    assert choose(models, None, "de").model == "base"
    assert choose(models, None, "pt_BR").language == "pt"
    assert choose(models, "base", "EN").language == "en"
    with pytest.raises(Unservable, match="unknown model"):
        choose(models, "large", None)
    with pytest.raises(Unservable, match="does not transcribe"):
        choose(models, "tiny.en", "de")
    with pytest.raises(Unservable, match="no model here"):
        choose(["tiny.en"], None, "fr")
    with pytest.raises(Unservable, match="not one Whisper knows"):
        choose(models, None, "klingon")
    assert languages_of("small") == list(WHISPER_LANGUAGES)


def test_prompt_from_names_and_terms() -> None:
    assert prompt_of([], []) is None
    assert prompt_of(["Kitchen Lamp"], [" dimmer ", ""]) == "Kitchen Lamp, dimmer"
    assert len(prompt_of(["x" * 100] * 10, []) or "") == 400


# -- streamed text and audio -------------------------------------------------


def w(text: str) -> TimedWord:
    return TimedWord(0.0, 0.1, text)


def test_streamed_text_adds_up_to_the_transcript() -> None:
    streamed = StreamedText()
    utterances = [[w(" And"), w(" so,"), w(" my ")], [w("   "), w("ask"), w(" not.")]]
    chunks = [streamed.add(utterances[0][:2]), streamed.add(utterances[0][2:])]
    streamed.end_utterance()
    chunks += [streamed.add(utterances[1][:1]), streamed.add(utterances[1][1:])]
    # As LiveSession.transcript joins utterances.
    text = " ".join("".join(x.text for x in u).strip() for u in utterances).strip()
    assert "".join(chunks) == text == "And so, my ask not."


def test_audio_is_converted_to_16_khz_mono() -> None:
    fmt = AudioFormat(22050, 2, 2)
    current = Transcription(None, None, fmt, streaming=False)  # type: ignore[arg-type]
    data = {"rate": 22050, "width": 2, "channels": 2}
    second = b"\x10\x00\x20\x00" * 22050
    pcm = b"".join(current.pcm(data, second[i : i + 8820]) for i in range(0, len(second), 8820))
    assert abs(len(pcm) - 32000) <= 8
    with pytest.raises(BadEvent, match="differ"):
        current.pcm({**data, "rate": 16000}, b"\x00" * 4)
    with pytest.raises(BadEvent, match="whole number"):
        current.pcm(data, b"\x00" * 3)
    for bad in ({**data, "channels": 6}, {**data, "width": 0}, {**data, "rate": True}, {}):
        with pytest.raises(BadEvent):
            AudioFormat.from_data(bad, "audio-start")


# -- the command line --------------------------------------------------------


def test_uris() -> None:
    assert uri_problem("tcp://0.0.0.0:10300") is None
    assert uri_problem("unix:///run/stt.sock") is None
    assert uri_problem("tcp://0.0.0.0") is not None
    assert uri_problem("tcp://host:99999") is not None
    assert uri_problem("stdio://") is not None
    assert uri_problem("http://x:1") is not None


def test_api_keys_keep_wyoming_off_unless_allowed(tmp_path: Path) -> None:
    open_gateway = GatewaySettings(_env_file=None)  # type: ignore[call-arg]
    assert check_exposure(open_gateway, allow_unauthenticated=False) is None
    keyed = GatewaySettings(_env_file=None, api_keys=SecretStr("k1,k2"))  # type: ignore[call-arg]
    refusal = check_exposure(keyed, allow_unauthenticated=False)
    assert refusal is not None and "--allow-unauthenticated" in refusal
    assert check_exposure(keyed, allow_unauthenticated=True) is None
    missing = GatewaySettings(_env_file=None, api_keys_file=tmp_path / "none")  # type: ignore[call-arg]
    assert "cannot read" in (check_exposure(missing, allow_unauthenticated=True) or "")
