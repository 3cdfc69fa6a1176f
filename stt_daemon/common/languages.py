"""What a model can hear: the rule for English-only Whisper models, for gateway and daemon alike.

The gateway refuses such a job at submission (when every live daemon of the model
is English-only) and the daemon refuses it when it runs; both say it in the same
words, so a client sees one message whichever of them caught the job.
"""

from __future__ import annotations


def unsupported_language(model: str, language: str | None, *, multilingual: bool) -> str | None:
    """Why ``model`` cannot take a job in ``language`` (None: it can).

    An English-only model cannot hear another language: it would return garbage, so the
    job is refused instead. No ``language`` means English here. ``task=translate`` is
    allowed: English is all such a model writes anyway, and with English speech that
    is the right answer.
    """
    if multilingual or (language or "en") == "en":
        return None
    return (
        f"model {model!r} is English-only and cannot transcribe "
        f"language={language}; use a multilingual model such as 'base'"
    )
