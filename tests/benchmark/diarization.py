"""Diarization (``diarize=speakers``): accuracy on real voices, time and memory it adds.

Each recording is transcribed by faster-whisper tiny.en as a daemon runs it (int8,
one thread, word timestamps, which diarize=speakers turns on), then diarized by
``stt_daemon.speakers.diarizer`` with the daemon's embedder (one onnxruntime
thread). Recordings: pyannote's two-speaker ``sample.wav`` with its RTTM, three
people taking turns (``tests/speakeraudio.py``), jfk.flac and hotwords.mp3 (one
speaker each), and the two-speaker sample cut in halves that are transcribed and
embedded apart, as the parts of a split recording are, then labelled together.

Figures: word accuracy (each word's speaker, after the best one-to-one mapping of
labels to reference speakers, against the reference speaker at the word's middle;
words where nobody speaks in the reference are left out), DER with the standard
0.25 s collar and without one (frames of 10 ms, overlapped speech scored, so one
label per instant misses the second speaker), speakers found against the truth,
diarization's time against the transcription's in the same process, and the
resident memory the embedder adds to a process that has tiny.en loaded and used.

Everything runs in a subprocess of its own (``diarization.py --repeat N`` prints one
JSON object), so that the memory figures are those of a daemon-like process.
The scoring (tests/speakerscore.py) is shared with tests/unit/test_diarizer.py; like
speakeraudio it is imported where it runs, since tests/ joins sys.path in main().
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stt_daemon.common.protocol import Diarize, JobOptions, Segment, SpeakerTurn

if TYPE_CHECKING:
    from common import Context, Row

    from speakerscore import Reference
    from stt_daemon.speakers.diarizer import Diarizer, VoicePrints

SECTION = "diarization"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TIME_TARGET = 0.5
MEMORY_TARGET_MB = 150.0
OPTIONS = JobOptions(diarize=Diarize.SPEAKERS)

# --- the measurement (subprocess) --------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One benchmark recording: audio, who speaks when (if known), how many speak."""

    name: str
    audio: np.ndarray
    reference: Reference | None
    speakers: int
    #: Cut here into two parts transcribed and embedded apart (seconds), or not cut.
    cut: float | None = None


def recordings() -> list[Recording]:
    """The benchmark's recordings (the speaker audio is fetched once, see speakeraudio)."""
    from speakeraudio import JFK, ROOT, pyannote_sample, three_voices
    from stt_daemon.audio import decode

    def of(path: Path) -> np.ndarray:
        return decode(path, max_seconds=600)

    sample, three = pyannote_sample(), three_voices()
    return [
        Recording("sample.wav (2 speakers)", of(sample.audio), sample.turns, 2),
        Recording("three voices", of(three.audio), three.turns, 3),
        Recording("jfk.flac (1 speaker)", of(JFK), None, 1),
        Recording("hotwords.mp3 (1 speaker)", of(ROOT / "tests/data/hotwords.mp3"), None, 1),
        Recording("sample.wav in two parts", of(sample.audio), sample.turns, 2, cut=15.0),
    ]


def _median_time(repeat: int, work: Callable[[], Any]) -> tuple[float, Any]:
    """The median wall time of ``repeat`` runs of ``work``, and its last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def _parts(recording: Recording) -> list[tuple[float, np.ndarray]]:
    """(offset, audio) of each part: the whole, or the two halves of a cut recording."""
    if recording.cut is None:
        return [(0.0, recording.audio)]
    at = round(recording.cut * 16000)
    return [(0.0, recording.audio[:at]), (recording.cut, recording.audio[at:])]


def _shifted(segments: list[Segment], offset: float) -> list[Segment]:
    """A part's segments in whole-recording time, as the merge shifts them."""
    return [
        s.model_copy(
            update={
                "start": s.start + offset,
                "end": s.end + offset,
                "words": [
                    w.model_copy(update={"start": w.start + offset, "end": w.end + offset})
                    for w in s.words or []
                ],
            }
        )
        for s in segments
    ]


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _diarize(
    diarizer: Diarizer, recording: Recording, parts: list[list[Segment]], merged: list[Segment]
) -> tuple[list[Segment], list[SpeakerTurn], list[VoicePrints]]:
    """Voice prints of every part (each in its own time), labelled together."""
    from stt_daemon.audio import ArraySamples

    prints = [
        diarizer.voiceprints(ArraySamples(audio), segments, offset)
        for (offset, audio), segments in zip(_parts(recording), parts, strict=True)
    ]
    labelled, turns = diarizer.label(merged, prints, OPTIONS)
    return labelled, turns, prints


def _scores(
    recording: Recording, labelled: list[Segment], turns: list[SpeakerTurn]
) -> dict[str, float]:
    from speakerscore import as_reference, diarization_error_rate, word_accuracy

    if recording.reference is None:
        return {}
    found = as_reference(turns)
    return {
        "word_accuracy": word_accuracy(labelled, recording.reference),
        "der": diarization_error_rate(recording.reference, found),
        "der_no_collar": diarization_error_rate(recording.reference, found, 0.0),
    }


def _speakers(labelled: list[Segment]) -> list[str | None]:
    return [w.speaker for s in labelled for w in s.words or []]


