"""Word error rate: how far one transcript is from another, in words."""

from __future__ import annotations

from stack import normalise


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / words of the reference, on normalised text."""
    ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
    if not ref:
        return float(bool(hyp))
    # Levenshtein distance over words, one row at a time.
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, start=1):
        current = [i]
        for j, other in enumerate(hyp, start=1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
            )
        previous = current
    return previous[-1] / len(ref)
