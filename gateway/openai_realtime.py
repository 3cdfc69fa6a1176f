"""OpenAI's realtime transcription protocol: client events in, server events out.

No I/O here (``gateway/routes/realtime.py`` owns the socket and the live sessions):
what a client may send, validated at the edge into typed events, with OpenAI's own
error shapes and codes; the session object as ``session.created``/``updated`` (the GA
API) or ``transcription_session.created``/``updated`` (the beta API, chosen by the
``OpenAI-Beta: realtime=v1`` header) show it. Items, from a live session's events, are
``gateway/realtime_items.py``'s.

Field names follow the ``openai`` package's typed models (``openai.types.realtime``,
GA, and ``openai.types.beta.realtime``, beta) and the API reference's client and
server events.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

#: Model names OpenAI clients send; each means this gateway's default model.
OPENAI_MODELS = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"})
#: Other OpenAI transcription models (``gpt-4o-transcribe-2025-...``, ``gpt-realtime-whisper``).
OPENAI_MODEL_PREFIX = "gpt-"
LOGPROBS = "item.input_audio_transcription.logprobs"
#: OpenAI refuses to commit less than this much audio.
MIN_COMMIT_SECONDS = 0.1
Event = dict[str, Any]


def new_id(prefix: str) -> str:
    """An id in OpenAI's style: ``item_``, ``event_``, ``sess_`` and 24 hex digits."""
    return f"{prefix}_{secrets.token_hex(12)}"


class ProtocolError(Exception):
    """A client event refused; the session goes on (as OpenAI's does)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id
        self.kind = kind

    def event(self) -> Event:
        """The ``error`` server event (its ``event_id`` is added when it is sent)."""
        error = {
            "type": self.kind,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }
        return {"type": "error", "error": error}


# -- client events ----------------------------------------------------------------


class _Strict(BaseModel):
    # OpenAI answers an undocumented field with ``unknown_parameter``; so do we.
    model_config = ConfigDict(extra="forbid")


class Transcription(_Strict):
    """``audio.input.transcription`` (GA) / ``input_audio_transcription`` (beta)."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    # Documented, accepted, not used here.
    delay: str | None = None
    keywords: list[str] | None = None
    languages: list[str] | None = None


class TurnDetection(_Strict):
    """Server VAD (``semantic_vad`` is taken as server VAD)."""

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None
    eagerness: str | None = None
    idle_timeout_ms: int | None = None


class NoiseReduction(_Strict):
    """Accepted and not applied (Whisper and the daemons' VAD cope with noise)."""

    type: str | None = None
    strength: float | None = None


class AudioFormat(_Strict):
    """GA ``audio.input.format``: PCM at 24 kHz only (as OpenAI's ``audio/pcm``)."""

    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] | None = None
    rate: int | None = None


class AudioInput(_Strict):
    """GA ``audio.input``."""

    format: AudioFormat | None = None
    noise_reduction: NoiseReduction | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None


class Audio(_Strict):
    """GA ``audio``."""

    input: AudioInput | None = None


class GASession(_Strict):
    """GA ``session.update``'s ``session`` for a transcription session."""

    type: Literal["transcription"]
    audio: Audio | None = None
    include: list[str] | None = None


class BetaSession(_Strict):
    """Beta ``transcription_session.update``'s ``session``."""

    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    input_audio_noise_reduction: NoiseReduction | None = None
    include: list[str] | None = None
    modalities: list[str] | None = None
    client_secret: dict[str, Any] | None = None


class SessionUpdate(_Strict):
    """``session.update`` (GA)."""

    type: Literal["session.update"]
    event_id: str | None = None
    session: GASession


class TranscriptionSessionUpdate(_Strict):
    """``transcription_session.update`` (beta)."""

    type: Literal["transcription_session.update"]
    event_id: str | None = None
    session: BetaSession


class Append(_Strict):
    """``input_audio_buffer.append``: base64 audio in the session's format."""

    type: Literal["input_audio_buffer.append"]
    event_id: str | None = None
    audio: str


class Commit(_Strict):
    """``input_audio_buffer.commit``."""

    type: Literal["input_audio_buffer.commit"]
    event_id: str | None = None


class Clear(_Strict):
    """``input_audio_buffer.clear``."""

    type: Literal["input_audio_buffer.clear"]
    event_id: str | None = None


