"""The Python client and the ``stt`` command against a fake gateway (httpx.MockTransport)."""

from __future__ import annotations

import email
import email.policy
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import Progress, main
from gateway.client import Job, SttClient, SttConnectionError, SttError

Handler = Callable[[httpx.Request], httpx.Response]


def job_body(
    job_id: str, status: str = "queued", progress: float = 0.0, **extra: Any
) -> dict[str, Any]:
    return {
        "id": job_id,
        "status": status,
        "model": "tiny.en",
        "progress": progress,
        "error": None,
        "created_at": "2026-11-25T10:46:33.911324Z",
        **extra,
    }


def form_fields(request: httpx.Request) -> dict[str, Any]:
    """The multipart form of a request: text fields as str, files as (filename, type, bytes)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + request.content, policy=email.policy.HTTP)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        # A form part has a name, and decode=True gives its bytes.
        assert isinstance(name, str) and isinstance(payload, bytes)
        if part.get_filename():
            fields[name] = (part.get_filename(), part.get_content_type(), payload)
        else:
            fields[name] = payload.decode()
    return fields


def client_for(handler: Handler, **kwargs: Any) -> SttClient:
    return SttClient("http://gw.test", transport=httpx.MockTransport(handler), **kwargs)


class FakeGateway:
    """Answers like the gateway: a job moves one step per poll; files named bad* fail,
    cancel* are cancelled, refused* get a 422."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.steps: dict[str, list[dict[str, Any]]] = {}
        self.polls: dict[str, int] = {}

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and parts == ["v1", "jobs"]:
            return self._create(form_fields(request)["file"][0])
        job = self.jobs.get(parts[2]) if len(parts) > 2 else None
        if job is None:
            return httpx.Response(404, json={"detail": "job not found"})
        if len(parts) == 4:
            return self._result(job, request.url.params.get("format", "json"))
        self.polls[job["id"]] = self.polls.get(job["id"], 0) + 1
        if self.steps[job["id"]]:
            job.update(self.steps[job["id"]].pop(0))
        return httpx.Response(200, json=job)

    def _create(self, filename: str) -> httpx.Response:
        if filename.startswith("refused"):
            return httpx.Response(422, json={"detail": "invalid job options: beam_size"})
        job_id = f"job-{len(self.jobs) + 1}"
        self.jobs[job_id] = job_body(job_id, filename=filename)
        running = {"status": "processing", "progress": 0.5}
        final: dict[str, Any] = {"status": "succeeded", "progress": 1.0}
        if filename.startswith("bad"):
            error = {"code": "bad_audio", "message": "not a readable audio or video file"}
            final = {"status": "failed", "error": error}
        if filename.startswith("cancel"):
            final = {"status": "cancelled"}
        self.steps[job_id] = [running, dict(running), final]
        return httpx.Response(202, json=self.jobs[job_id])

    def _result(self, job: dict[str, Any], fmt: str) -> httpx.Response:
        text = f"hello from {job['filename']}"
        if fmt in ("json", "verbose_json"):
            return httpx.Response(200, json={"text": text, "segments": []})
        if fmt == "srt":
            return httpx.Response(200, text=f"1\n00:00:00,000 --> 00:00:01,000\n{text}\n")
        return httpx.Response(200, text=f"{text}\n")


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


# -- the stt command --------------------------------------------------------------------


def run_cli(gateway: FakeGateway, *args: str) -> int:
    return main([*args, "--url", "http://gw.test"], transport=gateway.transport)


