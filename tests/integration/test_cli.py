"""The ``stt`` command, run as a real process against a real gateway, broker and daemon."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stack import HOTWORDS, JFK, JFK_WORDS, Stack, normalise, stt
from stt_daemon.localbroker import free_port

pytestmark = pytest.mark.integration

# The installed console script when there is one, so its entry point is tested too.
CUE_TIME = re.compile(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$")


def assert_valid_srt(text: str) -> None:
    """Cues numbered 1, 2, 3... each with a time line and some text."""
    blocks = text.strip().split("\n\n")
    assert blocks, text
    for number, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        assert lines[0] == str(number), block
        assert CUE_TIME.match(lines[1]), block
        assert lines[2].strip(), block


async def test_transcribe_wait_writes_one_srt_per_file(stack: Stack, tmp_path: Path) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    out = tmp_path / "subs"
    code, stdout, stderr = await stt(
        "transcribe", str(JFK), str(HOTWORDS), "--url", gw.url, "--wait",
        "--format", "srt", "--out", str(out), "--language", "en",
    )  # fmt: skip
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["hotwords.srt", "jfk.srt"]
    jfk = (out / "jfk.srt").read_text()
    assert JFK_WORDS in normalise(jfk)
    assert_valid_srt(jfk)
    assert_valid_srt((out / "hotwords.srt").read_text())
    assert stdout == ""
    # Not a terminal: one progress line per status change, never bar frames.
    assert f"{JFK}: succeeded" in stderr.splitlines()
    assert "\x1b[" not in stderr


async def test_a_garbage_file_fails_alone_and_the_good_ones_are_written(
    stack: Stack, tmp_path: Path
) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all " * 200)
    out = tmp_path / "texts"
    code, _, stderr = await stt(
        "transcribe", str(JFK), str(garbage), str(HOTWORDS), "--url", gw.url, "--out", str(out)
    )
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["hotwords.txt", "jfk.txt"]
    assert JFK_WORDS in normalise((out / "jfk.txt").read_text())
    reason = [line for line in stderr.splitlines() if line.startswith(f"stt: {garbage}")]
    assert len(reason) == 1 and "failed: bad_audio" in reason[0], stderr
    assert "Traceback" not in stderr


async def test_ids_printed_without_wait_are_found_by_status_and_result(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    # The gateway from $STT_URL this time.
    code, stdout, stderr = await stt("transcribe", str(JFK), STT_URL=gw.url)
    assert code == 0, stderr
    job_id, name = stdout.strip().split("\t")
    assert name == str(JFK)

    code, stdout, _ = await stt("status", job_id, "--url", gw.url)
    assert code == 0
    job = json.loads(stdout)
    assert job["id"] == job_id and job["filename"] == "jfk.flac"

    await gw.wait_final(job_id)
    code, stdout, _ = await stt("result", job_id, "--format", "vtt", STT_URL=gw.url)
    assert code == 0
    assert stdout.startswith("WEBVTT\n") and JFK_WORDS in normalise(stdout)


async def test_refusals_and_an_unreachable_gateway_are_one_clear_line(stack: Stack) -> None:
    gw = await stack.gateway()
    code, stdout, stderr = await stt("transcribe", str(JFK), "--url", gw.url, "--model", "large-v9")
    assert code == 1 and stdout == ""
    assert "refused (400: unknown model 'large-v9'" in stderr

    code, _, stderr = await stt("status", "no-such-job", "--url", gw.url)
    assert (code, stderr) == (1, "stt: the gateway answered 404: job not found\n")

    nowhere = f"http://127.0.0.1:{free_port()}"
    code, _, stderr = await stt("transcribe", str(JFK), "--wait", "--url", nowhere)
    assert code == 2
    assert stderr.startswith(f"stt: cannot reach the gateway at {nowhere}")
    assert stderr.count("\n") == 1
