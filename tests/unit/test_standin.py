"""The stand-in engine: waits in proportion to the audio, cancels promptly, loads no model."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import ValidationError

from stt_daemon.audio import SAMPLE_RATE, ArraySamples
from stt_daemon.common.protocol import JobOptions, Segment
from stt_daemon.config import DaemonSettings
from stt_daemon.engine import JobCancelled
from stt_daemon.standin import StandInEngine


def _silence(seconds: float) -> ArraySamples:
    return ArraySamples(np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32))


def _ignore(fraction: float, segments: Sequence[Segment] = (), /) -> None:
    """A progress callback that is told and does nothing."""


def test_result_has_one_segment_per_30_s_window_and_says_what_it_is() -> None:
    progress: list[float] = []

    def record(fraction: float, segments: Sequence[Segment] = (), /) -> None:
        progress.append(fraction)

    result = StandInEngine("tiny.en", rtf=0.0).transcribe(
        _silence(75), JobOptions(), record, threading.Event()
    )
    assert result.text == "[stand-in] 75.0 s of audio"
    assert [(s.start, s.end) for s in result.segments] == [(0, 30), (30, 60), (60, 75)]
    assert [s.id for s in result.segments] == [0, 1, 2]
    assert result.language == "en"
    assert result.model == "tiny.en"
    assert result.duration == pytest.approx(75)
    assert progress == pytest.approx([0.4, 0.8, 1.0])


def test_an_empty_clip_still_gets_a_segment() -> None:
    result = StandInEngine("tiny.en", rtf=1.0).transcribe(
        _silence(0), JobOptions(), _ignore, threading.Event()
    )
    assert len(result.segments) == 1
    assert result.duration == 0


def test_it_waits_at_least_rtf_times_the_audio() -> None:
    # A lower bound only: a sleep is never shorter than asked, however busy the machine.
    started = time.monotonic()
    StandInEngine("tiny.en", rtf=0.05).transcribe(
        _silence(10), JobOptions(), _ignore, threading.Event()
    )
    assert time.monotonic() - started >= 0.5


def test_cancellation_stops_the_wait() -> None:
    cancelled = threading.Event()
    engine = StandInEngine("tiny.en", rtf=100.0)  # 1000 s if nothing stopped it
    threading.Timer(0.2, cancelled.set).start()
    started = time.monotonic()
    with pytest.raises(JobCancelled):
        engine.transcribe(_silence(10), JobOptions(), _ignore, cancelled)
    assert time.monotonic() - started < 60


def test_english_only_names_are_not_multilingual() -> None:
    assert not StandInEngine("tiny.en", rtf=0.1).multilingual
    assert StandInEngine("base", rtf=0.1).multilingual


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValidationError, match="engine"):
        DaemonSettings(engine="fast")  # type: ignore[arg-type]


def test_selecting_it_loads_no_model_and_no_faster_whisper() -> None:
    # A model path that does not exist proves nothing is resolved or loaded.
    code = (
        "import sys\n"
        "from stt_daemon.__main__ import load_engines\n"
        "from stt_daemon.config import DaemonSettings\n"
        "s = DaemonSettings(engine='standin', models=['tiny.en', 'mine=/nonexistent/dir'])\n"
        "engines = load_engines(s)\n"
        "print(sorted(engines), type(engines['mine']).__name__)\n"
        "print('faster_whisper' in sys.modules, 'ctranslate2' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.splitlines()
    assert out[-2] == "['mine', 'tiny.en'] StandInEngine"
    assert out[-1] == "False False"