def test_transcribe_without_wait_prints_one_id_per_file(
    audio: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gw = FakeGateway()
    a, b = audio("a.flac"), audio("b.mp3")
    assert run_cli(gw, "transcribe", str(a), str(b)) == 0
    out = capsys.readouterr().out
    assert out == f"job-1\t{a}\njob-2\t{b}\n"
    assert all(job["status"] == "queued" for job in gw.jobs.values())


def test_a_refused_submission_exits_1_and_the_others_still_go(
    audio: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gw = FakeGateway()
    good, refused = audio("a.flac"), audio("refused.flac")
    assert run_cli(gw, "transcribe", str(refused), str(good)) == 1
    captured = capsys.readouterr()
    assert captured.out == f"job-1\t{good}\n"
    assert f"{refused}: refused (422: invalid job options: beam_size)" in captured.err


@pytest.mark.parametrize(
    ("fmt", "ext"),
    [("text", "txt"), ("json", "json"), ("verbose_json", "json"), ("srt", "srt"), ("vtt", "vtt")],
)
def test_wait_out_writes_one_file_per_input_named_by_stem(
    audio: Callable[[str], Path], tmp_path: Path, fmt: str, ext: str
) -> None:
    gw = FakeGateway()
    out = tmp_path / "out" / "nested"
    files = [str(audio("a.flac")), str(audio("b.speech.mp3"))]
    assert (
        run_cli(
            gw, "transcribe", *files, "--wait", "--poll", "0", "--format", fmt, "--out", str(out)
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [f"a.{ext}", f"b.speech.{ext}"]
    written = (out / f"a.{ext}").read_text()
    assert "hello from a.flac" in written
    if ext == "json":
        assert json.loads(written)["text"] == "hello from a.flac"


def test_a_failed_job_exits_1_with_its_reason_and_the_good_results_are_written(
    audio: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = FakeGateway()
    out = tmp_path / "out"
    names = ["a.flac", "bad.wav", "c.flac", "cancelme.mp3"]
    files = [str(audio(name)) for name in names]
    code = run_cli(gw, "transcribe", *files, "--poll", "0", "--format", "srt", "--out", str(out))
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.srt", "c.srt"]
    err = capsys.readouterr().err
    assert f"stt: {files[1]}: failed: bad_audio: not a readable audio or video file\n" in err
    assert f"stt: {files[3]}: cancelled\n" in err
    assert "Traceback" not in err


def test_several_results_on_stdout_get_tail_style_headers(
    audio: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gw = FakeGateway()
    a, b = str(audio("a.flac")), str(audio("b.flac"))
    assert run_cli(gw, "transcribe", a, b, "--wait", "--poll", "0") == 0
    out = capsys.readouterr().out
    assert out == f"==> {a} <==\nhello from a.flac\n\n==> {b} <==\nhello from b.flac\n"

    assert run_cli(gw, "transcribe", a, "--wait", "--poll", "0") == 0
    assert capsys.readouterr().out == "hello from a.flac\n"  # one file: no header


def test_progress_off_a_terminal_prints_only_status_changes(
    audio: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gw = FakeGateway()
    a, bad = str(audio("a.flac")), str(audio("bad.wav"))
    run_cli(gw, "transcribe", a, bad, "--wait", "--poll", "0")
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if not line.startswith("stt:")]
    assert progress == [
        f"{a}: queued (job job-1)",
        f"{bad}: queued (job job-2)",
        f"{a}: processing",
        f"{bad}: processing",
        f"{a}: succeeded",
        f"{bad}: failed: bad_audio: not a readable audio or video file",
    ]
    assert gw.polls == {"job-1": 3, "job-2": 3}  # polled twice while processing, logged once
    assert "\x1b[" not in err


def test_progress_on_a_terminal_redraws_its_lines_in_place() -> None:
    stream = io.StringIO()
    progress = Progress(["a.flac", "long-name.mp3"], stream, tty=True, bar=10)
    progress.update([Job.from_dict(job_body("1")), Job.from_dict(job_body("2"))])
    progress.update(
        [Job.from_dict(job_body("1", "processing", 0.5)), Job.from_dict(job_body("2", "succeeded"))]
    )
    first, second = stream.getvalue().split("\r\x1b[2A")
    assert first.count("\x1b[2K") == 2 and first.count("\n") == 2
    lines = second.replace("\x1b[2K", "").splitlines()
    assert lines == [
        "a.flac        [#####-----]  50% processing",
        "long-name.mp3 [##########] 100% succeeded",
    ]


def test_an_unreachable_gateway_exits_2_with_one_line(
    audio: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    code = main(
        ["transcribe", str(audio("a.flac")), "--url", "http://gw.test"],
        transport=httpx.MockTransport(refuse),
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("stt: cannot reach the gateway at http://gw.test")


def test_input_problems_exit_2_before_anything_is_submitted(
    audio: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = FakeGateway()
    a = str(audio("a.flac"))
    assert run_cli(gw, "transcribe", a, str(tmp_path / "missing.flac")) == 2
    assert "missing.flac: no such file" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.mp3").write_bytes(b"x")
    assert run_cli(gw, "transcribe", a, str(other / "a.mp3"), "--out", str(tmp_path / "o")) == 2
    assert "would both be written to" in capsys.readouterr().err
    assert gw.jobs == {}
    with pytest.raises(SystemExit) as usage:
        run_cli(gw, "transcribe", a, "--format", "docx")
    assert usage.value.code == 2


def test_status_result_cancel_and_models_commands(
    audio: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    gw = FakeGateway()
    run_cli(gw, "transcribe", str(audio("a.flac")))
    capsys.readouterr()
    assert run_cli(gw, "status", "job-1") == 0
    assert json.loads(capsys.readouterr().out)["id"] == "job-1"
    assert run_cli(gw, "result", "job-1", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == {"text": "hello from a.flac", "segments": []}
    assert run_cli(gw, "status", "nope") == 1
    assert capsys.readouterr().err == "stt: the gateway answered 404: job not found\n"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            tiny = {"id": "tiny.en", "daemons": 2, "capacity": 6, "in_flight": 1}
            return httpx.Response(200, json={"object": "list", "data": [tiny, {"id": "base"}]})
        return httpx.Response(200, json=job_body("job-1", "cancelled"))

    assert main(["cancel", "job-1"], transport=httpx.MockTransport(handler)) == 0
    assert capsys.readouterr().out == "job-1\tcancelled\n"
    assert main(["models"], transport=httpx.MockTransport(handler)) == 0
    assert capsys.readouterr().out == "tiny.en\t2 daemon(s), 1/6 busy\nbase\n"


@pytest.mark.parametrize(
    ("trouble", "code"),
    [(KeyboardInterrupt(), 130), (httpx.ConnectError("Connection refused"), 2)],
)
def test_an_interrupted_wait_leaves_the_job_ids_behind(
    audio: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
    trouble: BaseException,
    code: int,
) -> None:
    gw = FakeGateway()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            raise trouble
        return gw.handle(request)

    a = str(audio("a.flac"))
    assert (
        main(["transcribe", a, "--wait", "--poll", "0"], transport=httpx.MockTransport(handler))
        == code
    )
    err = capsys.readouterr().err
    assert f"job-1\t{a}\tqueued\n" in err
    assert "Traceback" not in err
