"""The speech engine: loads a Whisper model once and transcribes decoded audio.

``transcribe`` is blocking and is meant to run in a worker thread: faster-whisper
does its work while its lazy ``segments`` generator is iterated, so the whole
iteration happens here, never on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from stt_daemon import features
from stt_daemon.audio import SAMPLE_RATE, ArraySamples, Samples
from stt_daemon.checkpoints import Checkpoint, Tracker
from stt_daemon.common.cores import usable_cores
from stt_daemon.common.liveprotocol import LiveReply, LiveWord, WindowOptions
from stt_daemon.common.protocol import JobOptions, Segment, TranscriptResult, Word
from stt_daemon.features import WindowedFeatures
from stt_daemon.live import LiveGate
from stt_daemon.models import ModelRef
from stt_daemon.vad import speech_timestamps


class ProgressCallback(Protocol):
    """Told how far a transcription is, with the segments finished since the last call.

    Called from the transcribing thread. Engines that have no segments to show as they
    go (the stand-in) pass the fraction alone.
    """

    def __call__(self, fraction: float, segments: Sequence[Segment] = (), /) -> None:
        """``fraction`` of the audio is done; ``segments`` are new since the last call."""
        ...


#: Voice activity for live windows: an utterance ends after ~500 ms of silence, so
#: stretches apart by 300 ms are two, and speech is padded by little.
LIVE_VAD = {"min_silence_duration_ms": 300, "speech_pad_ms": 100}


class JobCancelled(Exception):
    """The job was asked to stop while running (a user's cancel, or the daemon stopping)."""


class Engine(Protocol):
    """What the handler needs from a speech engine (tests substitute a fake)."""

    name: str
    #: False for English-only models (``*.en``): no language detection, no translation.
    multilingual: bool

    def transcribe(
        self,
        audio: Samples,
        options: JobOptions,
        on_progress: ProgressCallback,
        cancelled: threading.Event,
        tracker: Tracker | None = None,
    ) -> TranscriptResult:
        """Transcribe 16 kHz mono audio, read a window at a time; blocking.

        With a ``tracker``, start where its checkpoint ends (if any) and report every
        segment and window to it, so that the job can be resumed.
        """
        ...

    def detect_language(self, audio: Samples) -> tuple[str, float]:
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
        # single-thread jobs use the cores better (see docs/benchmarks.md).
        self._batched = BatchedInferencePipeline(self._model) if batch_size > 0 else None
        # Features a window at a time, from the recording on disk (see features.py).
        self._features = WindowedFeatures(self._model.feature_extractor)
        self._model.feature_extractor = self._features
        #: Holds batch transcriptions at a window boundary while live windows are
        #: decoded (stt_daemon/live.py); the daemon shares one with its live server.
        self.gate = LiveGate()

    def _whisper_kwargs(self, options: JobOptions) -> dict[str, Any]:
        """faster-whisper's arguments for a job; only what the job set overrides the defaults."""
        kwargs: dict[str, Any] = {
            "language": options.language,
            "task": options.task.value,
            "word_timestamps": options.word_timestamps,
            "beam_size": options.beam_size or self._beam_size,
            "initial_prompt": options.prompt,
            "hotwords": options.hotwords,
        }
        if options.temperature is not None:
            # One temperature, as asked: no fallback to other temperatures.
            kwargs["temperature"] = options.temperature
        return kwargs

    def detect_language(self, audio: Samples) -> tuple[str, float]:
        """Whisper's own detection on the first 30 s, as an unsplit transcription does it."""
        if not self.multilingual:
            return "en", 1.0
        language, probability, _ = self._model.detect_language(audio.read(0, 30 * SAMPLE_RATE))
        return language, probability

    def _prompt_tokens(self, prompt: str | None) -> list[int]:
        """The job's own prompt as faster-whisper tokenizes it (a leading space)."""
        if not prompt:
            return []
        return list(self._model.hf_tokenizer.encode(" " + prompt.strip()).ids)

    def _resume_kwargs(self, options: JobOptions, tracker: Tracker | None) -> dict[str, Any]:
        """Prompt and language that make a resumed run go on as the first one would have."""
        resume = tracker.resume if tracker is not None else None
        if resume is None:
            return {}
        prompt = [] if resume.prompt_reset else self._prompt_tokens(options.prompt)
        return {
            "initial_prompt": prompt + resume.prompt_tokens,
            "language": options.language or resume.language,
        }

    @staticmethod
    def _clips(audio: Samples, options: JobOptions, start: float) -> list[float]:
        """Where Whisper decodes: from ``start`` on, or the speech after it with the VAD.

        faster-whisper's own VAD filter concatenates the speech into one array; clips
        on the recording's clock keep it on disk (and timestamps need no restoring).
        An empty list: the VAD heard no speech at all.
        """
        if not options.vad_filter:
            return [start]
        from faster_whisper.vad import VadOptions

        clips: list[float] = []
        for first, last in speech_timestamps(audio, VadOptions()):
            begin, end = max(first / SAMPLE_RATE, start), last / SAMPLE_RATE
            if end > begin:
                clips += [round(begin, 3), round(end, 3)]
        return clips

    def transcribe(
        self,
        audio: Samples,
        options: JobOptions,
        on_progress: ProgressCallback,
        cancelled: threading.Event,
        tracker: Tracker | None = None,
    ) -> TranscriptResult:
        """Transcribe, reporting progress per segment and stopping early when cancelled."""
        if cancelled.is_set():
            raise JobCancelled("stopped before transcribing")
        if self._batched is not None:
            # Resuming needs Whisper's own windows, not chunks decoded together.
            tracker = None
        with self._segments(audio, options, tracker) as (segments_iter, info):
            return self._collect(
                audio,
                options,
                on_progress,
                cancelled,
                tracker,
                self.gate.paced(segments_iter),
                info,
            )

    @contextmanager
    def _segments(
        self, audio: Samples, options: JobOptions, tracker: Tracker | None
    ) -> Iterator[tuple[Iterable[Any], Any]]:
        """faster-whisper's lazy segments and info, reading ``audio`` while they are iterated."""
        if self._batched is not None:
            # The batched (GPU) pipeline takes the recording whole, and finds its chunks
            # with the VAD. With timestamps, segments stay sentence-sized (subtitles need
            # them), and tiny.en was seen dropping the end of a chunk without them.
            kwargs = {
                **self._whisper_kwargs(options),
                "vad_filter": True,
                "without_timestamps": False,
            }
            yield self._batched.transcribe(audio.read(), batch_size=self._batch_size, **kwargs)
            return
        resume = tracker.resume if tracker is not None else None
        clips = self._clips(audio, options, resume.start if resume is not None else 0.0)
        if not clips:
            yield iter(()), None  # the VAD heard not a word of speech
            return
        kwargs = {
            **self._whisper_kwargs(options),
            **self._resume_kwargs(options, tracker),
            "vad_filter": False,
            "clip_timestamps": clips,
        }
        stand_in = features.stand_in(audio.samples)
        with self._features.reading(stand_in, audio):
            yield self._model.transcribe(stand_in, **kwargs)

    def _collect(
        self,
        audio: Samples,
        options: JobOptions,
        on_progress: ProgressCallback,
        cancelled: threading.Event,
        tracker: Tracker | None,
        segments_iter: Iterable[Any],
        info: Any,
    ) -> TranscriptResult:
        """Our result from faster-whisper's segments, told to the tracker as they come."""
        resume = tracker.resume if tracker is not None else None
        language, probability = _language(options, resume, info)
        duration = audio.samples / SAMPLE_RATE
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
                on_progress(min(seg.end / duration, 1.0), (segment,))
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
            avg_logprob=round(seg.avg_logprob, 4),
        )

    def transcribe_window(self, samples: Any, options: WindowOptions) -> LiveReply:
        """A live session's window (at most ~30 s, in memory): words and where speech is.

        Greedy, at temperature 0 and without fallback: a live step must take a
        predictable, short time, and temperature fallback doubles the error rate on
        windows cut mid-word. No VAD filter inside Whisper: the voice-activity view
        is computed apart and returned, and a window without speech is not decoded.
        """
        from faster_whisper.vad import VadOptions

        duration = len(samples) / SAMPLE_RATE
        regions = speech_timestamps(ArraySamples(samples), VadOptions(**LIVE_VAD))
        speech = [(round(a / SAMPLE_RATE, 3), round(b / SAMPLE_RATE, 3)) for a, b in regions]
        if not speech:
            return LiveReply(duration=duration, speech=[], language=options.language)
        segments, info = self._model.transcribe(
            samples,
            language=options.language,
            task=options.task.value,
            beam_size=1,
            temperature=0.0,
            word_timestamps=True,
            condition_on_previous_text=False,
            initial_prompt=options.prompt,
            vad_filter=False,
        )
        words = [
            LiveWord(
                start=round(w.start, 3),
                end=round(w.end, 3),
                word=w.word,
                probability=round(w.probability, 4),
            )
            for segment in segments
            for w in segment.words or ()
        ]
        return LiveReply(duration=duration, words=words, speech=speech, language=info.language)


def _language(
    options: JobOptions, resume: Checkpoint | None, info: Any
) -> tuple[str | None, float | None]:
    """The language and its probability: a resumed run keeps what it detected before."""
    if resume is not None and resume.language:
        return resume.language, resume.language_probability
    if info is None:  # the VAD heard no speech: nothing was detected
        return options.language, None
    return info.language, info.language_probability
