"""The ``stt`` command against a fake gateway (httpx.MockTransport)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from fakegateway import FakeGateway, job_body
from gateway.cli import Progress, main
from gateway.client import Job


@pytest.fixture
def audio(tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"RIFF fake audio " + name.encode())
        return path

    return make


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
