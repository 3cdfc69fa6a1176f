"""``stt listen``, run as a real process against a real gateway, broker and daemon."""

from __future__ import annotations

import asyncio
import os
import re

import numpy as np
import pytest
from faster_whisper import decode_audio

from stack import JFK, REPO, STT, Gateway, Stack, normalise, stt

pytestmark = pytest.mark.integration

#: What tiny.en hears in jfk.flac in every live run.
WORDS = "what your country can do for you"
KEY = "listen-key-0123456789"
SESSION = re.compile(r"session (live-[0-9a-f]+)")


async def stt_stdin(data: bytes, *args: str, timeout: float = 180) -> tuple[int, str, str]:
    """``stt ARGS`` with ``data`` on its stdin."""
    environ = {k: v for k, v in os.environ.items() if k not in ("STT_URL", "STT_API_KEY")}
    proc = await asyncio.create_subprocess_exec(
        *STT,
        *args,
        cwd=REPO,
        env=environ,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def succeeded(gw: Gateway, stderr: str, key: str | None = None) -> str:
    """The text of the session the command named on stderr, once recorded."""
    match = SESSION.search(stderr)
    assert match, stderr
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with gw.client(headers=headers) as client:
        for _ in range(100):
            job = (await client.get(f"/v1/jobs/{match.group(1)}")).json()
            if job["status"] != "processing":
                break
            await asyncio.sleep(0.2)
        assert job["status"] == "succeeded", job
        result = (await client.get(f"/v1/jobs/{match.group(1)}/result")).json()
    text: str = result["text"]
    return text


async def test_listen_prints_committed_lines_from_a_file_and_from_stdin(stack: Stack) -> None:
    gw = await stack.gateway()
    await stack.daemon()
    code, stdout, stderr = await stt("listen", str(JFK), "--fast", "--url", gw.url)
    assert code == 0, stderr
    assert WORDS in normalise(stdout), stdout
    # Not a terminal: committed lines only, no redrawn tail.
    assert "\r" not in stdout and "\x1b[" not in stdout
    assert normalise(await succeeded(gw, stderr)) == normalise(stdout)

    samples = decode_audio(str(JFK), sampling_rate=16000)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    code, stdout, stderr = await stt_stdin(pcm, "listen", "-", "--fast", "--url", gw.url)
    assert code == 0, stderr
    assert WORDS in normalise(stdout), stdout


async def test_listen_needs_the_key_and_says_why_it_stops(stack: Stack) -> None:
    gw = await stack.gateway(STT_API_KEYS=KEY)
    code, stdout, stderr = await stt_stdin(b"", "listen", "-", "--url", gw.url, "--api-key", "no")
    assert code == 1 and stdout == ""
    assert "refused the websocket: HTTP 403" in stderr
    # The key from the environment, as the other commands take it; no audio is a session too.
    code, stdout, stderr = await stt_stdin(b"", "listen", "-", "--url", gw.url)
    assert code == 1
    env_code, _, env_stderr = await stt("listen", str(JFK), "--url", gw.url, STT_API_KEY="bad")
    assert env_code == 1 and "HTTP 403" in env_stderr
    code, stdout, stderr = await stt_stdin(b"", "listen", "-", "--url", gw.url, "--api-key", KEY)
    assert code == 0, stderr
    assert await succeeded(gw, stderr, KEY) == ""
    code, _, stderr = await stt("listen", str(JFK), "--url", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach the gateway" in stderr
    code, _, stderr = await stt("listen", "no-such-file.flac", "--url", gw.url)
    assert code == 2 and "no such file" in stderr
