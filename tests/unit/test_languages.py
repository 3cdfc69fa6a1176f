"""stt_daemon.common.languages: the English-only rule the gateway and the daemon share."""

from __future__ import annotations

import time

import pytest
from fastapi import HTTPException

from gateway.config import GatewaySettings
from gateway.fleet import Fleet, Seen
from gateway.services import Services
from stt_daemon.common.languages import unsupported_language
from stt_daemon.common.protocol import DaemonAnnouncement
from stt_daemon.common.topology import Names


@pytest.mark.parametrize("language", [None, "en"])
def test_an_english_only_model_takes_english(language: str | None) -> None:
    assert unsupported_language("tiny.en", language, multilingual=False) is None


def test_a_multilingual_model_takes_any_language() -> None:
    assert unsupported_language("base", "de", multilingual=True) is None


def test_an_english_only_model_refuses_another_language_and_names_a_way_out() -> None:
    problem = unsupported_language("tiny.en", "es", multilingual=False)
    assert problem == (
        "model 'tiny.en' is English-only and cannot transcribe language=es; "
        "use a multilingual model such as 'base'"
    )


def _services(*multilingual: bool) -> Services:
    """A gateway that has heard one daemon of ``tiny.en`` per flag (multilingual or not)."""
    fleet = Fleet(Names())
    for index, many in enumerate(multilingual):
        announcement = DaemonAnnouncement(
            worker=f"d{index}",
            models=["tiny.en"],
            multilingual=["tiny.en"] if many else [],
            prefetch=1,
            interval=5,
        )
        fleet._seen[announcement.worker] = Seen(announcement, time.monotonic())
    return Services(GatewaySettings(), None, None, None, fleet)  # type: ignore[arg-type]


def test_the_gateway_refuses_what_every_daemon_of_the_model_would_refuse() -> None:
    fields = {"model": "tiny.en", "language": "es"}
    with pytest.raises(HTTPException) as refused:
        _services(False, False).job_options(fields)
    assert refused.value.status_code == 400
    assert refused.value.detail == unsupported_language("tiny.en", "es", multilingual=False)
    assert _services(False, True).job_options(fields).language == "es"
    # No daemon heard yet: the job waits in its queue, and the daemon that takes it decides.
    assert _services().job_options(fields).language == "es"
    assert _services(False).job_options({"model": "tiny.en", "language": "en"}).language == "en"
