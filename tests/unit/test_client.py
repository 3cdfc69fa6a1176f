"""The Python client against a fake gateway (httpx.MockTransport).

The ``stt`` command's tests are in test_stt_command.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakegateway import client_for, form_fields, job_body
from gateway.client import Job, SttClient, SttConnectionError, SttError


@pytest.fixture
def audio(tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"RIFF fake audio " + name.encode())
        return path

    return make


# -- client -------------------------------------------------------------------------------


def test_the_client_and_the_command_need_only_httpx() -> None:
    # `pip install "stt-jobs[client]"` hosts have no FastAPI, and need no broker client.
    code = (
        "import sys, gateway.client, gateway.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'fastapi', 'starlette', 'aio_pika', 'stt_daemon', 'pydantic', 'uvicorn'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_submit_sends_the_file_and_only_the_options_given() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=job_body("j1"))

    with client_for(handler) as stt:
        job = stt.submit(
            b"flac bytes",
            filename="talk.flac",
            language="en",
            word_timestamps=True,
            vad_filter=False,
            beam_size=3,
            temperature=0.0,
            split=False,
        )
    assert (seen[0].method, seen[0].url.path) == ("POST", "/v1/jobs")
    assert form_fields(seen[0]) == {
        "file": ("talk.flac", "audio/flac", b"flac bytes"),
        "language": "en",
        "word_timestamps": "true",
        "vad_filter": "false",
        "beam_size": "3",
        "temperature": "0.0",
        "split": "false",
    }
    assert (job.id, job.status, job.model, job.progress) == ("j1", "queued", "tiny.en", 0.0)
    assert isinstance(job.created_at, datetime) and job.created_at.tzinfo is not None
    assert job.raw["created_at"] == "2026-11-25T10:46:33.911324Z"


def test_submit_reads_a_path_under_its_own_name(audio: Callable[[str], Path]) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(form_fields(request))
        return httpx.Response(202, json=job_body("j1"))

    with client_for(handler) as stt:
        stt.submit(audio("speech.mp3"), model="tiny.en", task="translate")
    assert seen[0]["file"] == ("speech.mp3", "audio/mpeg", b"RIFF fake audio speech.mp3")
    assert (seen[0]["model"], seen[0]["task"]) == ("tiny.en", "translate")


def test_url_and_api_key_default_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STT_URL", "http://stt.internal:9000/")
    monkeypatch.setenv("STT_API_KEY", "s3cret")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=job_body("j1"))

    with SttClient(transport=httpx.MockTransport(handler)) as stt:
        stt.get("j1")
    assert str(seen[0].url) == "http://stt.internal:9000/v1/jobs/j1"
    assert seen[0].headers["authorization"] == "Bearer s3cret"

    monkeypatch.delenv("STT_API_KEY")
    with SttClient(transport=httpx.MockTransport(handler)) as stt:
        stt.get("j1")
    assert "authorization" not in seen[1].headers


def test_submit_retries_429_after_the_time_retry_after_asks(
    audio: Callable[[str], Path],
) -> None:
    answers = [
        httpx.Response(429, json={"detail": "Queue limit reached"}, headers={"Retry-After": "0.1"}),
        httpx.Response(503, json={"detail": "unavailable"}, headers={"Retry-After": "0.1"}),
        httpx.Response(202, json=job_body("j1")),
    ]
    posts: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(form_fields(request))
        return answers.pop(0)

    started = time.monotonic()
    with client_for(handler) as stt:
        job = stt.submit(audio("a.flac"), language="en")
    assert job.id == "j1"
    # The whole upload again each time (the file is read anew).
    assert len(posts) == 3 and posts[0] == posts[2]
    assert posts[2]["file"][2] == b"RIFF fake audio a.flac" and posts[2]["language"] == "en"
    assert time.monotonic() - started >= 0.2


def test_submit_gives_up_after_max_tries_and_caps_the_wait() -> None:
    posts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        posts += 1
        return httpx.Response(
            429, json={"detail": "Queue limit reached"}, headers={"Retry-After": "3600"}
        )

    started = time.monotonic()
    stt = client_for(handler, max_tries=3, max_retry_wait=0.01)
    with stt, pytest.raises(SttError) as caught:
        stt.submit(b"audio")
    assert posts == 3
    assert time.monotonic() - started < 5
    assert caught.value.status_code == 429
    assert caught.value.detail == "Queue limit reached"


def test_a_503_without_retry_after_is_not_retried() -> None:
    posts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        posts += 1
        return httpx.Response(503, json={"detail": "no queue accepts jobs for model x"})

    with client_for(handler) as stt, pytest.raises(SttError, match="no queue accepts"):
        stt.submit(b"audio")
    assert posts == 1


@pytest.mark.parametrize(
    ("response", "status", "message"),
    [
        (httpx.Response(404, json={"detail": "job not found"}), 404, "job not found"),
        (
            httpx.Response(
                422,
                json={"detail": [{"loc": ["query", "format"], "msg": "Input should be 'json'"}]},
            ),
            422,
            "query.format: Input should be 'json'",
        ),
        (httpx.Response(502, text="Bad Gateway from the proxy"), 502, "Bad Gateway from the proxy"),
    ],
)
def test_errors_carry_the_gateways_detail(
    response: httpx.Response, status: int, message: str
) -> None:
    with client_for(lambda request: response) as stt, pytest.raises(SttError) as caught:
        stt.get("j1")
    assert caught.value.status_code == status
    assert caught.value.message == message
    assert str(caught.value) == f"{status}: {message}"


def test_an_unreachable_gateway_is_a_connection_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    with client_for(handler) as stt, pytest.raises(SttConnectionError) as caught:
        stt.get("j1")
    assert caught.value.status_code is None
    assert "cannot reach the gateway at http://gw.test" in str(caught.value)


def test_wait_polls_until_the_job_is_final() -> None:
    statuses = iter([("queued", 0.0), ("processing", 0.2), ("processing", 0.7), ("succeeded", 1.0)])

    def handler(request: httpx.Request) -> httpx.Response:
        status, progress = next(statuses)
        return httpx.Response(200, json=job_body("j1", status, progress))

    seen: list[Job] = []
    with client_for(handler) as stt:
        job = stt.wait("j1", poll=0, on_progress=seen.append)
    assert job.status == "succeeded" and job.is_final
    assert [(j.status, j.progress) for j in seen] == [
        ("queued", 0.0),
        ("processing", 0.2),
        ("processing", 0.7),
        ("succeeded", 1.0),
    ]


def test_wait_gives_up_at_its_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=job_body("j1", "processing", 0.1))

    with client_for(handler) as stt, pytest.raises(TimeoutError, match="still processing"):
        stt.wait("j1", poll=0.01, timeout=0.05)


def test_result_is_a_dict_for_json_formats_and_text_for_the_others() -> None:
    formats: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fmt = request.url.params.get("format")
        formats.append(fmt)
        if fmt in ("json", "verbose_json"):
            return httpx.Response(200, json={"text": "hello"})
        return httpx.Response(200, text="1\n00:00:00,000 --> 00:00:01,000\nhello\n")

    with client_for(handler) as stt:
        assert stt.result("j1") == {"text": "hello"}
        assert stt.result("j1", "verbose_json") == {"text": "hello"}
        assert stt.result("j1", format="srt") == "1\n00:00:00,000 --> 00:00:01,000\nhello\n"
    assert formats == ["json", "verbose_json", "srt"]


def test_submit_sends_the_speaker_options_given() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=job_body("j1"))

    with client_for(handler) as stt:
        stt.submit(b"x", filename="call.wav", diarize="speakers", min_speakers=2, max_speakers=5)
        stt.submit(b"x", filename="call.wav", diarize="speakers", num_speakers=3)
    first, second = (form_fields(r) for r in seen)
    assert (first["diarize"], first["min_speakers"], first["max_speakers"]) == (
        "speakers",
        "2",
        "5",
    )
    assert "num_speakers" not in first
    assert second["num_speakers"] == "3" and "min_speakers" not in second


def test_speaker_formats_come_back_as_their_type() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["format"] == "diarized_json":
            return httpx.Response(200, json={"task": "transcribe", "segments": []})
        return httpx.Response(200, text="SPEAKER j1 1 0.000 1.000 <NA> <NA> SPEAKER_00 <NA> <NA>\n")

    with client_for(handler) as stt:
        assert stt.result("j1", "diarized_json") == {"task": "transcribe", "segments": []}
        assert str(stt.result("j1", "rttm")).startswith("SPEAKER j1 1 0.000")


def test_a_failed_or_cancelled_job_says_why() -> None:
    failed = Job.from_dict(
        job_body("j1", "failed", error={"code": "bad_audio", "message": "not audio"})
    )
    assert failed.is_final and failed.reason == "bad_audio: not audio"
    cancelled = Job.from_dict(job_body("j2", "cancelled"))
    assert cancelled.is_final and cancelled.reason == "cancelled"
    assert Job.from_dict(job_body("j3", "succeeded")).reason == ""


@pytest.mark.parametrize("delete_answer", ["job", "empty"])
def test_cancel_returns_the_job_as_it_stands(delete_answer: str) -> None:
    requests: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append((request.method, request.url.path))
        if request.method == "DELETE" and delete_answer == "empty":
            return httpx.Response(204)
        return httpx.Response(200, json=job_body("j1", "cancelled"))

    with client_for(handler) as stt:
        assert stt.cancel("j1").status == "cancelled"
    assert requests[0] == ("DELETE", "/v1/jobs/j1")


@pytest.mark.parametrize(
    "body",
    [
        {"object": "list", "data": [{"id": "tiny.en"}, {"id": "base"}]},
        {"models": ["tiny.en", "base"]},
        ["tiny.en", "base"],
    ],
)
def test_models_accepts_the_usual_list_shapes(body: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/models"
        return httpx.Response(200, json=body)

    with client_for(handler) as stt:
        assert [m["id"] for m in stt.models()] == ["tiny.en", "base"]
