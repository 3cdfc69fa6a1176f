"""Whisper's log-Mel features, computed from audio that stays on disk, in bounded memory.

faster-whisper computes the features of the whole audio it is given in one go,
and its STFT holds every frame as complex128 meanwhile: about 0.7 MB per second
of audio (measured: 420 MB at its peak for 10 minutes), on top of the audio
itself as float32. :class:`WindowedFeatures` stands in for its feature extractor:

- up to ``EXACT_SECONDS`` of audio, it computes the STFT a block at a time and
  the rest as faster-whisper does, bit for bit the same features (the Mel
  product is one matrix product over all frames, as there: OpenBLAS rounds a
  product of other shapes differently). 112 KB per second of audio at the peak.
- beyond, :class:`LazyFeatures`: one pass over the audio finds the global maximum
  that Whisper's normalisation needs; after that each window that faster-whisper
  slices out is computed when it asks for it. Equal to faster-whisper's to float
  rounding (1e-7), at one window's memory whatever the length. Whisper's decoding
  can turn on such rounding (tiny.en was seen to skip a 30 s window after a 1e-6
  change to the samples, with faster-whisper's own features too), as it does on
  machines whose OpenBLAS splits the product over another number of threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from stt_daemon.audio import ArraySamples, Samples

#: Frames per block: 30 s, one Whisper window (about 10 MB of transient memory).
BLOCK_FRAMES = 3000
#: Frames per STFT call: its complex128 frames and their copies take about 8 MB.
STFT_FRAMES = 1000
#: A slice longer than this stays lazy (faster-whisper slices "from here to the end").
MATERIALISE_FRAMES = 2 * BLOCK_FRAMES
#: Recordings up to this long get faster-whisper's exact features (34 MB at the peak).
EXACT_SECONDS = 300

Features = npt.NDArray[np.float32]


class LazyFeatures:
    """The (n_mels, frames) feature matrix of a recording, computed where it is sliced."""

    ndim = 2

    def __init__(
        self, fe: Any, source: Samples, padding: int, maximum: float, first: int, frames: int
    ) -> None:
        self._fe = fe
        self._source = source
        self._padding = padding
        self._maximum = maximum
        self._first = first
        self.shape = (int(fe.mel_filters.shape[0]), frames)

    @classmethod
    def of(cls, fe: Any, source: Samples, padding: int) -> LazyFeatures:
        """The features of ``source``, after one pass for the maximum."""
        frames = (source.samples + padding) // fe.hop_length
        maximum = -np.inf
        for first in range(0, frames, STFT_FRAMES):
            block = log_mel(fe, source, padding, first, min(first + STFT_FRAMES, frames))
            maximum = max(maximum, float(block.max()))
        return cls(fe, source, padding, maximum, 0, frames)

    def __getitem__(self, key: Any) -> Features | LazyFeatures:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if rows not in (Ellipsis, slice(None)) or not isinstance(cols, slice):
            raise TypeError(f"LazyFeatures supports [:, a:b] and [..., a:b], not {key!r}")
        start, stop, step = cols.indices(self.shape[1])
        if step != 1:
            raise TypeError("LazyFeatures slices need a step of 1")
        stop = max(start, stop)
        if stop - start > MATERIALISE_FRAMES:
            return LazyFeatures(
                self._fe,
                self._source,
                self._padding,
                self._maximum,
                self._first + start,
                stop - start,
            )
        block = log_mel(
            self._fe, self._source, self._padding, self._first + start, self._first + stop
        )
        return normalise(block, self._maximum)


class WindowedFeatures:
    """A drop-in for faster-whisper's ``FeatureExtractor`` that never holds all the features."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._sources: dict[int, Samples] = {}

    def __getattr__(self, name: str) -> Any:
        # Everything else (hop_length, time_per_frame, nb_max_frames...) is the inner one's.
        return getattr(self._inner, name)

    @contextmanager
    def reading(self, stand_in: npt.NDArray[Any], source: Samples) -> Iterator[None]:
        """While inside, a call with ``stand_in`` reads ``source`` (a recording on disk)."""
        self._sources[id(stand_in)] = source
        try:
            yield
        finally:
            del self._sources[id(stand_in)]

    def __call__(
        self, waveform: npt.NDArray[Any], padding: int = 160, chunk_length: int | None = None
    ) -> Features | LazyFeatures:
        """The log-Mel features of ``waveform`` (or of the recording it stands in for)."""
        fe = self._inner
        source = self._sources.get(id(waveform))
        if source is None:
            if waveform.ndim != 1 or waveform.shape[0] <= BLOCK_FRAMES * fe.hop_length:
                # Short clips (language detection): faster-whisper's own, unchanged.
                return fe(waveform, padding=padding, chunk_length=chunk_length)  # type: ignore[no-any-return]
            source = ArraySamples(waveform.astype(np.float32, copy=False))
        if chunk_length is not None:
            fe.n_samples = chunk_length * fe.sampling_rate
            fe.nb_max_frames = fe.n_samples // fe.hop_length
        if source.samples <= EXACT_SECONDS * fe.sampling_rate:
            return exact_features(fe, source, padding)
        return LazyFeatures.of(fe, source, padding)


