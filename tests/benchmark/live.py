"""Live transcription: latencies, accuracy against offline, broker overhead, capacity.

Real speech (tests/data/jfk.flac, several times with pauses between) is streamed
at real-time pace into live sessions that run here as a gateway runs them, whose
windows go through the broker to a real tiny.en daemon. For each committed word:
when it was first shown (in a tentative tail or committed) and when it was
committed, against when its audio had been sent. The comparison, in the same run:
faster-whisper itself transcribing the whole recording offline (its text is the
WER reference) and the daemon's own compute time per window (the rest of a
window's latency is the broker and the gateway), and the floor under that
overhead on this machine: the same windows through a bare aio-pika round trip
(tests/benchmark/amqp_floor.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import numpy as np
from amqp_floor import Window, replay
from common import Context, Row, percentile

from gateway.agreement import TimedWord
from gateway.livebroker import LiveClient
from gateway.livesession import (
    Hypothesis,
    LiveLimits,
    LiveSession,
    SessionOptions,
    SpeechStopped,
    Utterance,
)
from stack import JFK, normalise
from stt_daemon.common.liveprotocol import LiveReply, WindowOptions
from wer import word_error_rate

SECTION = "live"
CHUNK_S = 0.1


def speech(copies: int, gap: float = 1.5) -> bytes:
    """jfk.flac ``copies`` times with ``gap`` seconds of silence after each, as PCM16."""
    from faster_whisper import decode_audio

    samples = decode_audio(str(JFK), sampling_rate=16000)
    silence = np.zeros(int(16000 * gap), dtype=np.float32)
    joined = np.concatenate([part for _ in range(copies) for part in (samples, silence)])
    pcm: bytes = (np.clip(joined, -1, 1) * 32767).astype("<i2").tobytes()
    return pcm


def offline_text(pcm: bytes) -> str:
    """faster-whisper on the whole recording, as a batch job would see it."""
    from faster_whisper import WhisperModel

    from stt_daemon.models import resolve

    model = WhisperModel(str(resolve("tiny.en").path), device="cpu", compute_type="int8")
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    segments, _ = model.transcribe(samples)
    return normalise(" ".join(s.text for s in segments))


@dataclass
class Trace:
    """One session's timeline: when audio went in, and when words came out."""

    started: float = 0.0
    first_seen: dict[tuple[str, int], float] = field(default_factory=dict)
    committed: list[tuple[TimedWord, float]] = field(default_factory=list)
    completed: list[float] = field(default_factory=list)
    text: str = ""
    window_latency: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)

    def seen(self, word: TimedWord, now: float) -> None:
        # A word is the same word across hypotheses if its text agrees and it starts
        # within half a second (its times move a little).
        self.first_seen.setdefault((word.key, round(word.start * 2)), now)

    def shown_at(self, word: TimedWord) -> float | None:
        for delta in (0, -1, 1):
            if (at := self.first_seen.get((word.key, round(word.start * 2) + delta))) is not None:
                return at
        return None

    def partial_latencies(self) -> list[float]:
        found = []
        for word, _ in self.committed:
            shown = self.shown_at(word)
            if shown is not None:
                found.append(shown - (self.started + word.end))
        return found

    def commit_latencies(self) -> list[float]:
        return [at - (self.started + word.end) for word, at in self.committed]


