"""Test-only launcher: a real daemon whose process dies hard on one marked job.

Stands in for a job that crashes native code every time (a decoder segfault, the
OOM killer): the process vanishes mid-job, reports nothing and acks nothing. The
production code has no hook for this; the crash is wrapped around the engine
here, then the daemon's normal ``main()`` runs. The marker is the job's
``prompt`` option, which the engine receives with the audio.

Run as ``python tests/crashing_daemon.py`` with the usual ``STT_*`` environment.
"""

from __future__ import annotations

import os
import threading

from stt_daemon.__main__ import main
from stt_daemon.audio import Samples
from stt_daemon.checkpoints import Tracker
from stt_daemon.common.protocol import JobOptions, TranscriptResult
from stt_daemon.engine import ProgressCallback, WhisperEngine

#: A job with this prompt kills whichever daemon transcribes it.
POISON_PROMPT = "poison: crash the worker"
#: Exit status of a crash (EX_SOFTWARE); a supervisor sees the process die.
CRASH_EXIT_CODE = 70


def install() -> None:
    """Make every WhisperEngine crash the process when it is handed the poison."""
    transcribe = WhisperEngine.transcribe

    def crashing(
        self: WhisperEngine,
        audio: Samples,
        options: JobOptions,
        on_progress: ProgressCallback,
        cancelled: threading.Event,
        tracker: Tracker | None = None,
    ) -> TranscriptResult:
        if options.prompt == POISON_PROMPT:
            os.write(2, b"crashing_daemon: poison job, dying hard\n")
            os._exit(CRASH_EXIT_CODE)  # no cleanup, no flush: as abrupt as a segfault
        return transcribe(self, audio, options, on_progress, cancelled, tracker)

    WhisperEngine.transcribe = crashing  # type: ignore[method-assign]


if __name__ == "__main__":
    install()
    main()
