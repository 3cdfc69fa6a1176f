"""Clustering voices into speakers, on synthetic embeddings shaped like CAM++'s.

Each voice is a direction in 192 dimensions; its windows lie around it with cosine
0.6-0.8 between two of them, and voices share a common component so that windows of
two voices have cosine 0.1-0.3, as real speaker embeddings do.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from stt_daemon.speakers import cluster
from stt_daemon.speakers.cluster import cluster_speakers

DIMENSIONS = 192
OUTLIER = -1

Rows = npt.NDArray[np.float64]
Truth = npt.NDArray[np.int64]


def _unit(v: Rows) -> Rows:
    unit: Rows = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return unit


def _around(
    rng: np.random.Generator, centre: Rows, count: int, within: tuple[float, float]
) -> Rows:
    """``count`` unit vectors whose cosine with one another is about ``within``."""
    rows = []
    for _ in range(count):
        # a^2 of the centre plus an independent direction: cos(i, j) ~ a_i * a_j.
        a2 = rng.uniform(*within)
        noise = rng.standard_normal(DIMENSIONS)
        noise = _unit(noise - (noise @ centre) * centre)
        rows.append(np.sqrt(a2) * centre + np.sqrt(1 - a2) * noise)
    return np.array(rows)


def voices(
    counts: Sequence[int],
    *,
    seed: int = 0,
    outliers: int = 0,
    within: tuple[float, float] = (0.6, 0.8),
    shared: float = 0.35,
) -> tuple[Rows, Truth]:
    """Windows of ``len(counts)`` voices (and outlier windows), shuffled; their true voice."""
    rng = np.random.default_rng(seed)
    common = _unit(rng.standard_normal(DIMENSIONS))
    parts, truth = [], []
    for voice, count in enumerate(counts):
        centre = _unit(
            np.sqrt(shared) * common + np.sqrt(1 - shared) * _unit(rng.standard_normal(DIMENSIONS))
        )
        parts.append(_around(rng, centre, count, within))
        truth += [voice] * count
    if outliers:
        # A cough, a door, two voices at once: like nothing else.
        parts.append(_unit(rng.standard_normal((outliers, DIMENSIONS))))
        truth += [OUTLIER] * outliers
    order = rng.permutation(len(truth))
    return np.concatenate(parts)[order], np.array(truth)[order]


def accuracy(labels: Truth, truth: Truth) -> float:
    """Share of real voice windows labelled right, under the best label-to-voice mapping."""
    real = truth != OUTLIER
    found, true = np.unique(labels[real]), np.unique(truth[real])
    if len(found) > len(true):
        true = np.concatenate([true, -2 - np.arange(len(found) - len(true))])
    best = 0
    for mapped in itertools.permutations(true, len(found)):
        hits = sum(
            int(np.sum((labels[real] == f) & (truth[real] == t)))
            for f, t in zip(found, mapped, strict=True)
        )
        best = max(best, hits)
    return best / int(real.sum())


def speakers(labels: Truth) -> int:
    return len(np.unique(labels))


# One voice alone


@pytest.mark.parametrize("windows", [8, 14, 60, 400])
@pytest.mark.parametrize("seed", range(3))
def test_one_voice_is_one_speaker(windows: int, seed: int) -> None:
    x, _ = voices([windows], seed=seed)
    assert cluster_speakers(x).tolist() == [0] * windows


@pytest.mark.parametrize("seed", [0, 3, 6])
def test_one_voice_with_outlier_windows_is_one_speaker(seed: int) -> None:
    # A tenth of the windows are outliers; k-means puts some of them together.
    x, _ = voices([60], seed=seed, outliers=6)
    assert cluster_speakers(x).tolist() == [0] * 66


def two_conditions(rng: np.random.Generator, count: int, alike: float = 0.93) -> Rows:
    """One person on a phone, then in a room: two sub-directions with cosine ``alike``.

    0.93, not the 0.85 this test began with: on real speech two different people
    on one phone line measured 0.74-0.82 (``_voice_similarity``, CAM++ windows of
    pyannote's sample) and halves of one talk 0.82-0.86, so halves 0.85 alike
    are as far apart as two people, and stay two (see the test below).
    """
    centre = _unit(rng.standard_normal(DIMENSIONS))
    halves = []
    for _ in range(2):
        side = rng.standard_normal(DIMENSIONS)
        side = _unit(side - (side @ centre) * centre)
        halves.append(
            _around(rng, np.sqrt(alike) * centre + np.sqrt(1 - alike) * side, count, (0.6, 0.8))
        )
    return np.concatenate(halves)


def test_one_voice_in_two_conditions_is_one_speaker_and_the_threshold_decides() -> None:
    x = two_conditions(np.random.default_rng(7), 40)
    assert speakers(cluster_speakers(x)) == 1
    # The same windows with a stricter threshold: the two conditions come apart.
    assert speakers(cluster_speakers(x, same_speaker_cosine=0.95)) == 2


def test_conditions_as_far_apart_as_two_people_are_two_speakers() -> None:
    x = two_conditions(np.random.default_rng(7), 40, alike=0.85)
    assert speakers(cluster_speakers(x)) == 2


# Several voices


@pytest.mark.parametrize(
    "counts",
    [[30, 30], [20, 25, 15], [20, 20, 20, 20, 20], [8, 8]],
    ids=["two", "three", "five", "two-short"],
)
@pytest.mark.parametrize("seed", range(3))
def test_the_number_of_voices_is_found_without_hints(counts: list[int], seed: int) -> None:
    x, truth = voices(counts, seed=seed)
    labels = cluster_speakers(x)
    assert speakers(labels) == len(counts)
    assert accuracy(labels, truth) >= 0.95


@pytest.mark.parametrize("counts", [[90, 10], [54, 6], [200, 20]])
def test_a_speaker_with_a_tenth_of_the_windows_is_found(counts: list[int]) -> None:
    x, truth = voices(counts, seed=1)
    labels = cluster_speakers(x)
    assert speakers(labels) == 2
    minority = truth == 1
    assert speakers(labels[minority]) == 1
    assert not set(labels[minority]) & set(labels[~minority])


def test_a_voice_heard_in_two_windows_only_is_taken_for_an_outlier() -> None:
    x, truth = voices([40, 2], seed=15)
    assert speakers(cluster_speakers(x)) == 1
    # Unless the caller says there are two: then those two windows are the second.
    labels = cluster_speakers(x, min_speakers=2)
    assert accuracy(labels, truth) == 1.0


def test_a_lower_bound_keeps_a_voice_heard_little_rather_than_halves_of_one() -> None:
    one = two_conditions(np.random.default_rng(1), 40)
    other, _ = voices([2], seed=101)
    labels = cluster_speakers(np.concatenate([one, other]), min_speakers=2)
    assert labels.tolist() == [0] * 80 + [1, 1]


def test_a_lower_bound_keeps_even_a_single_window() -> None:
    x, truth = voices([2, 1], seed=17)
    assert speakers(cluster_speakers(x)) == 1
    assert accuracy(cluster_speakers(x, min_speakers=2), truth) == 1.0


def test_outlier_windows_do_not_become_speakers() -> None:
    x, truth = voices([20, 20, 20], seed=14, outliers=6)
    labels = cluster_speakers(x)
    assert speakers(labels) == 3
    assert accuracy(labels, truth) >= 0.95


def test_harder_voices_still_come_apart() -> None:
    # Closer voices (windows of two voices at cosine ~0.3), noisier windows.
    x, truth = voices([40, 30, 30], seed=5, within=(0.5, 0.7), shared=0.5)
    labels = cluster_speakers(x)
    assert speakers(labels) == 3
    assert accuracy(labels, truth) >= 0.95


# Hints


def test_num_speakers_is_honoured_even_against_the_voices() -> None:
    two, _ = voices([30, 30], seed=3)
    one, _ = voices([40], seed=3)
    assert speakers(cluster_speakers(two, num_speakers=3)) == 3
    assert speakers(cluster_speakers(one, num_speakers=2)) == 2
    assert speakers(cluster_speakers(two, num_speakers=1)) == 1


def test_num_speakers_right_gives_the_right_split() -> None:
    x, truth = voices([25, 25, 25], seed=6)
    labels = cluster_speakers(x, num_speakers=3)
    assert accuracy(labels, truth) >= 0.95


def test_min_and_max_speakers_bound_the_estimate() -> None:
    one, _ = voices([40], seed=8)
    three, truth = voices([25, 25, 25], seed=8)
    assert speakers(cluster_speakers(one, min_speakers=2)) == 2
    assert speakers(cluster_speakers(three, max_speakers=2)) == 2
    assert speakers(cluster_speakers(three, min_speakers=4)) == 4
    within = cluster_speakers(three, min_speakers=2, max_speakers=5)
    assert speakers(within) == 3
    assert accuracy(within, truth) >= 0.95


def test_more_speakers_hinted_than_windows() -> None:
    x, _ = voices([3], seed=9)
    assert sorted(cluster_speakers(x, num_speakers=5).tolist()) == [0, 1, 2]
    assert sorted(cluster_speakers(x, min_speakers=4).tolist()) == [0, 1, 2]


# Few windows


def test_no_window_gives_no_label() -> None:
    labels = cluster_speakers(np.zeros((0, DIMENSIONS)))
    assert labels.shape == (0,)
    assert labels.dtype.kind == "i"


def test_one_window_is_speaker_zero() -> None:
    x, _ = voices([1])
    assert cluster_speakers(x).tolist() == [0]
    assert cluster_speakers(x, num_speakers=3).tolist() == [0]


def test_two_windows_are_one_speaker_unless_two_are_asked_for() -> None:
    x, _ = voices([1, 1])
    assert cluster_speakers(x).tolist() == [0, 0]
    assert cluster_speakers(x, num_speakers=2).tolist() == [0, 1]
    assert cluster_speakers(x, min_speakers=2).tolist() == [0, 1]


def test_embeddings_must_be_rows() -> None:
    with pytest.raises(ValueError, match="2-D"):
        cluster_speakers(np.zeros(DIMENSIONS))


# Labels


def test_labels_count_from_zero_in_order_of_first_appearance() -> None:
    x, _ = voices([20, 20, 20], seed=10)
    labels = cluster_speakers(x).tolist()
    firsts = [labels.index(label) for label in sorted(set(labels))]
    assert sorted(set(labels)) == [0, 1, 2]
    assert firsts == sorted(firsts)


def test_the_same_windows_get_the_same_labels() -> None:
    x, _ = voices([30, 20, 25], seed=11, outliers=2)
    assert cluster_speakers(x).tolist() == cluster_speakers(x.copy()).tolist()


def test_window_order_does_not_change_who_is_with_whom() -> None:
    # Parts of a long recording may arrive in any order.
    x, _ = voices([30, 20, 25], seed=12)
    order = np.random.default_rng(0).permutation(len(x))
    direct, shuffled = cluster_speakers(x), cluster_speakers(x[order])
    assert speakers(direct) == 3
    pairs = set(zip(direct[order].tolist(), shuffled.tolist(), strict=True))
    assert len(pairs) == 3


@pytest.mark.parametrize(("counts", "outliers"), [([60], 3), ([20, 20, 20], 2)])
def test_embeddings_need_not_be_unit_length(counts: list[int], outliers: int) -> None:
    x, truth = voices(counts, seed=1, outliers=outliers)
    rng = np.random.default_rng(1)
    scaled = x * np.exp(rng.uniform(np.log(0.01), np.log(100.0), size=(len(x), 1)))
    labels = cluster_speakers(scaled)
    assert speakers(labels) == len(counts)
    assert accuracy(labels, truth) >= 0.95


# Cost


def test_beyond_the_cap_a_subsample_is_clustered_and_the_rest_follow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster, "MAX_CLUSTERED_WINDOWS", 120)
    sizes: list[int] = []
    eigh = np.linalg.eigh

    def measured_eigh(matrix: Rows) -> tuple[Rows, Rows]:
        sizes.append(len(matrix))
        return eigh(matrix)

    monkeypatch.setattr(np.linalg, "eigh", measured_eigh)
    x, truth = voices([300, 200, 100], seed=14)
    labels = cluster_speakers(x)
    assert sizes and max(sizes) <= 120
    assert speakers(labels) == 3
    firsts = [labels.tolist().index(label) for label in range(3)]
    assert firsts == sorted(firsts)
    assert accuracy(labels, truth) >= 0.95


# Windows that share audio


def overlapping_windows(
    pieces: Rows, per_window: int = 3
) -> tuple[Rows, list[tuple[float, float]]]:
    """Windows of ``per_window`` consecutive 0.5 s pieces, one piece apart (1.5 s every 0.5 s).

    A window's embedding is that of its pieces together: windows that overlap share
    pieces, and are more alike than the voice alone would make them.
    """
    count = len(pieces) - per_window + 1
    x = np.array([_unit(pieces[i : i + per_window].sum(axis=0)) for i in range(count)])
    return x, [(0.5 * i, 0.5 * (i + per_window)) for i in range(count)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [20, 40, 120])
def test_windows_that_share_audio_are_not_taken_for_neighbours(seed: int, count: int) -> None:
    pieces, _ = voices([count + 2], seed=seed, within=(0.3, 0.5))
    x, windows = overlapping_windows(pieces)
    assert speakers(cluster_speakers(x, windows=windows)) == 1


def test_without_the_windows_shared_audio_can_split_one_voice() -> None:
    # Why the windows are passed: each window's nearest neighbours are the windows
    # it shares audio with, a chain the eigengap cuts (here into four).
    pieces, _ = voices([22], seed=1, within=(0.3, 0.5))
    x, windows = overlapping_windows(pieces)
    assert speakers(cluster_speakers(x)) > 1
    assert speakers(cluster_speakers(x, windows=windows)) == 1


@pytest.mark.parametrize("seed", range(3))
def test_voices_taking_turns_in_overlapping_windows(seed: int) -> None:
    a, _ = voices([120], seed=seed, within=(0.3, 0.5))
    b, _ = voices([120], seed=seed + 50, within=(0.3, 0.5))
    # Turns of 4 s (8 pieces): windows across a change hear both voices.
    turns = [(a, b)[(i // 8) % 2][i] for i in range(120)]
    x, windows = overlapping_windows(np.array(turns))
    truth = np.array([(i // 8) % 2 if (i // 8) == ((i + 2) // 8) else OUTLIER for i in range(118)])
    labels = cluster_speakers(x, windows=windows)
    assert speakers(labels) == 2
    assert accuracy(labels, truth) >= 0.95


def test_windows_must_match_the_embeddings() -> None:
    x, _ = voices([10])
    with pytest.raises(ValueError, match="10 embeddings but 9 windows"):
        cluster_speakers(x, windows=[(0.0, 1.5)] * 9)


# A recording that repeats itself


def repeated(x: Rows, times: int, seed: int = 0) -> Rows:
    """``x`` ``times`` over, each copy a little changed (the same sound, windows moved a little)."""
    rng = np.random.default_rng(seed)
    copies = [x + rng.normal(0.0, 0.005, x.shape) for _ in range(times)]
    return _unit(np.concatenate(copies))


@pytest.mark.parametrize("times", [4, 10])
def test_a_repeated_voice_is_still_one_speaker(times: int) -> None:
    x, _ = voices([12], seed=3)
    assert speakers(cluster_speakers(repeated(x, times))) == 1


@pytest.mark.parametrize("times", [4, 10])
def test_repeated_voices_are_each_one_speaker(times: int) -> None:
    x, truth = voices([15, 15, 15], seed=4)
    labels = cluster_speakers(repeated(x, times))
    assert speakers(labels) == 3
    assert accuracy(labels, np.tile(truth, times)) == 1.0
