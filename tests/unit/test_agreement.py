"""LocalAgreement-2: commits what two hypotheses agree on, never changes it, never repeats."""

from __future__ import annotations

from gateway.agreement import LocalAgreement, TimedWord


def words(text: str, start: float = 0.0, step: float = 0.5, shift: float = 0.0) -> list[TimedWord]:
    return [
        TimedWord(start + i * step + shift, start + (i + 1) * step + shift, " " + w)
        for i, w in enumerate(text.split())
    ]


def test_a_word_is_committed_once_two_hypotheses_agree() -> None:
    agreement = LocalAgreement()
    assert agreement.insert(words("and so")) == []
    committed = agreement.insert(words("and so my fellow"))
    assert [w.key for w in committed] == ["and", "so"]
    assert [w.key for w in agreement.tail] == ["my", "fellow"]


def test_disagreement_stops_the_commit_at_the_first_different_word() -> None:
    agreement = LocalAgreement()
    agreement.insert(words("ask not watch your"))
    committed = agreement.insert(words("ask not what your country"))
    assert [w.key for w in committed] == ["ask", "not"]
    committed = agreement.insert(words("ask not what your country can"))
    assert [w.key for w in committed] == ["what", "your", "country"]


def test_punctuation_and_case_do_not_count_as_disagreement() -> None:
    agreement = LocalAgreement()
    agreement.insert(words("for you."))
    assert [w.key for w in agreement.insert(words("For you ask"))] == ["for", "you"]


def test_the_seam_is_found_by_words_when_times_drift() -> None:
    """'not' ended at 2.0 in one hypothesis and 1.8 in the next: 'what' must survive."""
    agreement = LocalAgreement()
    agreement.insert(words("ask not"))
    agreement.insert(words("ask not watch"))  # commits "ask not", ending at 1.0
    drifted = words("ask not what your", shift=-0.15)
    assert agreement.insert(drifted) == []  # "what" vs "watch": no agreement yet
    committed = agreement.insert(words("ask not what your country", shift=-0.2))
    assert [w.key for w in committed] == ["what", "your"]
    assert [w.key for w in agreement.committed] == ["ask", "not", "what", "your"]


def test_a_trimmed_window_lines_up_by_time() -> None:
    agreement = LocalAgreement()
    agreement.insert(words("one two three"))
    agreement.insert(words("one two three four"))  # commits one two three (ends 1.5)
    # The window now starts after the committed words: nothing of them in it.
    later = words("four five", start=1.5)
    assert [w.key for w in agreement.insert(later)] == ["four"]


def test_flush_commits_the_tail_and_nothing_is_ever_repeated() -> None:
    agreement = LocalAgreement()
    agreement.insert(words("a b c"))
    agreement.insert(words("a b c d"))
    assert [w.key for w in agreement.flush()] == ["d"]
    agreement.insert(words("a b c d e"))
    agreement.insert(words("a b c d e f"))
    assert [w.key for w in agreement.committed] == ["a", "b", "c", "d", "e"]


def test_words_past_until_wait_for_a_later_hypothesis() -> None:
    agreement = LocalAgreement()
    agreement.insert(words("a b c d"))
    # Agreed on all four, but c and d end after 1.0: not yet.
    assert [w.key for w in agreement.insert(words("a b c d"), until=1.0)] == ["a", "b"]
    assert [w.key for w in agreement.insert(words("a b c d e"))] == ["c", "d"]