ClientEvent = SessionUpdate | TranscriptionSessionUpdate | Append | Commit | Clear
CLIENT_EVENTS: dict[str, type[ClientEvent]] = {
    "session.update": SessionUpdate,
    "transcription_session.update": TranscriptionSessionUpdate,
    "input_audio_buffer.append": Append,
    "input_audio_buffer.commit": Commit,
    "input_audio_buffer.clear": Clear,
}


def parse_client_event(text: str) -> ClientEvent:
    """The event in a text frame; :class:`ProtocolError` in OpenAI's words if it is not one."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ProtocolError(
            "invalid_json", "The event is not valid JSON: send one JSON object per message."
        ) from None
    if not isinstance(raw, dict):
        raise ProtocolError("invalid_json", "The event must be a JSON object.")
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    kind = raw.get("type")
    if kind is None:
        raise ProtocolError(
            "missing_required_parameter",
            "Missing required parameter: 'type'.",
            param="type",
            event_id=event_id,
        )
    model = CLIENT_EVENTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        supported = ", ".join(f"'{name}'" for name in CLIENT_EVENTS)
        raise ProtocolError(
            "invalid_value",
            f"Invalid value: {_shown(kind)}. Supported values are: {supported}.",
            param="type",
            event_id=event_id,
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc.errors()[0], event_id) from None


def _shown(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 80 else text[:77] + "..."


def _validation_error(error: ErrorDetails, event_id: str | None) -> ProtocolError:
    """One pydantic error as OpenAI words it (its codes and ``param`` paths)."""
    param = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        code, message = "unknown_parameter", f"Unknown parameter: '{param}'."
    elif kind == "missing":
        code, message = "missing_required_parameter", f"Missing required parameter: '{param}'."
    elif kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        code = "invalid_value"
        message = f"Invalid value: {_shown(error['input'])}. Supported values are: {expected}."
    else:
        code = "invalid_type"
        message = f"Invalid type for '{param}': {error['msg'].lower()}."
    return ProtocolError(code, message, param=param, event_id=event_id)


# -- the session's configuration --------------------------------------------------


@dataclass(frozen=True)
class TranscriptionConfig:
    """What a connection's next live session will be opened with."""

    #: The model as the client named it (echoed back); ``resolved`` is ours.
    model: str
    resolved: str
    language: str | None = None
    prompt: str | None = None
    #: Turn detection as the client set it (None: manual commits only).
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    include: tuple[str, ...] = ()

    @property
    def vad(self) -> bool:
        """Whether the server ends items on silence."""
        return self.turn_detection is not None

    @property
    def end_silence(self) -> float | None:
        """The client's ``silence_duration_ms`` in seconds, within 0.1-10 s (None: not set)."""
        td = self.turn_detection
        if td is None or td.silence_duration_ms is None:
            return None
        return min(max(td.silence_duration_ms / 1000, 0.1), 10.0)

    @property
    def logprobs(self) -> bool:
        """Whether deltas and transcripts carry word log-probabilities."""
        return LOGPROBS in self.include


def resolve_model(name: str, served: list[str], param: str, event_id: str | None) -> str:
    """Our model for a name a client sent: OpenAI's names mean the default model."""
    if name in served:
        return name
    if name in OPENAI_MODELS or name.startswith(OPENAI_MODEL_PREFIX):
        return served[0]
    names = ", ".join(f"'{m}'" for m in [*served, *sorted(OPENAI_MODELS)])
    raise ProtocolError(
        "invalid_value",
        f"Invalid value: {_shown(name)}. Supported values are: {names}.",
        param=param,
        event_id=event_id,
    )


@dataclass(frozen=True)
class _Asked:
    """What an update sets, whichever dialect it came in (None: not in the update)."""

    transcription: Transcription | None
    #: Where the transcription sits in the event (the ``param`` of an error about it).
    transcription_path: str
    #: Whether the update names turn detection (its None turns it off).
    sets_turn_detection: bool
    turn_detection: TurnDetection | None
    include: list[str] | None


def updated_config(
    config: TranscriptionConfig,
    event: SessionUpdate | TranscriptionSessionUpdate,
    served: list[str],
) -> TranscriptionConfig:
    """The configuration after an update: only the fields it names change."""
    asked = _ga_asked(event) if isinstance(event, SessionUpdate) else _beta_asked(event)
    changes: dict[str, Any] = {}
    if asked.transcription is not None:
        changes.update(
            _transcription_changes(
                asked.transcription, asked.transcription_path, served, event.event_id
            )
        )
    if asked.sets_turn_detection:
        changes["turn_detection"] = asked.turn_detection
    if asked.include is not None:
        changes["include"] = tuple(asked.include)
    return replace(config, **changes)