def stand_in(samples: int) -> npt.NDArray[np.float32]:
    """An array of ``samples`` zeros that takes no memory (every element is the same one)."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype=np.float32), (samples,), (0,))


def exact_features(fe: Any, source: Samples, padding: int) -> Features:
    """faster-whisper's features, bit for bit, without its whole-recording STFT."""
    n_fft, hop = fe.n_fft, fe.hop_length
    frames = (source.samples + padding) // hop
    window = np.hanning(n_fft + 1)[:-1].astype("float32")
    # Frame-major, so that .T has the memory layout of faster-whisper's magnitudes.
    magnitudes = np.empty((frames, n_fft // 2 + 1), dtype=np.float32)
    for first in range(0, frames, STFT_FRAMES):
        last = min(first + STFT_FRAMES, frames)
        stretch = _centre_padded(source, padding, n_fft // 2, first * hop, (last - 1) * hop + n_fft)
        stft = fe.stft(stretch, n_fft, hop, window=window, center=False, return_complex=True)
        magnitudes[first:last] = (np.abs(stft.astype("complex64")) ** 2).T
    log_spec: Features = fe.mel_filters @ magnitudes.T
    del magnitudes
    np.clip(log_spec, 1e-10, None, out=log_spec)
    np.log10(log_spec, out=log_spec)
    return normalise(log_spec, float(log_spec.max()))


def normalise(log_spec: Features, maximum: float) -> Features:
    """Whisper's dynamic range clamp and scaling, with the whole recording's maximum."""
    np.maximum(log_spec, maximum - 8.0, out=log_spec)
    log_spec += 4.0
    log_spec /= 4.0
    return log_spec


def log_mel(fe: Any, source: Samples, padding: int, first: int, last: int) -> Features:
    """log10 Mel energies of frames ``[first, last)``, as faster-whisper computes them."""
    n_fft, hop = fe.n_fft, fe.hop_length
    window = np.hanning(n_fft + 1)[:-1].astype("float32")
    log_spec: Features = np.empty((fe.mel_filters.shape[0], max(last - first, 0)), np.float32)
    for low in range(first, last, STFT_FRAMES):
        high = min(low + STFT_FRAMES, last)
        stretch = _centre_padded(source, padding, n_fft // 2, low * hop, (high - 1) * hop + n_fft)
        stft = fe.stft(stretch, n_fft, hop, window=window, center=False, return_complex=True)
        mel = fe.mel_filters @ (np.abs(stft.astype("complex64")) ** 2)
        log_spec[:, low - first : high - first] = np.log10(np.clip(mel, a_min=1e-10, a_max=None))
    return log_spec


def _centre_padded(
    source: Samples, padding: int, pad: int, low: int, high: int
) -> npt.NDArray[np.float32]:
    """Samples ``[low, high)`` of the audio zero-padded by ``padding``, then reflect-padded."""
    length = source.samples + padding
    indices = np.arange(low - pad, high - pad)
    # Reflect (the edge sample itself not repeated) at both ends, as np.pad does.
    indices = np.where(indices < 0, -indices, indices)
    indices = np.where(indices >= length, 2 * (length - 1) - indices, indices)
    out = np.zeros(indices.shape[0], dtype=np.float32)
    inside = indices < source.samples
    if inside.any():
        lowest, highest = int(indices[inside].min()), int(indices[inside].max()) + 1
        out[inside] = source.read(lowest, highest)[indices[inside] - lowest]
    return out
