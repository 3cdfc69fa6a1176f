"""Command lines: `stt` global options; `stt-gateway` original flags and its one access line."""

from __future__ import annotations

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
