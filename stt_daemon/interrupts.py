"""Which running transcriptions a stopping daemon interrupts, and which it lets finish.

A job that will be done within the shutdown grace finishes here: handing it back
would only make someone else load and decode it again. A longer one is stopped
at its next segment, saves its checkpoint and goes back to its queue at once, so
a stop takes seconds, not minutes, and loses no work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Seconds of work a running transcription still needs (an estimate).
Remaining = Callable[[], float]


class Interrupts:
    """The stop flags of the transcriptions running now, with what each still needs."""

    def __init__(self) -> None:
        self.stopping = False
        self._grace = 0.0
        self._running: dict[threading.Event, Remaining] = {}
        self._interrupted: set[threading.Event] = set()

    @contextmanager
    def transcribing(self, flag: threading.Event, remaining: Remaining) -> Iterator[None]:
        """Register a transcription for the time it runs (stopped at once if stopping)."""
        self._running[flag] = remaining
        if self.stopping:
            self._decide(flag, remaining)
        try:
            yield
        finally:
            del self._running[flag]

    def stop(self, grace: float) -> None:
        """Interrupt every transcription that needs more than ``grace`` seconds still."""
        self.stopping = True
        self._grace = grace
        for flag, remaining in list(self._running.items()):
            self._decide(flag, remaining)

    def interrupted(self, flag: threading.Event) -> bool:
        """True if the flag was raised by the stop (not by a user's cancel); forgets it."""
        if flag in self._interrupted:
            self._interrupted.discard(flag)
            return True
        return False

    def _decide(self, flag: threading.Event, remaining: Remaining) -> None:
        if not flag.is_set() and remaining() > self._grace:
            self._interrupted.add(flag)
            flag.set()
