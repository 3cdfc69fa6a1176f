"""Speakers by channel: each channel of a multi-channel recording is one speaker.

Call centres and interviews often record each party on its own channel. Each
channel is transcribed on its own and the segments are merged in time order,
labelled ``channel_0``, ``channel_1``... (Clustering voices within one channel
is a different problem, not solved here.)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from stt_daemon.audio import PcmFile
from stt_daemon.common.protocol import JobOptions, Segment, TranscriptResult
from stt_daemon.engine import Engine, ProgressCallback


def speaker_label(channel: int) -> str:
    """The speaker name of a channel."""
    return f"channel_{channel}"


def transcribe_channels(
    engine: Engine,
    channels: PcmFile,
    options: JobOptions,
    on_progress: ProgressCallback,
    cancelled: threading.Event,
) -> TranscriptResult:
    """Transcribe every channel of ``channels`` and merge the segments by start time."""
    count = channels.channels
    # Each speaker is silent while the other talks: skip that silence, or Whisper
    # tends to invent words in it.
    per_channel = options.model_copy(update={"vad_filter": True})
    results: list[TranscriptResult] = []
    for index in range(count):

        def progress(
            fraction: float, _segments: Sequence[Segment] = (), /, index: int = index
        ) -> None:
            # One channel's segments are not streamed: the result orders every
            # channel's by time, so they come with it.
            on_progress((index + fraction) / count)

        results.append(engine.transcribe(channels.channel(index), per_channel, progress, cancelled))
    return merge(results, duration=channels.duration)


def merge(results: list[TranscriptResult], duration: float) -> TranscriptResult:
    """One time-ordered result from per-channel results (channel i -> speaker i)."""
    if not results:
        raise ValueError("no channel to merge")
    labelled = [
        (segment.start, index, segment)
        for index, result in enumerate(results)
        for segment in result.segments
        if segment.text.strip()
    ]
    labelled.sort(key=lambda item: (item[0], item[1]))
    segments = [
        segment.model_copy(update={"id": i, "speaker": speaker_label(index)})
        for i, (_, index, segment) in enumerate(labelled)
    ]
    # The language of the channel that said the most.
    main = max(results, key=lambda r: len(r.text))
    return TranscriptResult(
        text=" ".join(s.text.strip() for s in segments),
        language=main.language,
        language_probability=main.language_probability,
        duration=duration,
        model=main.model,
        task=main.task,
        segments=segments,
    )
