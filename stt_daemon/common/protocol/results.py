"""A job's outcome: the transcript (segments, words, speakers, warnings) or the error."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from stt_daemon.common.protocol.base import ErrorCode, Task, _Wire


class Word(_Wire):
    """One word with its timing."""

    start: float
    end: float
    word: str
    probability: float
    #: With ``diarize=speakers``: who said it (``SPEAKER_00``...).
    speaker: str | None = None


class SpeakerTurn(_Wire):
    """One stretch of time in which one speaker talks (``diarize=speakers``)."""

    start: float
    end: float
    speaker: str


class Segment(_Wire):
    """One stretch of speech."""

    id: int
    start: float
    end: float
    text: str
    words: list[Word] | None = None
    #: Whisper's mean token log probability for the segment: how sure it was.
    avg_logprob: float | None = None
    #: Who spoke: ``channel_0``, ``channel_1``... with ``diarize=channels``;
    #: ``SPEAKER_00``, ``SPEAKER_01``... (in order of first appearance) with
    #: ``diarize=speakers``, where a segment never spans a change of speaker.
    speaker: str | None = None


class WarningCode(StrEnum):
    """The warning codes daemons write."""

    #: Speech (Silero VAD) that no segment covers: another language than the model's
    #: or the detected one, most likely.
    UNTRANSCRIBED_SPEECH = "untranscribed_speech"


class ResultWarning(_Wire):
    """Something a user should know about a result that succeeded."""

    #: A ``WarningCode`` value, typed as a plain string so that consumers keep decoding
    #: results when a newer daemon adds a code.
    code: str
    #: For people: what happened and what to do.
    message: str
    #: Where in the audio, seconds (absent when it concerns the whole result).
    start: float | None = None
    end: float | None = None
    #: The language heard there, when a multilingual model could tell.
    language: str | None = None


class VoicePrintsWire(_Wire):
    """Speaker embeddings of one part of a split recording, for the merge (internal).

    A part's daemon embeds its own speech; the merge clusters the windows of all
    parts together, so one person keeps one label across parts. Never in a final
    result: daemons strip it.
    """

    #: ``(start, end)`` of each window, seconds in the whole recording.
    windows: list[tuple[float, float]]
    #: Numbers per embedding.
    dim: int = Field(ge=1, le=4096)
    #: base64 of the embeddings as little-endian float16, one row per window
    #: (``len(windows) x dim``): a minute of speech is about 40 KB.
    embeddings: str

    @model_validator(mode="after")
    def _sizes_agree(self) -> VoicePrintsWire:
        # base64 gives 4 characters for every 3 bytes, the last group padded.
        expected = 4 * -(-(2 * self.dim * len(self.windows)) // 3)
        if len(self.embeddings) != expected:
            raise ValueError(
                f"embeddings hold {len(self.embeddings)} base64 characters; "
                f"{len(self.windows)} windows of {self.dim} float16 need {expected}"
            )
        return self


class TranscriptResult(_Wire):
    """The full result of a job."""

    text: str
    language: str | None = None
    language_probability: float | None = None
    duration: float
    model: str
    task: Task = Task.TRANSCRIBE
    segments: list[Segment]
    #: Empty when there is nothing to say; e.g. speech the transcript misses.
    warnings: list[ResultWarning] = []  # noqa: RUF012 (pydantic copies defaults per instance)
    #: With ``diarize=speakers``: who spoke when, in time order (absent otherwise).
    speaker_turns: list[SpeakerTurn] | None = None
    #: Internal, on part results of a split ``diarize=speakers`` job only: the part's
    #: speaker embeddings for the merge. Daemons strip it from final results.
    voiceprints: VoicePrintsWire | None = None


class ErrorInfo(_Wire):
    """Why a job failed."""

    code: ErrorCode
    message: str
