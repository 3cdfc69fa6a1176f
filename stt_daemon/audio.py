"""Audio decoding with PyAV (FFmpeg), bounded in duration and in the demuxers it allows.

faster-whisper's own ``decode_audio`` decodes the whole file into memory; a 2 MB
FLAC can hold hours of silence, so this decoder counts samples as it goes and
stops at the limit instead. And a job's recording is never held whole in memory:
:func:`decode_to_file` writes it as 16-bit PCM to a work file as it decodes, and
everything after reads it a window at a time (:class:`PcmFile`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import av
import numpy as np
import numpy.typing as npt

from stt_daemon.common.protocol import ErrorCode

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
    """Decode the first audio track to 16 kHz float32 in memory, refusing more than max_seconds.

    Mono (shape ``(samples,)``) by default; with ``keep_channels`` one row per
    channel (shape ``(channels, samples)``). For short clips and tools: jobs use
    :func:`decode_to_file`.
    """
    chunks = list(_decoded(source, max_seconds, keep_channels))
    return np.concatenate(chunks, axis=-1).astype(np.float32) / 32768.0


def decode_to_file(
    source: str | Path | BinaryIO,
    max_seconds: float,
    work_dir: Path,
    keep_channels: bool = False,
) -> PcmFile:
    """Decode to 16 kHz 16-bit PCM files in ``work_dir``, one per channel (bounded memory)."""
    files: list[tuple[Path, BinaryIO]] = []
    samples = 0
    try:
        for chunk in _decoded(source, max_seconds, keep_channels):
            rows = chunk.reshape(1, -1) if chunk.ndim == 1 else chunk
            while len(files) < rows.shape[0]:
                fd, name = tempfile.mkstemp(prefix="pcm-", suffix=".s16", dir=work_dir)
                files.append((Path(name), os.fdopen(fd, "wb")))
            for row, (_path, fh) in zip(rows, files, strict=True):
                fh.write(row.astype("<i2", copy=False).tobytes())
            samples += rows.shape[1]
    except BaseException:
        for path, fh in files:
            fh.close()
            path.unlink(missing_ok=True)
        raise
    for _path, fh in files:
        fh.close()
    return PcmFile([path for path, _fh in files], samples)


class Samples(Protocol):
    """Mono 16 kHz audio that is read a window at a time."""

    @property
    def samples(self) -> int:
        """Its length in samples."""
        ...

    def read(self, start: int = 0, stop: int | None = None) -> Audio:
        """Samples ``[start, stop)`` as float32 in [-1, 1)."""
        ...


class ArraySamples:
    """Audio already in memory, behind the :class:`Samples` interface (clips, tests)."""

    def __init__(self, audio: Audio) -> None:
        self.audio = audio

    @property
    def samples(self) -> int:
        """Its length in samples."""
        return int(self.audio.shape[-1])

    def read(self, start: int = 0, stop: int | None = None) -> Audio:
        """A view of samples ``[start, stop)``."""
        return self.audio[start:stop]


class PcmFile:
    """A decoded recording on disk: 16 kHz 16-bit PCM, one file per channel."""

    def __init__(self, paths: list[Path], samples: int) -> None:
        self.paths = paths
        self._samples = samples

    @classmethod
    def write(cls, audio: Audio, work_dir: Path) -> PcmFile:
        """A work file holding ``audio`` (mono) as 16-bit PCM."""
        fd, name = tempfile.mkstemp(prefix="pcm-", suffix=".s16", dir=work_dir)
        pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")
        with os.fdopen(fd, "wb") as fh:
            fh.write(pcm.tobytes())
        return cls([Path(name)], int(pcm.shape[0]))

    @property
    def samples(self) -> int:
        """Its length in samples."""
        return self._samples

    @property
    def channels(self) -> int:
        """How many channels it has (1 unless decoded with ``keep_channels``)."""
        return len(self.paths)

    @property
    def duration(self) -> float:
        """Its length in seconds."""
        return self._samples / SAMPLE_RATE

    def channel(self, index: int) -> PcmFile:
        """One channel, as a mono recording (the file is shared, not copied)."""
        return PcmFile([self.paths[index]], self._samples)

    def read(self, start: int = 0, stop: int | None = None) -> Audio:
        """Samples ``[start, stop)`` of the first channel, as float32."""
        stop = self._samples if stop is None else min(stop, self._samples)
        start = max(0, min(start, stop))
        pcm = np.fromfile(self.paths[0], dtype="<i2", count=stop - start, offset=2 * start)
        return pcm.astype(np.float32) / 32768.0

    def blocks(self, seconds: float) -> Iterator[tuple[int, Audio]]:
        """``(first sample, samples)`` of consecutive blocks of ``seconds``."""
        step = int(seconds * SAMPLE_RATE)
        for start in range(0, self._samples, step):
            yield start, self.read(start, start + step)

    def remove(self) -> None:
        """Delete the files."""
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _decoded(
    source: str | Path | BinaryIO, max_seconds: float, keep_channels: bool
) -> Iterator[npt.NDArray[np.int16]]:
    """The first audio track as int16 chunks at 16 kHz (mono, or one row per channel)."""
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
        produced = False
        for chunk in _decode_stream(container, stream, limit, max_seconds, layout):
            produced = True
            yield chunk
    if not produced:
        raise AudioError("no audio could be decoded (empty or truncated file)")


def _decode_stream(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    limit: int,
    max_seconds: float,
    layout: str,
) -> Iterator[npt.NDArray[np.int16]]:
    mono = layout == "mono"
    # Planar output for several channels: to_ndarray() then gives one row each.
    resampler = av.AudioResampler(format="s16" if mono else "s16p", layout=layout, rate=SAMPLE_RATE)
    total = 0
    # ``None`` at the end flushes the resampler. Frames are pulled one by one so
    # that memory stays bounded whatever the file claims.
    frames = itertools.chain(container.decode(stream), [None])
    try:
        for frame in frames:
            for out in resampler.resample(frame):
                array = out.to_ndarray()
                samples: npt.NDArray[np.int16] = array.reshape(-1) if mono else array  # type: ignore[assignment]
                total += samples.shape[-1]
                if total > limit:
                    raise _too_long(max_seconds)
                yield samples
    except av.FFmpegError as exc:
        # A truncated file decodes up to the damage: keep what came out, if anything.
        if total == 0:
            raise AudioError(f"the audio could not be decoded ({_reason(exc)})") from None


def _too_long(max_seconds: float) -> AudioError:
    return AudioError(
        f"audio is longer than the limit of {max_seconds:g} s (STT_MAX_AUDIO_SECONDS)",
        ErrorCode.AUDIO_TOO_LONG,
    )


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
