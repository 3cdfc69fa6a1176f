"""What an OpenAI transcription form asks for, in our job's terms, and its OpenAPI description."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.formats import (
    SPEAKER_FORMATS,
    ResultFormat,
)
from gateway.openai_errors import OpenAIError
from stt_daemon.common.protocol import (
    MAX_SPEAKERS,
    Diarize,
    Task,
)

#: Model names OpenAI clients send (``whisper-1``, ``gpt-4o-transcribe``...): "the default model".
OPENAI_MODEL_NAMES = frozenset({"whisper-1"})
OPENAI_MODEL_PREFIX = "gpt-"
#: Options of ours a client may add to OpenAI's form (the Python client's ``extra_body``).
SPEAKER_OPTIONS = ("diarize", "num_speakers", "min_speakers", "max_speakers")
EXTRA_OPTIONS = ("hotwords", "vad_filter", "beam_size", "split", *SPEAKER_OPTIONS)
#: OpenAI's fields for naming speakers from voice samples (``name[]`` as its clients send
#: them): refused, not ignored, as a client sending them expects its names, not letters.
KNOWN_SPEAKER_FIELDS = ("known_speaker_names", "known_speaker_references")
#: What a streamed transcription may be asked to answer in (OpenAI streams text only).
STREAM_FORMATS = frozenset({ResultFormat.JSON, ResultFormat.TEXT})


class Granularity(StrEnum):
    """OpenAI's ``timestamp_granularities[]`` values."""

    WORD = "word"
    SEGMENT = "segment"


@dataclass(frozen=True)
class SyncRequest:
    """What an OpenAI form asks for: the job's options and how to answer."""

    fields: dict[str, Any]
    response_format: ResultFormat
    granularities: frozenset[Granularity]
    #: Answer server-sent events as the job goes (``stream=true``).
    stream: bool = False


def parse_form(form: Mapping[str, str], task: Task, default_model: str) -> SyncRequest:
    """Translate OpenAI's form fields into our job fields (validated later by job_options)."""
    stream = form.get("stream", "").lower() in {"true", "1"}
    response_format = _response_format(form, task)
    granularities = _granularities(form)
    if granularities and response_format is not ResultFormat.VERBOSE_JSON:
        raise OpenAIError(
            400,
            "timestamp_granularities requires response_format=verbose_json",
            param="timestamp_granularities",
        )
    if stream and response_format not in STREAM_FORMATS:
        raise OpenAIError(
            400,
            "stream=true answers text events: response_format must be json or text",
            param="response_format",
        )
    model = form.get("model", "")
    if model in OPENAI_MODEL_NAMES or model.startswith(OPENAI_MODEL_PREFIX):
        model = default_model
    fields: dict[str, Any] = {"model": model, "task": task.value}
    names = ["prompt", *EXTRA_OPTIONS]
    if task is Task.TRANSCRIBE:
        # Translations have no language in OpenAI's API: the source language is detected.
        names.append("language")
    fields |= {name: form[name] for name in names if name in form}
    temperature = form.get("temperature")
    if temperature and not _is_zero(temperature):
        # OpenAI's 0 means "Whisper's fallback schedule", which is what an unset temperature does.
        fields["temperature"] = temperature
    if Granularity.WORD in granularities:
        fields["word_timestamps"] = True
    fields |= _speaker_fields(form, response_format)
    return SyncRequest(fields, response_format, granularities, stream)


def _response_format(form: Mapping[str, str], task: Task) -> ResultFormat:
    raw = form.get("response_format") or ResultFormat.JSON.value
    try:
        response_format = ResultFormat(raw)
    except ValueError:
        allowed = ", ".join(f.value for f in ResultFormat)
        raise OpenAIError(
            400, f"response_format must be one of {allowed}", param="response_format"
        ) from None
    if response_format is ResultFormat.DIARIZED_JSON and task is Task.TRANSLATE:
        # OpenAI's shape says task "transcribe", and its translations have no such format.
        raise OpenAIError(
            400, "diarized_json is for transcriptions, not translations", param="response_format"
        )
    return response_format


def _speaker_fields(form: Mapping[str, str], response_format: ResultFormat) -> dict[str, str]:
    """``diarize=speakers`` for the formats made of speakers, unless the form says otherwise."""
    for name in KNOWN_SPEAKER_FIELDS:
        if form.get(name) or form.get(f"{name}[]"):
            raise OpenAIError(
                400,
                f"{name} is not supported: speakers are labelled A, B... in order of first "
                "appearance (diarized_json), or SPEAKER_00, SPEAKER_01... elsewhere",
                param=name,
            )
    if response_format not in SPEAKER_FORMATS:
        return {}
    diarize = form.get("diarize") or Diarize.SPEAKERS.value
    if diarize == Diarize.NONE.value:
        raise OpenAIError(
            400,
            f"response_format={response_format.value} needs speakers: leave diarize out "
            "or set it to speakers (or channels)",
            param="diarize",
        )
    return {"diarize": diarize}


def _granularities(form: Mapping[str, str]) -> frozenset[Granularity]:
    # The official clients send ``timestamp_granularities[]``; a comma list is accepted too.
    raw = form.get("timestamp_granularities[]") or form.get("timestamp_granularities") or ""
    values = [v.strip() for v in raw.split(",") if v.strip()]
    try:
        return frozenset(Granularity(v) for v in values)
    except ValueError:
        raise OpenAIError(
            400,
            f"timestamp_granularities must be word and/or segment, not {raw!r}",
            param="timestamp_granularities",
        ) from None


def _is_zero(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return False  # not a number: job_options reports it


def form_schema(task: Task) -> dict[str, Any]:
    """OpenAPI description of the form (the route reads the body itself, streaming)."""
    string = {"type": "string"}
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string", "example": "whisper-1"},
        "prompt": string,
        "response_format": {"type": "string", "enum": [f.value for f in ResultFormat]},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "stream": {"type": "boolean", "description": "answer server-sent events"},
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "enum": [g.value for g in Granularity]},
        },
    }
    if task is Task.TRANSCRIBE:
        properties["language"] = string
    properties |= _speaker_schema()
    schema = {"type": "object", "required": ["file"], "properties": properties}
    content = {"multipart/form-data": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def _speaker_schema() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 1, "maximum": MAX_SPEAKERS}
    return {
        "diarize": {
            "type": "string",
            "enum": [d.value for d in Diarize],
            "description": "speakers: tell voices apart (diarized_json and rttm turn it on)",
        },
        "num_speakers": count,
        "min_speakers": count,
        "max_speakers": count,
    }