def measure(repeat: int) -> dict[str, Any]:
    """Every recording transcribed and diarized; times, scores, memory. Runs in its own process."""
    from faster_whisper import WhisperModel

    from speakerscore import transcribe
    from stt_daemon.heap import tune_heap
    from stt_daemon.models import resolve
    from stt_daemon.speakers.diarizer import Diarizer, VoicePrints
    from stt_daemon.speakers.embedder import SpeakerEmbedder

    tune_heap(2, 4 * 1024 * 1024)  # as the daemon starts (STT_MALLOC_* defaults)
    model = WhisperModel(
        str(resolve("tiny.en").path), device="cpu", compute_type="int8", cpu_threads=1
    )
    todo = recordings()
    transcribed: list[tuple[float, list[list[Segment]]]] = []
    for recording in todo:
        timed = [
            _median_time(repeat, functools.partial(transcribe, model, audio))
            for _, audio in _parts(recording)
        ]
        transcribed.append((sum(t for t, _ in timed), [segments for _, segments in timed]))
    rss_without, peak_without = _status_mib("VmRSS"), _status_mib("VmHWM")
    diarizer = Diarizer(SpeakerEmbedder(threads=1))
    # A daemon's embedder is warm after its first job: onnxruntime's first run
    # prepares its kernels, which no later job pays for.
    _diarize(diarizer, todo[0], transcribed[0][1], transcribed[0][1][0])
    results = []
    for recording, (transcribe_s, parts) in zip(todo, transcribed, strict=True):
        merged = [
            segment
            for (offset, _), segments in zip(_parts(recording), parts, strict=True)
            for segment in _shifted(segments, offset)
        ]
        diarize_s, (labelled, turns, prints) = _median_time(
            repeat, functools.partial(_diarize, diarizer, recording, parts, merged)
        )
        # The prints as the merge of a split job gets them: float16 on the wire.
        wired = [VoicePrints.from_wire(p.to_wire()) for p in prints]
        labelled16, _ = diarizer.label(merged, wired, OPTIONS)
        results.append(
            {
                "name": recording.name,
                "audio_s": len(recording.audio) / 16000,
                "speakers_true": recording.speakers,
                "speakers_found": len({t.speaker for t in turns}),
                "windows": sum(len(p.windows) for p in prints),
                "wire_bytes": sum(len(p.to_wire().model_dump_json()) for p in prints),
                "transcribe_s": transcribe_s,
                "diarize_s": diarize_s,
                "float16_same_labels": _speakers(labelled) == _speakers(labelled16),
                **_scores(recording, labelled, turns),
            }
        )
    return {
        "repeat": repeat,
        "recordings": results,
        "rss_without_mib": rss_without,
        "rss_with_mib": _status_mib("VmRSS"),
        "peak_without_mib": peak_without,
        "peak_with_mib": _status_mib("VmHWM"),
    }


# --- the section -------------------------------------------------------------------


def _rows(report: dict[str, Any]) -> list[Row]:
    from common import Row

    rows: list[Row] = []
    for r in report["recordings"]:
        name = r["name"]
        if "word_accuracy" in r:
            target = 0.95 if r["speakers_true"] == 2 else 0.90
            rows.append(
                Row(
                    SECTION,
                    f"{name}: word accuracy",
                    r["word_accuracy"],
                    "",
                    target=f">= {target}",
                    met=r["word_accuracy"] >= target,
                )
            )
            met = r["der"] <= 0.15 if r["speakers_true"] == 2 else None
            rows.append(
                Row(
                    SECTION,
                    f"{name}: DER (0.25 s collar)",
                    100 * r["der"],
                    "%",
                    target="<= 15 %" if met is not None else "",
                    met=met,
                )
            )
            rows.append(Row(SECTION, f"{name}: DER (no collar)", 100 * r["der_no_collar"], "%"))
        rows.append(
            Row(
                SECTION,
                f"{name}: speakers found",
                r["speakers_found"],
                "",
                baseline=r["speakers_true"],
                baseline_label="true",
                target="= true",
                met=r["speakers_found"] == r["speakers_true"],
            )
        )
        ratio = r["diarize_s"] / r["transcribe_s"]
        rows.append(
            Row(
                SECTION,
                f"{name}: time added",
                r["diarize_s"],
                "s",
                baseline=r["transcribe_s"],
                baseline_label="tiny.en transcription",
                ratio=ratio,
                target=f"<= {TIME_TARGET:.0%} of transcription",
                met=ratio <= TIME_TARGET,
            )
        )
    diarize = sum(r["diarize_s"] for r in report["recordings"])
    transcribe = sum(r["transcribe_s"] for r in report["recordings"])
    rows.append(
        Row(
            SECTION,
            "all recordings: time added",
            diarize,
            "s",
            baseline=transcribe,
            baseline_label="tiny.en transcription",
            ratio=diarize / transcribe,
            target=f"<= {TIME_TARGET:.0%} of transcription",
            met=diarize / transcribe <= TIME_TARGET,
        )
    )
    added = report["rss_with_mib"] - report["rss_without_mib"]
    rows.append(
        Row(
            SECTION,
            "memory added (embedder loaded and used)",
            added,
            "MiB",
            baseline=report["rss_without_mib"],
            baseline_label="RSS with tiny.en loaded and used",
            target=f"<= {MEMORY_TARGET_MB:.0f} MB",
            met=added * 1.048576 <= MEMORY_TARGET_MB,
        )
    )
    rows.append(
        Row(
            SECTION,
            "peak memory added",
            report["peak_with_mib"] - report["peak_without_mib"],
            "MiB",
            baseline=report["peak_without_mib"],
            baseline_label="peak before the embedder",
        )
    )
    return rows


async def diarization(ctx: Context) -> list[Row]:
    """Run the measurement in a process of its own; rows and details for the JSON."""
    repeat = 1 if ctx.quick else 3
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(Path(__file__).resolve()), "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1200,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the diarization measurement failed: {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    ctx.details[SECTION] = report
    return _rows(report)


def main() -> None:
    """Script mode: the measurement, as one JSON object on stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each step; the median counts"
    )
    args = parser.parse_args()
    sys.path[:0] = [str(HERE.parent)]  # tests/: speakeraudio
    print(json.dumps(measure(max(1, args.repeat))))


if __name__ == "__main__":
    main()
