"""LocalAgreement-2: which words of a live hypothesis are final.

Whisper re-transcribes a live session's growing window about once a second, and
the words at the end of each hypothesis change as more audio arrives. A word is
committed once two consecutive hypotheses agree on it, from the last committed
word on: the committed text only ever grows, and never changes. What follows the
agreed prefix is the tentative tail that a client may show greyed out.

Times are the session's own (seconds from its start), so that a hypothesis of a
window trimmed at some offset lines up with the previous one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: A new word may start this much before the last committed word ended and still
#: be new (timestamps of one word move a little between hypotheses).
_OVERLAP_S = 0.1
#: Longest run of committed words looked for at the seam with a new hypothesis.
_MAX_NGRAM = 5
#: How far the seam's words may have moved in time between two hypotheses.
_SEAM_S = 1.0


@dataclass(frozen=True)
class TimedWord:
    """A word with its session times; ``text`` keeps Whisper's leading space."""

    start: float
    end: float
    text: str
    probability: float = 1.0

    @property
    def key(self) -> str:
        """What two hypotheses must share for the word to agree."""
        return "".join(c for c in self.text.lower() if c.isalnum())


def _same(a: Sequence[TimedWord], b: Sequence[TimedWord]) -> bool:
    return len(a) == len(b) and all(x.key == y.key for x, y in zip(a, b, strict=True))


class LocalAgreement:
    """Commits the longest prefix two consecutive hypotheses share (n = 2)."""

    def __init__(self) -> None:
        self.committed: list[TimedWord] = []
        #: The previous hypothesis, past the committed words.
        self._previous: list[TimedWord] = []

    @property
    def committed_end(self) -> float:
        """When the last committed word ends (0 before any)."""
        return self.committed[-1].end if self.committed else 0.0

    @property
    def tail(self) -> list[TimedWord]:
        """The words of the latest hypothesis that are not committed yet."""
        return list(self._previous)

    def _fresh(self, hypothesis: Sequence[TimedWord]) -> list[TimedWord]:
        """The hypothesis past what is committed.

        By the words first: Whisper re-reads the window from its start, so the
        committed words' last few reappear in it; what follows them is new. Their
        times move between hypotheses by a tenth of a second or more, so a time
        cut alone would drop or repeat the word at the seam. When they cannot be
        found (the window was trimmed after them), by time: the words whose middle
        comes after the last committed word's end.
        """
        end = self.committed_end
        if self.committed:
            for n in range(min(_MAX_NGRAM, len(self.committed)), 0, -1):
                seam = self.committed[-n:]
                for i in range(len(hypothesis) - n, -1, -1):
                    near = abs(hypothesis[i + n - 1].end - end) <= _SEAM_S
                    if near and _same(seam, hypothesis[i : i + n]):
                        return list(hypothesis[i + n :])
        return [w for w in hypothesis if (w.start + w.end) / 2 > end - _OVERLAP_S]

    def insert(
        self, hypothesis: Sequence[TimedWord], until: float = float("inf")
    ) -> list[TimedWord]:
        """Take the next hypothesis; return the words it commits (possibly none).

        Only words that end by ``until`` may be committed, so that a session can
        hold back the words at its window's very end (``LiveLimits.hold``; off by
        default: on the benchmark's speech it changed no word).
        """
        fresh = self._fresh(hypothesis)
        agreed: list[TimedWord] = []
        for new, old in zip(fresh, self._previous, strict=False):
            if new.key != old.key or not new.key or new.end > until:
                break
            agreed.append(new)
        self.committed += agreed
        self._previous = fresh[len(agreed) :]
        return agreed

    def flush(self) -> list[TimedWord]:
        """Commit the tentative tail as it stands (the utterance or the session ended)."""
        tail, self._previous = self._previous, []
        self.committed += tail
        return tail

    def forget_before(self, time: float) -> None:
        """Drop the tentative words that end before ``time`` (audio trimmed away)."""
        self._previous = [w for w in self._previous if w.end > time]
