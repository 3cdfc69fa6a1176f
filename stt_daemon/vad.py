"""Where speech is, found a block at a time (faster-whisper's Silero VAD, bounded memory).

``get_speech_timestamps`` takes the whole recording as one float32 array. On a
long recording that array, and the VAD's own copies of it, are what overflowed a
daemon's memory, so the recording is fed in blocks of a few minutes and the
stretches are joined across block edges.
"""

from __future__ import annotations

from typing import Any

from stt_daemon.audio import SAMPLE_RATE, Samples

#: Seconds of audio per VAD call. Silero's buffers take about 0.4 MB per second of
#: audio (measured: 124 MB for 300 s), so 30 s blocks cost 12 MB.
BLOCK_S = 30.0


def speech_timestamps(audio: Samples, options: Any = None) -> list[tuple[int, int]]:
    """``[start, end)`` sample ranges of speech, in order (blocking: Silero runs on the CPU).

    ``options`` is faster-whisper's ``VadOptions`` (its defaults when None).
    """
    # Imported here: the gateway and the tools import this package without the model stack.
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    options = options or VadOptions()
    step = int(BLOCK_S * SAMPLE_RATE)
    found: list[tuple[int, int]] = []
    for offset in range(0, audio.samples, step):
        block = audio.read(offset, offset + step)
        for stretch in get_speech_timestamps(block, options, sampling_rate=SAMPLE_RATE):
            start, end = stretch["start"] + offset, stretch["end"] + offset
            # Speech running over a block edge comes out as two stretches that touch.
            gap = options.min_silence_duration_ms * SAMPLE_RATE // 1000
            if found and start - found[-1][1] <= gap and start <= offset + gap:
                found[-1] = (found[-1][0], max(found[-1][1], end))
            else:
                found.append((start, end))
    return found
