"""Test recordings in other containers and codecs, made from jfk.flac with PyAV (FFmpeg)."""

from __future__ import annotations

import subprocess
import wave
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

from stt_daemon.audio import decode

#: The codecs used here, named as PyAV's stubs name them, so each stream gets its kind.
AudioCodec = Literal["pcm_s16le", "libmp3lame", "libopus", "aac"]
VideoCodec = Literal["mpeg4"]

#: container suffix -> (audio codec, sample rate, optional video codec)
FORMATS: dict[str, tuple[AudioCodec, int, VideoCodec | None]] = {
    "wav": ("pcm_s16le", 16000, None),
    "mp3": ("libmp3lame", 44100, None),
    "ogg": ("libopus", 48000, None),  # Ogg/Opus
    "m4a": ("aac", 44100, None),
    "webm": ("libopus", 48000, None),
    "mp4": ("aac", 44100, "mpeg4"),  # a video file with a soundtrack
}


def convert(source: Path, out: Path) -> Path:
    """Re-encode the speech in ``source`` as ``out`` (format from its suffix)."""
    codec, rate, video_codec = FORMATS[out.suffix.lstrip(".")]
    samples = decode(source, max_seconds=3600)
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with av.open(str(out), "w") as container:
        video = None
        if video_codec:
            video = container.add_stream(video_codec, rate=10)
            video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        frame.time_base = Fraction(1, 16000)
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        if video is not None:
            seconds = len(pcm) / 16000
            for i in range(int(seconds * 10)):
                image = av.VideoFrame.from_ndarray(
                    np.full((120, 160, 3), i % 255, dtype=np.uint8), format="rgb24"
                )
                image.pts = i
                for packet in video.encode(image):
                    container.mux(packet)
            for packet in video.encode(None):
                container.mux(packet)
    return out


def repeated(source: Path, times: int, out: Path) -> Path:
    """A longer recording: ``source`` said ``times`` times in a row (FLAC)."""
    samples = np.tile(decode(source, max_seconds=3600), times)
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("flac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out


def two_speakers(left: Path, right: Path, out: Path, gap: float = 1.0) -> tuple[float, float]:
    """A stereo WAV: ``left`` speaks on channel 0, then ``right`` on channel 1.

    Returns the second speaker's start and end, in seconds.
    """
    first = decode(left, max_seconds=3600)
    second = decode(right, max_seconds=3600)
    start = first.shape[0] + int(gap * 16000)
    total = start + second.shape[0]
    channels = np.zeros((2, total), dtype=np.float32)
    channels[0, : first.shape[0]] = first
    channels[1, start:] = second
    pcm = (np.clip(channels.T, -1, 1) * 32767).astype("<i2")
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm.tobytes())
    return start / 16000, total / 16000


# Plain words that tiny.en spells one way only (no numbers, no British spellings).
_SUBJECTS = (
    "the committee",
    "our doctor",
    "the engineer",
    "a small dog",
    "the pilot",
    "my sister",
    "the old farmer",
    "the teacher",
    "a tired student",
    "the mayor",
)
_VERBS = (
    "painted",
    "repaired",
    "carried",
    "described",
    "visited",
    "ordered",
    "cleaned",
    "measured",
    "photographed",
    "forgot",
)
_OBJECTS = (
    "a red bicycle",
    "the wooden bridge",
    "a basket of apples",
    "the lighthouse",
    "a blue umbrella",
    "the garden fence",
    "the green bottles",
    "the city library",
    "a silver kettle",
    "the railway station",
    "a paper boat",
)
_TIMES = (
    "on Monday morning",
    "after the storm",
    "before lunch",
    "in the summer",
    "late at night",
    "during the meeting",
    "last winter",
)


def _sentence(i: int) -> str:
    """The i-th of many different plain sentences (each combination differs from its neighbours)."""
    return (
        f"{_SUBJECTS[i % 10]} {_VERBS[(i * 3) % 10]} {_OBJECTS[(i * 7) % 11]} "
        f"{_TIMES[(i * 5) % 7]}."
    ).capitalize()


def long_talk(out: Path, seconds: float, work_dir: Path) -> Path:
    """A long recording of distinct sentences (flite) with jfk.flac and hotwords.mp3 between.

    Every stretch differs from the others, so a transcript merged out of order
    or missing a stretch reads differently from the whole one. A 16 kHz WAV.
    """
    from stack import HOTWORDS, JFK  # the recordings in tests/data

    pause = np.zeros(int(0.8 * 16000), dtype=np.float32)
    pieces: list[np.ndarray] = []
    total, block = 0, 0
    while total < seconds * 16000:
        text = " ".join(_sentence(block * 4 + k) for k in range(4))
        spoken = work_dir / f"talk-{block}.wav"
        # flite's "slt" voice: tiny.en hears it nearly word for word (espeak-ng's voice
        # leaves it guessing, and two guesses at one word rarely agree).
        subprocess.run(
            ["flite", "-voice", "slt", "-t", text, "-o", str(spoken)], check=True, timeout=120
        )
        pieces += [decode(spoken, max_seconds=3600), pause]
        if block % 3 == 2:
            pieces += [decode(JFK if block % 2 else HOTWORDS, max_seconds=3600), pause]
        total = sum(p.shape[0] for p in pieces)
        block += 1
    samples = np.concatenate(pieces)[: int(seconds * 16000)]
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(pcm.tobytes())
    return out
