"""Admission by duration and speed: no job may outlive the broker's acknowledgement timeout.

RabbitMQ closes the channel of a consumer that holds a delivery unacknowledged
longer than its ``consumer_timeout`` (30 min by default, global only on 3.10):
the job goes back to the queue, runs again elsewhere, and is killed again at
the same point, forever. So before transcribing, the daemon estimates how long
the job will take from the audio's length and the speed it has measured on
this model, and refuses what would not finish in time with a reason a person
can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Weight of the newest measurement in the moving average of a model's speed.
_SMOOTHING = 0.3


@dataclass
class Admission:
    """Per-model speed (seconds of work per second of audio), learned from finished jobs."""

    #: The broker's ``consumer_timeout`` in seconds (``STT_ACK_TIMEOUT``).
    ack_timeout: float
    #: Speed assumed before a model has finished a job here (``STT_ASSUMED_RTF``).
    assumed_rtf: float
    #: Share of the timeout a job may use; the rest absorbs slow moments.
    headroom: float = 0.5
    _rtf: dict[str, float] = field(default_factory=dict)

    def rtf(self, model: str) -> float:
        """The real-time factor expected of this model now."""
        return self._rtf.get(model, self.assumed_rtf)

    def observe(self, model: str, audio_s: float, took_s: float) -> None:
        """Learn from a finished job (short clips say little: their overhead dominates)."""
        if audio_s < 5 or took_s <= 0:
            return
        measured = took_s / audio_s
        previous = self._rtf.get(model)
        self._rtf[model] = (
            measured if previous is None else previous + _SMOOTHING * (measured - previous)
        )

    def refusal(self, model: str, audio_s: float) -> str | None:
        """Why the job would not finish within the budget, or None when it would."""
        budget = self.ack_timeout * self.headroom
        estimate = audio_s * self.rtf(model)
        if estimate <= budget:
            return None
        longest = budget / self.rtf(model)
        return (
            f"{audio_s:.0f} s of audio would take about {estimate:.0f} s on model {model!r} "
            f"at this daemon's speed, past the broker's delivery acknowledgement timeout "
            f"({self.ack_timeout:.0f} s, STT_ACK_TIMEOUT); send parts shorter than "
            f"{longest:.0f} s, or raise RabbitMQ's consumer_timeout and STT_ACK_TIMEOUT"
        )