class RecordingClient(LiveClient):
    """A LiveClient that keeps each answered window's size and the daemon's time on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.windows: list[Window] = []

    async def transcribe(
        self, model: str, pcm: bytes, options: WindowOptions, *, wait: float
    ) -> LiveReply:
        reply = await super().transcribe(model, pcm, options, wait=wait)
        self.windows.append(Window(len(pcm), reply.compute_s))
        return reply


async def one_session(client: LiveClient, pcm: bytes, name: str) -> Trace:
    """Stream ``pcm`` at real-time pace through one session; its trace."""
    session = LiveSession(name, SessionOptions(model="tiny.en"), client, LiveLimits())
    trace = Trace()
    stopped_at: list[float] = []
    session.start()
    chunk = int(CHUNK_S * 16000) * 2

    async def feed() -> None:
        trace.started = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), chunk)):
            # Paced on the clock, not by sleeps that add up: chunk n at n x 100 ms.
            delay = trace.started + index * CHUNK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await session.feed(pcm[offset : offset + chunk])
        session.finish()

    feeder = asyncio.create_task(feed())
    async for event in session.events():
        now = time.monotonic()
        if isinstance(event, Hypothesis):
            for word in [*event.committed, *event.tail]:
                trace.seen(word, now)
            trace.committed += [(word, now) for word in event.committed]
        elif isinstance(event, SpeechStopped):
            stopped_at.append(event.at)
        elif isinstance(event, Utterance) and stopped_at:
            trace.completed.append(now - (trace.started + stopped_at[-1]))
    await feeder
    assert session.ended is not None
    trace.text = normalise(session.ended.transcript.text)
    trace.window_latency = list(session.stats.latencies)
    trace.overhead = [
        latency - compute
        for latency, compute in zip(session.stats.latencies, session.stats.compute, strict=True)
    ]
    return trace


async def sessions(client: LiveClient, pcm: bytes, count: int) -> list[Trace]:
    return list(
        await asyncio.gather(*(one_session(client, pcm, f"bench-{i}") for i in range(count)))
    )


def pooled(traces: list[Trace], what: str) -> list[float]:
    return [value for trace in traces for value in getattr(trace, what)()]


def summary(traces: list[Trace], reference: str) -> dict[str, Any]:
    partial, commit = pooled(traces, "partial_latencies"), pooled(traces, "commit_latencies")
    completed = [v for t in traces for v in t.completed]
    overhead = [v for t in traces for v in t.overhead]
    return {
        "partial_p50": percentile(partial, 50),
        "partial_p95": percentile(partial, 95),
        "commit_p50": percentile(commit, 50),
        "completed_p50": percentile(completed, 50) if completed else float("nan"),
        "completed_max": max(completed) if completed else float("nan"),
        "overhead_p50": percentile(overhead, 50),
        "overhead_p99": percentile(overhead, 99),
        "wer": max(word_error_rate(reference, t.text) for t in traces),
        "windows": sum(len(t.window_latency) for t in traces),
        "worst_text": max(traces, key=lambda t: word_error_rate(reference, t.text)).text,
        "reference": reference,
    }


async def _batch_load(gateway_url: str, pcm: bytes, jobs: int) -> None:
    """Fill the batch queue with long jobs (a few minutes of speech each)."""
    import httpx

    wav = _wav(np.tile(np.frombuffer(pcm, dtype="<i2"), 6))
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60) as client:
        for _ in range(jobs):
            response = await client.post(
                "/v1/jobs", files={"file": ("long.wav", wav)}, data={"split": "false"}
            )
            response.raise_for_status()


def _wav(samples: np.ndarray[Any, Any]) -> bytes:
    import io
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


async def live(ctx: Context) -> list[Row]:
    """The ``live`` section."""
    copies = 2 if ctx.quick else 4
    pcm = speech(copies)
    reference = offline_text(pcm)
    stack = ctx.stack(SECTION)
    gateway = await stack.gateway()
    await stack.daemon(STT_PREFETCH="3")
    connection = await aio_pika.connect_robust(stack.amqp_url)
    client = RecordingClient(stack.names, stack.amqp_url, publish_timeout=5)
    await client.start(connection)
    results: dict[str, dict[str, Any]] = {}
    try:
        for count in (1, 2, 3) if ctx.quick else (1, 2, 3, 4):
            name = "1 session" if count == 1 else f"{count} sessions"
            client.windows.clear()
            results[name] = summary(await sessions(client, pcm, count), reference)
            if count == 1:
                # This machine's floor: the same windows through a bare aio-pika round trip.
                floor = await replay(stack.amqp_url, list(client.windows))
                results[name]["floor_p50"] = percentile(floor, 50)
                results[name]["floor_p99"] = percentile(floor, 99)
        await _batch_load(gateway.url, pcm, jobs=3)
        await asyncio.sleep(3)  # the long jobs are running
        results["1 session, batch queue full"] = summary(await sessions(client, pcm, 1), reference)
    finally:
        await connection.close()
    ctx.details["live"] = results
    return _rows(results, len(pcm) / 32000)


def _rows(results: dict[str, dict[str, Any]], audio_s: float) -> list[Row]:
    one = results["1 session"]
    rows = [
        Row(SECTION, "partial latency p50 (1 session)", one["partial_p50"], "s", target="<= 1.5 s"),
        Row(SECTION, "partial latency p95 (1 session)", one["partial_p95"], "s", target="<= 3 s"),
        Row(SECTION, "commit latency p50 (1 session)", one["commit_p50"], "s", target="<= 2.5 s"),
        Row(
            SECTION,
            "utterance completed after speech stops (max, 1 session)",
            one["completed_max"],
            "s",
            target="<= 2 s",
        ),
        Row(
            SECTION,
            f"WER of the live transcript vs offline faster-whisper ({audio_s:.0f} s)",
            one["wer"] * 100,
            "points",
            target="<= 5",
        ),
        Row(
            SECTION,
            "broker + gateway overhead per window p99",
            one["overhead_p99"] * 1000,
            "ms",
            baseline=one["floor_p99"] * 1000,
            baseline_label="bare aio-pika round trip of the same windows",
            ratio=one["overhead_p99"] / one["floor_p99"],
            target="<= 5 ms",
        ),
    ]
    for met_row, limit in zip(rows, (1.5, 3.0, 2.5, 2.0, 5.0, 5.0), strict=True):
        met_row.met = met_row.value <= limit
    rows.append(
        Row(
            SECTION,
            "broker + gateway overhead per window p50",
            one["overhead_p50"] * 1000,
            "ms",
            baseline=one["floor_p50"] * 1000,
            baseline_label="bare aio-pika round trip of the same windows",
            ratio=one["overhead_p50"] / one["floor_p50"],
        )
    )
    held = [
        int(name.split()[0])
        for name, r in results.items()
        if "batch" not in name
        and r["partial_p95"] <= 3.0
        and r["commit_p50"] <= 2.5
        and r["wer"] <= 0.05
    ]
    rows.append(
        Row(
            SECTION,
            "concurrent sessions holding the latencies",
            max(held, default=0),
            "sessions",
            target=">= 3",
            met=max(held, default=0) >= 3,
        )
    )
    loaded = results["1 session, batch queue full"]
    rows.append(
        Row(
            SECTION,
            "partial latency p95 with the batch queue full",
            loaded["partial_p95"],
            "s",
            baseline=one["partial_p95"],
            baseline_label="idle",
            ratio=loaded["partial_p95"] / one["partial_p95"] if one["partial_p95"] else None,
            target="<= 3 s",
            met=loaded["partial_p95"] <= 3.0,
        )
    )
    return rows