def _ga_asked(event: SessionUpdate) -> _Asked:
    """A GA ``session.update``: the fields under ``session.audio.input``."""
    inputs = event.session.audio.input if event.session.audio else None
    given = inputs.model_fields_set if inputs else set()
    _check_ga_format(inputs.format if inputs else None, event.event_id)
    return _Asked(
        transcription=inputs.transcription if inputs and "transcription" in given else None,
        transcription_path="session.audio.input.transcription",
        sets_turn_detection="turn_detection" in given,
        turn_detection=inputs.turn_detection if inputs else None,
        include=event.session.include,
    )


def _beta_asked(event: TranscriptionSessionUpdate) -> _Asked:
    """A beta ``transcription_session.update``: the fields under ``session``."""
    session = event.session
    if session.input_audio_format not in (None, "pcm16"):
        raise ProtocolError(
            "invalid_value",
            f"Invalid value: '{session.input_audio_format}'. "
            "Supported values are: 'pcm16' (G.711 is not supported here).",
            param="session.input_audio_format",
            event_id=event.event_id,
        )
    given = session.model_fields_set
    return _Asked(
        transcription=session.input_audio_transcription
        if "input_audio_transcription" in given
        else None,
        transcription_path="session.input_audio_transcription",
        sets_turn_detection="turn_detection" in given,
        turn_detection=session.turn_detection,
        include=session.include,
    )


def _transcription_changes(
    transcription: Transcription, path: str, served: list[str], event_id: str | None
) -> dict[str, Any]:
    """The model, language and prompt the update names (the model resolved to ours)."""
    fields = transcription.model_fields_set
    changes: dict[str, Any] = {}
    if "model" in fields and transcription.model:
        resolved = resolve_model(transcription.model, served, f"{path}.model", event_id)
        changes.update(model=transcription.model, resolved=resolved)
    if "language" in fields:
        changes["language"] = transcription.language or None
    if "prompt" in fields:
        changes["prompt"] = transcription.prompt or None
    return changes


def _check_ga_format(fmt: AudioFormat | None, event_id: str | None) -> None:
    if fmt is None:
        return
    if fmt.type not in (None, "audio/pcm") or fmt.rate not in (None, 24000):
        raise ProtocolError(
            "invalid_value",
            "Only 'audio/pcm' at 24000 Hz is supported here (16-bit little-endian mono).",
            param="session.audio.input.format",
            event_id=event_id,
        )


def _turn_detection(config: TranscriptionConfig, silence_ms: int) -> Event | None:
    """Turn detection as it is in effect: the client's silence (else the gateway's), type."""
    td = config.turn_detection
    if td is None:
        return None
    return {
        "type": td.type,
        "threshold": td.threshold if td.threshold is not None else 0.5,
        "prefix_padding_ms": td.prefix_padding_ms if td.prefix_padding_ms is not None else 300,
        "silence_duration_ms": round(config.end_silence * 1000)
        if config.end_silence
        else silence_ms,
    }


def ga_session(config: TranscriptionConfig, session_id: str, silence_ms: int) -> Event:
    """The GA transcription session object (``session.created`` / ``session.updated``)."""
    return {
        "id": session_id,
        "object": "realtime.transcription_session",
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "noise_reduction": None,
                "transcription": {
                    "model": config.model,
                    "language": config.language,
                    "prompt": config.prompt or "",
                },
                "turn_detection": _turn_detection(config, silence_ms),
            }
        },
        "include": list(config.include) or None,
    }


def beta_session(config: TranscriptionConfig, session_id: str, silence_ms: int) -> Event:
    """The beta transcription session object (``transcription_session.created`` / ``updated``)."""
    return {
        "id": session_id,
        "object": "realtime.transcription_session",
        "modalities": ["text"],
        "input_audio_format": "pcm16",
        "input_audio_transcription": {
            "model": config.model,
            "language": config.language,
            "prompt": config.prompt or "",
        },
        "turn_detection": _turn_detection(config, silence_ms),
        "input_audio_noise_reduction": None,
        "include": list(config.include) or None,
    }
