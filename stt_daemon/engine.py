"""The speech engine: loads a Whisper model once and transcribes decoded audio.

``transcribe`` is blocking and is meant to run in a worker thread: faster-whisper
does its work while its lazy ``segments`` generator is iterated, so the whole
iteration happens here, never on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from stt_daemon.audio import SAMPLE_RATE, Audio
from stt_daemon.checkpoints import Tracker
from stt_daemon.cores import usable_cores
from stt_daemon.models import ModelRef
from stt_daemon.protocol import JobOptions, Segment, TranscriptResult, Word

ProgressCallback = Callable[[float], None]


class JobCancelled(Exception):
    """The job was asked to stop while running (a user's cancel, or the daemon stopping)."""


class Engine(Protocol):
    """What the handler needs from a speech engine (tests substitute a fake)."""

    name: str
    #: False for English-only models (``*.en``): no language detection, no translation.
    multilingual: bool

    def transcribe(
        self,
        audio: Audio,
        options: JobOptions,
        on_progress: ProgressCallback,
        cancelled: threading.Event,
        tracker: Tracker | None = None,
    ) -> TranscriptResult:
        """Transcribe 16 kHz mono audio; blocking.

        With a ``tracker``, start where its checkpoint ends (if any) and report every
        segment and window to it, so that the job can be resumed.
        """
        ...

    def detect_language(self, audio: Audio) -> tuple[str, float]:
        """The language spoken at the start of the audio, and its probability; blocking."""
        ...


def threads_per_job(requested: int, jobs_in_flight: int) -> int:
    """Split the machine's cores between the jobs that run at once."""
    if requested > 0:
        return requested
    return max(1, usable_cores() // jobs_in_flight)


class WhisperEngine:
    """faster-whisper (CTranslate2) with one model instance shared by N worker threads."""

    def __init__(
        self,
        model: ModelRef,
        *,
        workers: int,
        cpu_threads: int,
        device: str = "cpu",
        compute_type: str = "int8",
        beam_size: int = 5,
        batch_size: int = 0,
    ) -> None:
        # Imported here so that importing this module stays cheap for tools and tests.
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.name = model.name
        self._beam_size = beam_size
        self._batch_size = batch_size
        # num_workers lets that many transcribe() calls run in parallel threads.
        self._model = WhisperModel(
            str(model.path),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=workers,
        )
        self.multilingual = bool(self._model.model.is_multilingual)
        # Batched: the recording is cut into speech chunks (Silero VAD) that are decoded
        # together, up to batch_size at once: what keeps a GPU busy. On a CPU, parallel
        # single-thread jobs use the cores better (see the README's Benchmarks).
        self._batched = BatchedInferencePipeline(self._model) if batch_size > 0 else None

    def _whisper_kwargs(self, options: JobOptions) -> dict[str, Any]:
        """faster-whisper's arguments for a job; only what the job set overrides the defaults."""
        kwargs: dict[str, Any] = {
            "language": options.language,
            "task": options.task.value,
            "word_timestamps": options.word_timestamps,
            "beam_size": options.beam_size or self._beam_size,
            "initial_prompt": options.prompt,
            "hotwords": options.hotwords,
            "vad_filter": options.vad_filter,
        }
        if options.temperature is not None:
            # One temperature, as asked: no fallback to other temperatures.
            kwargs["temperature"] = options.temperature
        return kwargs

    def detect_language(self, audio: Audio) -> tuple[str, float]:
        """Whisper's own detection on the first 30 s, as an unsplit transcription does it."""
        if not self.multilingual:
            return "en", 1.0
        language, probability, _ = self._model.detect_language(audio[: 30 * SAMPLE_RATE])
        return language, probability

    def _prompt_tokens(self, prompt: str | None) -> list[int]:
        """The job's own prompt as faster-whisper tokenizes it (a leading space)."""
        if not prompt:
            return []
        return list(self._model.hf_tokenizer.encode(" " + prompt.strip()).ids)

    def _resume_kwargs(self, options: JobOptions, tracker: Tracker | None) -> dict[str, Any]:
        """What makes a resumed run pick up exactly where the checkpoint ends."""
        resume = tracker.resume if tracker is not None else None
        if resume is None:
            return {}
        prompt = [] if resume.prompt_reset else self._prompt_tokens(options.prompt)
        return {
            # The same features from the same place: Whisper seeks there itself.
            "clip_timestamps": [resume.start],
            "initial_prompt": prompt + resume.prompt_tokens,
            "language": options.language or resume.language,
        }

    def transcribe(
        self,
        audio: Audio,
        options: JobOptions,
        on_progress: ProgressCallback,
        cancelled: threading.Event,
        tracker: Tracker | None = None,
    ) -> TranscriptResult:
        """Transcribe, reporting progress per segment and stopping early when cancelled."""
        # Resuming needs Whisper's own windows: not with the VAD (it concatenates the
        # speech) nor batched (chunks decoded together).
        windows = self._batched is None and not options.vad_filter
        if not windows:
            tracker = None
        if cancelled.is_set():
            raise JobCancelled("stopped before transcribing")
        if self._batched is not None:
            # The batched pipeline finds its chunks with the VAD: it is always on there.
            # With timestamps, segments stay sentence-sized (subtitles need them), and
            # tiny.en was seen dropping the end of a chunk without them.
            kwargs = {
                **self._whisper_kwargs(options),
                "vad_filter": True,
                "without_timestamps": False,
            }
            segments_iter, info = self._batched.transcribe(
                audio, batch_size=self._batch_size, **kwargs
            )
        else:
            kwargs = {**self._whisper_kwargs(options), **self._resume_kwargs(options, tracker)}
            segments_iter, info = self._model.transcribe(audio, **kwargs)
        resume = tracker.resume if tracker is not None else None
        language = resume.language if resume is not None and resume.language else info.language
        probability = (
            resume.language_probability
            if resume is not None and resume.language
            else info.language_probability
        )
        duration = audio.shape[0] / SAMPLE_RATE
        if tracker is not None:
            tracker.begin(duration, language, probability)
        segments: list[Segment] = list(resume.segments) if resume is not None else []
        for seg in segments_iter:
            if cancelled.is_set():
                raise JobCancelled("cancelled while transcribing")
            segment = self._segment(seg, len(segments), duration, options)
            segments.append(segment)
            if tracker is not None:
                # seek: the window's first mel frame, 100 a second.
                tracker.add(segment, seg.seek / 100, seg.tokens, seg.temperature or 0.0)
            if duration > 0:
                on_progress(min(seg.end / duration, 1.0))
        return TranscriptResult(
            text="".join(s.text for s in segments).strip(),
            language=language,
            language_probability=probability,
            duration=duration,
            model=self.name,
            task=options.task,
            segments=segments,
        )

    @staticmethod
    def _segment(seg: Any, index: int, duration: float, options: JobOptions) -> Segment:
        """Our segment from faster-whisper's."""
        words = None
        if options.word_timestamps and seg.words is not None:
            words = [
                Word(start=w.start, end=w.end, word=w.word, probability=w.probability)
                for w in seg.words
            ]
        return Segment(
            id=index,
            start=min(seg.start, duration),
            # The batched pipeline's last timestamp can overshoot the audio a little.
            end=min(seg.end, duration),
            text=seg.text,
            words=words,
        )
