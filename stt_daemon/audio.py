"""Audio decoding with PyAV (FFmpeg), bounded in duration and in the demuxers it allows.

faster-whisper's own ``decode_audio`` decodes the whole file into memory; a 2 MB
FLAC can hold hours of silence, so this decoder counts samples as it goes and
stops at the limit instead.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import numpy.typing as npt

from stt_daemon.protocol import ErrorCode

SAMPLE_RATE = 16000

# Only demuxers of media files: playlists and indirection (hls, concat, image
# sequences, tee...) could make FFmpeg read files other than the job's blob.
ALLOWED_DEMUXERS = (
    "wav,w64,mp3,flac,ogg,mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,aac,aiff,caf,avi,asf,"
    "flv,mpegts,mpeg,ac3,eac3,amr,au,wv,ape,tta,dts,truehd,mlp,gsm,voc,xwma,rm"
)

Audio = npt.NDArray[np.float32]


class AudioError(Exception):
    """Audio that cannot be transcribed; retrying will not help."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_AUDIO) -> None:
        super().__init__(message)
        self.code = code


def decode(source: str | Path | BinaryIO, max_seconds: float, keep_channels: bool = False) -> Audio:
    """Decode the first audio track to 16 kHz float32, refusing more than max_seconds.

    Mono (shape ``(samples,)``) by default; with ``keep_channels`` one row per
    channel (shape ``(channels, samples)``), for per-channel speakers.
    """
    limit = int(max_seconds * SAMPLE_RATE)
    try:
        container = av.open(
            source if not isinstance(source, Path) else str(source),
            mode="r",
            metadata_errors="ignore",
            options={"format_whitelist": ALLOWED_DEMUXERS},
        )
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise AudioError(f"not a readable audio or video file ({_reason(exc)})") from None
    with container:
        stream = next(iter(container.streams.audio), None)
        if stream is None:
            raise AudioError("the file has no audio track")
        # Fast path: a header that already admits too much is refused at once.
        # Headers can lie, so the count below is what really enforces the limit.
        if container.duration is not None and container.duration / 1e6 > max_seconds + 1:
            raise _too_long(max_seconds)
        layout = stream.layout.name if keep_channels else "mono"
        chunks = _decode_stream(container, stream, limit, max_seconds, layout)
    if not chunks:
        raise AudioError("no audio could be decoded (empty or truncated file)")
    return np.concatenate(chunks, axis=-1).astype(np.float32) / 32768.0


def _decode_stream(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    limit: int,
    max_seconds: float,
    layout: str,
) -> list[npt.NDArray[np.int16]]:
    mono = layout == "mono"
    # Planar output for several channels: to_ndarray() then gives one row each.
    resampler = av.AudioResampler(format="s16" if mono else "s16p", layout=layout, rate=SAMPLE_RATE)
    chunks: list[npt.NDArray[np.int16]] = []
    total = 0
    # ``None`` at the end flushes the resampler. Frames are pulled one by one so
    # that memory stays bounded by the limit, whatever the file claims.
    frames = itertools.chain(container.decode(stream), [None])
    try:
        for frame in frames:
            for out in resampler.resample(frame):
                array = out.to_ndarray()
                samples: npt.NDArray[np.int16] = array.reshape(-1) if mono else array  # type: ignore[assignment]
                total += samples.shape[-1]
                if total > limit:
                    raise _too_long(max_seconds)
                chunks.append(samples)
    except av.FFmpegError as exc:
        # A truncated file decodes up to the damage: keep what came out, if anything.
        if not chunks:
            raise AudioError(f"the audio could not be decoded ({_reason(exc)})") from None
    return chunks


def _too_long(max_seconds: float) -> AudioError:
    return AudioError(
        f"audio is longer than the limit of {max_seconds:g} s (STT_MAX_AUDIO_SECONDS)",
        ErrorCode.AUDIO_TOO_LONG,
    )


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
