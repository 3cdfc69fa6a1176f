"""Admission by duration and measured speed, against the broker's acknowledgement timeout."""

from __future__ import annotations

import pytest

from stt_daemon.admission import Admission


def test_before_any_measurement_the_assumed_speed_decides() -> None:
    admission = Admission(ack_timeout=1800, assumed_rtf=0.5)
    assert admission.refusal("tiny.en", 1800) is None  # 900 s of work: exactly the budget
    reason = admission.refusal("tiny.en", 1801)
    assert reason is not None
    assert "acknowledgement timeout" in reason and "STT_ACK_TIMEOUT" in reason
    assert "shorter than 1800 s" in reason  # what to do instead


def test_measured_speed_replaces_the_assumption_per_model() -> None:
    admission = Admission(ack_timeout=1800, assumed_rtf=0.5)
    admission.observe("tiny.en", audio_s=100, took_s=10)  # RTF 0.1
    assert admission.rtf("tiny.en") == pytest.approx(0.1)
    assert admission.rtf("base") == 0.5
    assert admission.refusal("tiny.en", 8000) is None  # 800 s of work
    assert admission.refusal("base", 8000) is not None


def test_speed_is_smoothed_and_short_clips_are_ignored() -> None:
    admission = Admission(ack_timeout=1800, assumed_rtf=0.5)
    admission.observe("m", audio_s=100, took_s=10)
    admission.observe("m", audio_s=100, took_s=20)  # a slow moment moves it part way
    assert 0.1 < admission.rtf("m") < 0.2
    admission.observe("m", audio_s=1, took_s=5)  # 1 s clip: overhead, not speed
    assert admission.rtf("m") < 0.2
