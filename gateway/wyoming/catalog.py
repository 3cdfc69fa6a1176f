"""What ``describe`` answers, and which model a ``transcribe`` gets.

The models are the gateway's (``STT_MODELS``: live sessions open only for those).
Whisper names its English-only models ``*.en``; the others speak Whisper's
languages. The gateway never imports faster-whisper, so the list is kept here
(``faster_whisper.tokenizer._LANGUAGE_CODES``; a unit test compares the two).
"""

from __future__ import annotations

from dataclasses import dataclass

from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from stt_daemon import __version__

#: The languages of Whisper's multilingual models.
# fmt: off
WHISPER_LANGUAGES = (
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy", "da",
    "de", "el", "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw", "he",
    "hi", "hr", "ht", "hu", "hy", "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn", "ko", "la",
    "lb", "ln", "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl",
    "nn", "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru", "sa", "sd", "si", "sk", "sl", "sn", "so",
    "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl", "tr", "tt", "uk", "ur", "uz",
    "vi", "yi", "yo", "zh", "yue",
)
# fmt: on

WHISPER = Attribution(name="OpenAI", url="https://github.com/openai/whisper")
PROGRAM = Attribution(
    name="stt-jobs on faster-whisper", url="https://github.com/SYSTRAN/faster-whisper"
)
#: Longest prompt made of a transcribe's names and terms (Whisper reads ~224 tokens).
MAX_PROMPT_CHARS = 400


def languages_of(model: str) -> list[str]:
    """``["en"]`` for an English-only model (``*.en``), Whisper's languages otherwise."""
    return ["en"] if model.endswith(".en") else list(WHISPER_LANGUAGES)


def build_info(models: list[str]) -> Info:
    """The ``info`` event: one ASR program whose models are the gateway's."""
    program = AsrProgram(
        name="stt-jobs",
        attribution=PROGRAM,
        installed=True,
        description="Whisper on a fleet of stt-jobs daemons (live sessions over RabbitMQ)",
        version=__version__,
        models=[
            AsrModel(
                name=model,
                attribution=WHISPER,
                installed=True,
                description=f"Whisper {model}",
                version=None,
                languages=languages_of(model),
            )
            for model in models
        ],
        supports_transcript_streaming=True,
        # Utterances end on silence, but a transcription ends only at audio-stop:
        # the client (Home Assistant) detects the end of the command.
        requires_external_vad=True,
    )
    return Info(asr=[program])


class Unservable(Exception):
    """A ``transcribe`` asks for a model or language nobody here serves."""


@dataclass(frozen=True)
class Choice:
    """The model and language a transcription runs with."""

    model: str
    language: str | None


def choose(models: list[str], name: str | None, language: str | None) -> Choice:
    """The model named (or the first that speaks ``language``) and the Whisper language.

    Home Assistant sends its pipeline's language (``en``, sometimes ``en-US``) and
    no model: with ``STT_MODELS=tiny.en,base`` a German pipeline gets ``base``.
    """
    code = _whisper_language(language) if language else None
    if name is not None:
        if name not in models:
            raise Unservable(f"unknown model {name!r}; served: {', '.join(models)}")
        if code is not None and code not in languages_of(name):
            raise Unservable(f"model {name!r} does not transcribe language {code!r}")
        return Choice(name, code)
    for model in models:
        if code is None or code in languages_of(model):
            return Choice(model, code)
    raise Unservable(f"no model here transcribes language {code!r}; served: {', '.join(models)}")


def prompt_of(names: list[str], terms: list[str]) -> str | None:
    """Whisper's initial prompt from a transcribe's names and terms (names first)."""
    text = ", ".join(part.strip() for part in [*names, *terms] if part.strip())
    return text[:MAX_PROMPT_CHARS] or None


def _whisper_language(language: str) -> str:
    """``en-US`` / ``pt_BR`` / ``EN`` -> Whisper's code, or Unservable."""
    code = language.replace("_", "-").split("-")[0].strip().lower()
    if code not in WHISPER_LANGUAGES:
        raise Unservable(f"language {language!r} is not one Whisper knows")
    return code
