"""Command lines: `stt` global options; `stt-gateway` original flags and its one access line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import __main__ as gateway_main
from gateway.cli import build_parser, main

# --- stt ----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_stt_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STT_URL", raising=False)
    monkeypatch.delenv("STT_API_KEY", raising=False)


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", "http://gw.test:9", "transcribe", "a.flac"],
        ["transcribe", "a.flac", "--url", "http://gw.test:9"],
        ["transcribe", "--url", "http://gw.test:9", "a.flac"],
    ],
)
def test_url_is_accepted_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert args.url == "http://gw.test:9"
    assert args.files == ["a.flac"]


def test_url_after_the_command_wins_over_one_before() -> None:
    args = build_parser().parse_args(["--url", "http://first", "models", "--url", "http://second"])
    assert args.url == "http://second"


def test_url_comes_from_stt_url_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_URL", "http://from-env:8123")
    assert build_parser().parse_args(["models"]).url == "http://from-env:8123"
    assert build_parser().parse_args(["--url", "http://flag", "models"]).url == "http://flag"


def test_url_defaults_to_loopback() -> None:
    assert build_parser().parse_args(["models"]).url == "http://127.0.0.1:8000"


def _models_gateway(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": [{"id": "tiny.en"}]})

    return httpx.MockTransport(handler)


def test_global_options_before_the_command_reach_the_gateway(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[httpx.Request] = []
    argv = ["--url", "http://gw.test:9", "--api-key", "k-1", "models"]
    assert main(argv, transport=_models_gateway(seen)) == 0
    assert str(seen[0].url) == "http://gw.test:9/v1/models"
    assert seen[0].headers["Authorization"] == "Bearer k-1"
    assert capsys.readouterr().out.strip() == "tiny.en"


def test_api_key_comes_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STT_API_KEY", "from-env")
    seen: list[httpx.Request] = []
    assert main(["models", "--url", "http://gw.test"], transport=_models_gateway(seen)) == 0
    assert seen[0].headers["Authorization"] == "Bearer from-env"


# --- stt-gateway ----------------------------------------------------------------


def test_gateway_accepts_the_original_noreload_flag() -> None:
    assert gateway_main.parse_args(["--noreload"]).reload is False
    assert gateway_main.parse_args(["--port", "8001", "--noreload"]).port == 8001
    # The last of the two wins, as with any pair of opposite flags.
    assert gateway_main.parse_args(["--noreload", "--reload"]).reload is True
    assert gateway_main.parse_args(["--reload", "--noreload"]).reload is False


def test_gateway_leaves_access_lines_to_its_own_middleware(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **kw: calls.append(kw))
    monkeypatch.delenv("STT_GATEWAY_WORKERS", raising=False)
    gateway_main.main(["--noreload"])
    assert calls[0]["access_log"] is False
    assert calls[0]["reload"] is False


# --- stt: speakers ------------------------------------------------------------------


def _recording_gateway(forms: list[bytes], result: str = "") -> httpx.MockTransport:
    """Takes jobs (recording their forms), says they succeeded, answers ``result``."""

    def handler(request: httpx.Request) -> httpx.Response:
        job = {"id": "j1", "status": "succeeded", "progress": 1.0, "model": "tiny.en"}
        if request.method == "POST":
            forms.append(request.content)
            return httpx.Response(202, json={**job, "status": "queued"})
        if request.url.path.endswith("/result"):
            return httpx.Response(200, text=result)
        return httpx.Response(200, json=job)

    return httpx.MockTransport(handler)


def _field(form: bytes, name: str) -> str | None:
    """A text field of a multipart form, or None."""
    marker = f'name="{name}"\r\n\r\n'.encode()
    if marker not in form:
        return None
    return form.split(marker, 1)[1].split(b"\r\n", 1)[0].decode()


def test_speaker_options_are_parsed() -> None:
    argv = ["transcribe", "a.flac", "--diarize", "speakers", "--min-speakers", "2"]
    args = build_parser().parse_args([*argv, "--max-speakers", "4", "--format", "rttm"])
    assert (args.diarize, args.min_speakers, args.max_speakers) == ("speakers", 2, 4)
    assert args.num_speakers is None and args.format == "rttm"
    assert build_parser().parse_args(["result", "j1", "--format", "diarized_json"]).format


@pytest.mark.parametrize("count", ["0", "33", "two", "1.5"])
def test_a_speaker_count_out_of_range_is_a_usage_error(
    count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(
            ["transcribe", "a.flac", "--diarize", "speakers", "--num-speakers", count]
        )
    assert usage.value.code == 2
    assert "whole number from 1 to 32" in capsys.readouterr().err


def test_speaker_options_reach_the_gateway(tmp_path: Path) -> None:
    audio = tmp_path / "call.wav"
    audio.write_bytes(b"RIFF....WAVE")
    forms: list[bytes] = []
    argv = ["transcribe", str(audio), "--diarize", "speakers", "--num-speakers", "3"]
    assert main([*argv, "--url", "http://gw.test"], transport=_recording_gateway(forms)) == 0
    assert _field(forms[0], "diarize") == "speakers"
    assert _field(forms[0], "num_speakers") == "3"
    assert _field(forms[0], "min_speakers") is None


def test_format_rttm_turns_speakers_on_and_writes_an_rttm_file(tmp_path: Path) -> None:
    audio = tmp_path / "call.wav"
    audio.write_bytes(b"RIFF....WAVE")
    rttm = "SPEAKER j1 1 0.000 1.200 <NA> <NA> SPEAKER_00 <NA> <NA>\n"
    forms: list[bytes] = []
    argv = ["transcribe", str(audio), "--format", "rttm", "--out", str(tmp_path / "out")]
    argv += ["--poll", "0", "--url", "http://gw.test"]
    assert main(argv, transport=_recording_gateway(forms, rttm)) == 0
    assert _field(forms[0], "diarize") == "speakers"
    assert (tmp_path / "out" / "call.rttm").read_text() == rttm


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (["--num-speakers", "2"], "--num-speakers needs --diarize speakers"),
        (
            ["--diarize", "channels", "--max-speakers", "2"],
            "--max-speakers needs --diarize speakers",
        ),
        (
            ["--diarize", "speakers", "--num-speakers", "2", "--max-speakers", "3"],
            "give --num-speakers, or --min-speakers/--max-speakers, not both",
        ),
        (
            ["--diarize", "speakers", "--min-speakers", "3", "--max-speakers", "2"],
            "--min-speakers (3) is more than --max-speakers (2)",
        ),
        (["--diarize", "none", "--format", "rttm"], "--format rttm lists speakers"),
    ],
)
def test_contradictory_speaker_options_exit_2_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], reason: str
) -> None:
    audio = tmp_path / "call.wav"
    audio.write_bytes(b"RIFF....WAVE")
    forms: list[bytes] = []
    argv = ["transcribe", str(audio), *options, "--url", "http://gw.test"]
    assert main(argv, transport=_recording_gateway(forms)) == 2
    assert reason in capsys.readouterr().err
    assert forms == []
