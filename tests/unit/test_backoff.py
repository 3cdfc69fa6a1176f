"""stt_daemon.common.backoff: exponential waits, capped, with and without jitter."""

from __future__ import annotations

import itertools
import statistics

import pytest

from stt_daemon.common.backoff import Backoff


def test_waits_double_from_the_base_up_to_the_cap() -> None:
    waits = Backoff(base=0.5, cap=10.0).delays()
    assert list(itertools.islice(waits, 7)) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_a_factor_other_than_two() -> None:
    assert [Backoff(base=1.0, cap=100.0, factor=3.0).delay(a) for a in (1, 2, 3)] == [1, 3, 9]


def test_a_huge_attempt_count_is_capped_not_an_overflow() -> None:
    assert Backoff(base=1.0, cap=300.0).delay(5000) == 300.0


def test_a_zero_base_never_waits() -> None:
    assert Backoff(base=0.0, cap=60.0, jitter=True).delay(12) == 0.0


def test_jitter_draws_below_the_ceiling_and_spreads_rivals() -> None:
    backoff = Backoff(base=1.0, cap=60.0, jitter=True)
    draws = [backoff.delay(4) for _ in range(2000)]
    assert all(0 <= d <= 8.0 for d in draws)
    # Full jitter: spread over the whole range, not bunched at the ceiling.
    assert min(draws) < 1.0 and max(draws) > 7.0
    assert 3.5 < statistics.mean(draws) < 4.5


def test_jitter_keeps_the_cap() -> None:
    backoff = Backoff(base=0.001, cap=0.05, jitter=True)
    assert all(backoff.delay(20) <= 0.05 for _ in range(500))


@pytest.mark.parametrize(
    ("base", "cap", "factor", "problem"),
    [(-1.0, 1.0, 2.0, "base and cap"), (1.0, -1.0, 2.0, "base and cap"), (1.0, 1.0, 0.5, "factor")],
)
def test_nonsense_settings_are_refused(
    base: float, cap: float, factor: float, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        Backoff(base=base, cap=cap, factor=factor)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        Backoff(base=1.0, cap=1.0).delay(0)
