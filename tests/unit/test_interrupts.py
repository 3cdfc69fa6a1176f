"""A stopping daemon interrupts long transcriptions and lets short ones finish."""

from __future__ import annotations

import threading

from stt_daemon.interrupts import Interrupts


def test_only_what_needs_more_than_the_grace_is_interrupted() -> None:
    interrupts = Interrupts()
    long, short, late = threading.Event(), threading.Event(), threading.Event()
    with interrupts.transcribing(long, lambda: 120.0), interrupts.transcribing(short, lambda: 2.0):
        interrupts.stop(grace=30)
        assert long.is_set() and not short.is_set()
        assert interrupts.interrupted(long) and not interrupts.interrupted(short)
        # A transcription that starts while the daemon stops is judged at once.
        with interrupts.transcribing(late, lambda: 60.0):
            assert late.is_set()


def test_a_users_cancel_is_not_taken_for_an_interruption() -> None:
    interrupts = Interrupts()
    flag = threading.Event()
    with interrupts.transcribing(flag, lambda: 120.0):
        flag.set()  # the user cancelled first
        interrupts.stop(grace=0)
        assert not interrupts.interrupted(flag)
