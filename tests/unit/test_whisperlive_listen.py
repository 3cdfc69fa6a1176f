"""``stt listen`` without a gateway: URLs, audio chunks, and what the terminal shows."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.listen import (
    CHUNK_BYTES,
    ListenError,
    ListenOptions,
    LiveText,
    file_pcm,
    paced,
    raw_pcm,
    websocket_url,
)
from stack import JFK


def segment(text: str, start: float, end: float, completed: bool) -> dict[str, object]:
    return {"start": f"{start:.3f}", "end": f"{end:.3f}", "text": text, "completed": completed}


@pytest.mark.parametrize(
    ("http", "ws"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/"),
        ("https://stt.example/", "wss://stt.example/"),
        ("https://proxy.example/stt", "wss://proxy.example/stt/"),
    ],
)
def test_the_websocket_url_of_a_gateway(http: str, ws: str) -> None:
    assert websocket_url(http) == ws


def test_the_options_ask_for_int16_and_the_defaults_of_the_gateway() -> None:
    message = ListenOptions(language="en").message()
    assert message["audio_format"] == "int16" and message["language"] == "en"
    assert message["model"] is None and message["task"] == "transcribe" and message["use_vad"]


def test_a_pipe_gets_committed_lines_only() -> None:
    out = io.StringIO()
    text = LiveText(out, tty=False)
    text.segments([segment(" Ask", 0, 0.5, False)])
    text.segments([segment(" Ask not.", 0, 1, True), segment(" And", 1.2, 1.4, False)])
    text.segments([segment(" Ask not.", 0, 1, True), segment(" And so.", 1.2, 2, True)])
    text.clear()
    assert out.getvalue() == "Ask not.\nAnd so.\n"


def test_a_terminal_sees_the_tail_redrawn_in_place() -> None:
    out = io.StringIO()
    text = LiveText(out, tty=True)
    text.segments([segment(" Ask", 0, 0.5, False)])
    text.segments([segment(" Ask not", 0, 0.9, False)])
    text.segments([segment(" Ask not.", 0, 1, True)])
    text.segments([segment(" Ask not.", 0, 1, True), segment(" And", 1.2, 1.4, False)])
    text.clear()
    assert out.getvalue() == (
        "\r\x1b[2KAsk\r\x1b[2KAsk not\r\x1b[2KAsk not.\n\r\x1b[2KAnd\r\x1b[2K"
    )


def test_a_long_tail_keeps_its_newest_words() -> None:
    out = io.StringIO()
    LiveText(out, tty=True).segments([segment(" word" * 100, 0, 9, False)])
    drawn = out.getvalue().removeprefix("\r\x1b[2K")
    assert drawn.startswith("…") and drawn.endswith("word") and len(drawn) == 79


async def test_chunks_are_whole_samples_and_fast_does_not_wait() -> None:
    parts = [b"\1" * 3, b"\2" * (CHUNK_BYTES + 2), b"\3"]
    chunks = [c async for c in paced(iter(parts), fast=True)]
    assert [len(c) for c in chunks] == [CHUNK_BYTES, 6]
    assert b"".join(chunks) == b"".join(parts)
    chunks = [c async for c in paced(iter([b"\1" * 5]), fast=True)]
    assert chunks == [b"\1" * 4]  # a lone last byte is no sample


async def test_real_time_pace() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks = [c async for c in paced(iter([b"\0" * CHUNK_BYTES * 3]), fast=False)]
    # Three quarter-seconds: the third goes half a second after the first.
    assert len(chunks) == 3 and 0.45 < loop.time() - started < 1.5


def test_stdin_and_files() -> None:
    assert b"".join(raw_pcm(io.BytesIO(b"abcd" * 5000))) == b"abcd" * 5000
    pcm = b"".join(file_pcm(JFK))
    assert abs(len(pcm) / 32000 - 11.0) < 0.1  # jfk.flac is 11 s


def test_a_file_that_is_not_audio(tmp_path: Path) -> None:
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"not audio at all" * 100)
    with pytest.raises(ListenError, match=r"cannot decode|no audio"):
        file_pcm(junk)


def test_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["listen", "-", "--fast", "--language", "en", "--no-vad"])
    assert args.source == "-" and args.fast and args.language == "en" and args.no_vad
    assert main(["listen", "no-such.flac", "--url", "http://127.0.0.1:9"]) == 2
    assert "no-such.flac: no such file" in capsys.readouterr().err
