"""Test recordings in other containers and codecs, made from jfk.flac with PyAV (FFmpeg)."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stt_daemon.audio import decode

#: container suffix -> (audio codec, sample rate, optional video codec)
FORMATS: dict[str, tuple[str, int, str | None]] = {
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
