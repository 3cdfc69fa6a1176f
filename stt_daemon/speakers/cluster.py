"""Voices into speakers: spectral clustering of speaker embeddings (numpy only).

Each window of speech has an embedding; windows of one voice point the same way.
Cosine affinities are pruned to each window's strongest neighbours and symmetrised
(as NME-SC and 3D-Speaker do), the normalised Laplacian's largest eigengap within
the caller's bounds gives the number of clusters, and k-means on the spectral
embedding gives the labels. Then three tidy steps, none of which goes below the
caller's lower bound (with ``num_speakers`` the bound is the number itself):
clusters that sound like one voice merge, clusters that are no voice (a window or
two, or outliers put together) join the voice they are most like, and every window
moves to the cluster whose windows it is most like.

Windows that overlap share audio, and are alike for that alone: given the windows'
times, such pairs are never neighbours. Without that, each window's nearest
neighbours were the windows beside it, a chain in time that the eigengap cut: it
split an 11 s single-speaker clip into three. With it, the eigengap counts from
one: on real speech the second eigenvalue of one voice (JFK, 0.35-0.6) stood far
above that of two voices on one phone line (0.07-0.14), where the merge step
could not tell them apart (halves of one voice 0.82-0.86 alike, two people
0.74-0.82). The merge step stays for one voice heard in two conditions. A window
that repeats an earlier one (the same sound again, ``SAME_SOUND_COSINE``) is left
out of the clustering and takes its label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from stt_daemon.common.protocol import MAX_SPEAKERS

Embeddings = npt.NDArray[np.floating]
Labels = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.intp]

#: Two clusters at least this alike (``_voice_similarity``: their centroids' cosine,
#: corrected for small clusters) are one voice. 3D-Speaker merges CAM++ clusters at
#: 0.8, but two people on one phone line (pyannote's sample) came out 0.74-0.82
#: alike and halves of one talk 0.82-0.86: the eigengap tells those apart (see
#: above); this merges only what is clearly one voice.
SAME_SPEAKER_COSINE = 0.9
#: Two windows at least this alike are one sound heard twice (a recording that
#: repeats, a clip joined to itself), not two samples of a voice: the repeat is
#: left out of the clustering and takes the label of the first. Kept in, copies of
#: a few windows filled each other's neighbourhoods and every phrase became a
#: "speaker" (pyannote's sample four times over: 12). Windows of one voice that
#: share no audio measured at most 0.84 on real speech; a window and the same
#: sound 10-50 ms later, 0.95 and more.
SAME_SOUND_COSINE = 0.93
#: A cluster of fewer windows is an outlier (a cough, a laugh, two voices at once)
#: and joins its nearest speaker: two windows are 2 s of speech at 1.5 s/0.5 s.
MIN_CLUSTER_WINDOWS = 3
#: A cluster whose windows are on average less alike than this is no voice but
#: outliers put together (windows of one CAM++ voice: about 0.5-0.8).
MIN_SPEAKER_COHERENCE = 0.3
#: Each window keeps its strongest neighbours: this share of all windows, and at
#: least ``MIN_NEIGHBOURS`` (3D-Speaker keeps 2 %, at least 6).
NEIGHBOUR_FRACTION = 0.02
MIN_NEIGHBOURS = 6
#: The affinity matrix is n x n and its eigendecomposition O(n^3): beyond this many
#: windows (about 8 min of speech at the diarizer's 0.5 s hop) an even subsample is clustered and
#: the other windows join the speaker they are most like. About a second on 2 cores.
MAX_CLUSTERED_WINDOWS = 1000
#: k-means: fixed generator, a few k-means++ restarts, bounded iterations.
KMEANS_SEED = 0
KMEANS_RESTARTS = 5
KMEANS_MAX_ITERATIONS = 100
#: Passes of the final refinement (each window to the cluster it is most like).
REFINE_PASSES = 3


def cluster_speakers(
    embeddings: Embeddings,
    *,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    same_speaker_cosine: float = SAME_SPEAKER_COSINE,
    windows: Sequence[tuple[float, float]] | None = None,
) -> Labels:
    """One speaker label (0, 1, ... in order of first appearance) per embedding row.

    ``windows``, the ``(start, end)`` of each row's audio, keeps windows that share
    audio from counting as neighbours: they are alike for the sound they share.
    """
    x = _unit_rows(embeddings)
    n = len(x)
    if windows is not None and len(windows) != n:
        raise ValueError(f"{n} embeddings but {len(windows)} windows")
    low, high = _bounds(n, num_speakers, min_speakers, max_speakers)
    if n == 0 or high <= 1:
        return np.zeros(n, dtype=np.int64)
    sample = np.unique(np.linspace(0, n - 1, min(n, MAX_CLUSTERED_WINDOWS)).round().astype(int))
    spans = None if windows is None else np.asarray(windows, dtype=np.float64)[sample]
    apart = _apart(len(sample), spans)
    kept, copy_of = _distinct(x[sample], apart)
    found = _cluster(x[sample][kept], low, high, same_speaker_cosine, apart[np.ix_(kept, kept)])
    # A repeated sound takes the label of its first hearing.
    labels = found[np.searchsorted(kept, copy_of)]
    if len(sample) < n:
        # The windows left out join the speaker whose windows they are most like.
        nearest = np.argmax(_mean_cosines(x, *_sums(x[sample], labels)), axis=1)
        nearest[sample] = labels
        labels = nearest
    return _by_first_appearance(labels)


def _unit_rows(embeddings: Embeddings) -> Floats:
    x = np.nan_to_num(np.asarray(embeddings, dtype=np.float64))
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (windows x dimensions), not {x.shape}")
    return _unit_length(x)


def _unit_length(rows: Floats) -> Floats:
    norms: Floats = np.linalg.norm(rows, axis=1, keepdims=True)
    scaled: Floats = rows / np.maximum(norms, 1e-12)
    return scaled


def _bounds(
    n: int, num_speakers: int | None, min_speakers: int | None, max_speakers: int | None
) -> tuple[int, int]:
    """The smallest and largest number of speakers allowed, never more than windows."""
    if num_speakers is not None:
        low = high = num_speakers
    else:
        low = min_speakers or 1
        high = max_speakers or MAX_SPEAKERS
    high = max(1, min(high, n))
    return max(1, min(low, high)), high


def _apart(m: int, spans: Floats | None) -> Bools:
    """Which pairs of windows may be compared: two windows, not sharing any audio."""
    if spans is None:
        apart = np.ones((m, m), dtype=bool)
    else:
        starts, ends = spans[:, 0], spans[:, 1]
        apart = (starts[:, None] >= ends[None, :]) | (starts[None, :] >= ends[:, None])
    np.fill_diagonal(apart, False)
    return apart


def _distinct(x: Floats, apart: Bools) -> tuple[Ints, Ints]:
    """The windows that are no repeat of an earlier one, and which each window repeats.

    A window at least ``SAME_SOUND_COSINE`` like an earlier kept one (sharing no
    audio with it) is that sound again and stays out of the clustering.
    """
    cosines = x @ x.T
    copy_of = np.arange(len(x))
    for i in range(1, len(x)):
        # Only windows kept so far can be repeated: a chain of repeats has one origin.
        earlier = np.flatnonzero(
            apart[i, :i] & (cosines[i, :i] >= SAME_SOUND_COSINE) & (copy_of[:i] == np.arange(i))
        )
        if earlier.size:
            copy_of[i] = earlier[np.argmax(cosines[i, earlier])]
    return np.flatnonzero(copy_of == np.arange(len(x))), copy_of


def _cluster(x: Floats, low: int, high: int, same_speaker_cosine: float, apart: Bools) -> Labels:
    """Spectral clustering, then the tidy steps (which never go below ``low``)."""
    m = len(x)
    if low >= m:
        # As many speakers asked for as there are windows: each window is one.
        return np.arange(m, dtype=np.int64)
    eigenvalues, eigenvectors = np.linalg.eigh(_laplacian(_pruned_affinity(x, apart)))
    k = _count(eigenvalues, low, min(high, m - 1))
    if k == 1:
        labels = np.zeros(m, dtype=np.int64)
    elif k >= m:
        labels = np.arange(m, dtype=np.int64)
    else:
        labels = _kmeans(_spectral_rows(eigenvectors[:, :k]), k)
    # With num_speakers, low is k: none of the steps below takes a cluster away.
    # Halves of one voice merge before small clusters are absorbed, so that a lower
    # bound keeps a voice heard little rather than two halves of one voice.
    labels = _merge_alike(x, labels, low, same_speaker_cosine)
    return _refine(x, _absorb_small(x, labels, low))


def _pruned_affinity(x: Floats, apart: Bools) -> Floats:
    """Cosine affinities, each row cut to its strongest neighbours, symmetrised."""
    m = len(x)
    similarity = np.where(apart, np.clip(x @ x.T, 0.0, None), 0.0)
    keep = min(m - 1, max(MIN_NEIGHBOURS, math.ceil(NEIGHBOUR_FRACTION * m)))
    weakest = np.argpartition(similarity, m - keep, axis=1)[:, : m - keep]
    np.put_along_axis(similarity, weakest, 0.0, axis=1)
    return 0.5 * (similarity + similarity.T)


def _laplacian(affinity: Floats) -> Floats:
    """The symmetric normalised Laplacian ``I - D^-1/2 A D^-1/2``."""
    # A window with no positive affinity would divide by zero; it stays its own island.
    scale = 1.0 / np.sqrt(np.maximum(affinity.sum(axis=1), 1e-12))
    laplacian: Floats = np.eye(len(affinity)) - scale[:, None] * affinity * scale[None, :]
    return laplacian


def _count(eigenvalues: Floats, low: int, high: int) -> int:
    """How many speakers: the eigengap's own answer, brought within ``[low, high]``.

    Asked only within the bounds, the eigengap is lost when the voices are more than
    ``high``: three clear voices have three eigenvalues near zero, and no gap among
    the first two. More voices than allowed gives ``high``; fewer, the widest gap
    from ``low`` up.
    """
    free = _eigengap(eigenvalues, 1, min(len(eigenvalues) - 1, MAX_SPEAKERS))
    if free > high:
        return high
    return free if free >= low else _eigengap(eigenvalues, low, high)


def _eigengap(eigenvalues: Floats, low: int, high: int) -> int:
    """The k in ``[low, high]`` after whose k-th smallest eigenvalue the gap is widest."""
    if high < low:
        return low
    gaps = eigenvalues[low : high + 1] - eigenvalues[low - 1 : high]
    return low + int(np.argmax(gaps))


def _spectral_rows(vectors: Floats) -> Floats:
    # Rows scaled to unit length (Ng, Jordan and Weiss): clusters become directions.
    return _unit_length(vectors)


def _kmeans(points: Floats, k: int) -> Labels:
    """k-means with k-means++ starts from a fixed generator: same input, same labels."""
    rng = np.random.default_rng(KMEANS_SEED)
    best: Labels | None = None
    best_inertia = math.inf
    for _ in range(KMEANS_RESTARTS):
        labels, inertia = _lloyd(points, _kmeans_plus_plus(points, k, rng))
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels, inertia
    assert best is not None
    return best


def _kmeans_plus_plus(points: Floats, k: int, rng: np.random.Generator) -> Floats:
    chosen = [int(rng.integers(len(points)))]
    distances = np.sum((points - points[chosen[0]]) ** 2, axis=1)
    for _ in range(1, k):
        total = distances.sum()
        # All points already on a centre: any unchosen one will do.
        if total <= 1e-12:
            pick = next(i for i in range(len(points)) if i not in chosen)
        else:
            pick = int(rng.choice(len(points), p=distances / total))
        chosen.append(pick)
        distances = np.minimum(distances, np.sum((points - points[pick]) ** 2, axis=1))
    return points[chosen].copy()


def _lloyd(points: Floats, centres: Floats) -> tuple[Labels, float]:
    k = len(centres)
    labels = np.full(len(points), -1, dtype=np.int64)
    for _ in range(KMEANS_MAX_ITERATIONS):
        distances = np.sum((points[:, None, :] - centres[None, :, :]) ** 2, axis=2)
        new = np.argmin(distances, axis=1).astype(np.int64)
        for empty in np.setdiff1d(np.arange(k), new):
            # An empty cluster takes the point farthest from its own centre.
            far = int(np.argmax(distances[np.arange(len(points)), new]))
            new[far] = empty
            distances[far] = 0.0
        if np.array_equal(new, labels):
            break
        labels = new
        for c in range(k):
            members = points[labels == c]
            if len(members):
                centres[c] = members.mean(axis=0)
    inertia = float(np.sum((points - centres[labels]) ** 2))
    return labels, inertia


def _absorb_small(x: Floats, labels: Labels, low: int) -> Labels:
    """Windows of clusters that are no voice join the nearest cluster that is one.

    No voice: fewer than ``MIN_CLUSTER_WINDOWS`` windows, or windows less alike than
    ``MIN_SPEAKER_COHERENCE`` (outliers that k-means put together). Never fewer
    clusters than the ``low`` the caller asked for.
    """
    labels = _by_first_appearance(labels)
    sums, sizes = _sums(x, labels)
    voice = (sizes >= MIN_CLUSTER_WINDOWS) & (_coherence(x, labels) >= MIN_SPEAKER_COHERENCE)
    if not voice.any():
        # Too little to tell anyone apart: the largest cluster stands for all.
        voice[int(np.argmax(sizes))] = True
    large = np.flatnonzero(voice)
    # Smallest first, and only as many as the caller's lower bound allows.
    small = [int(c) for c in np.argsort(sizes, kind="stable") if not voice[c]]
    small = small[: max(0, len(sizes) - max(low, len(large)))]
    if not small:
        return labels
    moved = np.isin(labels, small)
    likeness = _mean_cosines(x[moved], sums[large], sizes[large])
    labels[moved] = large[np.argmax(likeness, axis=1)]
    return _by_first_appearance(labels)


def _sums(x: Floats, labels: Labels) -> tuple[Floats, Floats]:
    """Each cluster's sum of (unit) embeddings, and its number of windows."""
    sums = np.zeros((int(labels.max()) + 1, x.shape[1]))
    np.add.at(sums, labels, x)
    return sums, np.bincount(labels).astype(np.float64)


def _coherence(x: Floats, labels: Labels) -> Floats:
    """Each cluster's mean cosine between two of its windows (1 for a single window)."""
    sums, sizes = _sums(x, labels)
    pairs = sizes * (sizes - 1)
    # |sum of unit vectors|^2 = size + the cosines of every ordered pair.
    between = np.sum(sums**2, axis=1) - sizes
    coherence: Floats = np.where(pairs > 0, between / np.maximum(pairs, 1.0), 1.0)
    return coherence


def _voice_similarity(x: Floats, labels: Labels) -> Floats:
    """How alike two clusters' voices are: about 1 for one voice, whatever the sizes.

    The mean cosine between windows of the two clusters over the geometric mean of
    the mean cosine within each. For large clusters it is their centroids' cosine;
    for small ones it does not count a window's likeness to itself, which would
    make a few windows of one voice look like another voice.
    """
    sums, sizes = _sums(x, labels)
    across = (sums @ sums.T) / np.outer(sizes, sizes)
    within = np.maximum(_coherence(x, labels), 1e-3)
    similarity: Floats = across / np.sqrt(np.outer(within, within))
    np.fill_diagonal(similarity, -np.inf)
    return similarity


def _merge_alike(x: Floats, labels: Labels, low: int, same_speaker_cosine: float) -> Labels:
    """Merge the two most alike clusters while they sound like one voice."""
    labels = _by_first_appearance(labels)
    for _ in range(int(labels.max())):
        if int(labels.max()) + 1 <= low:
            break
        similarity = _voice_similarity(x, labels)
        a, b = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
        if similarity[a, b] < same_speaker_cosine:
            break
        labels = _by_first_appearance(np.where(labels == max(a, b), min(a, b), labels))
    return labels


def _mean_cosines(x: Floats, sums: Floats, sizes: Floats, own: Labels | None = None) -> Floats:
    """Each row's mean cosine with the windows of each cluster (its own one left out)."""
    total = x @ sums.T
    counts = np.broadcast_to(sizes, total.shape).copy()
    if own is not None:
        rows = np.arange(len(x))
        total[rows, own] -= 1.0
        counts[rows, own] -= 1.0
    means: Floats = np.where(counts > 0, total / np.maximum(counts, 1.0), -np.inf)
    return means


def _refine(x: Floats, labels: Labels) -> Labels:
    """Each window moves to the cluster whose windows it is most like, on average.

    Spectral clustering of a pruned graph can give a speaker heard little a few
    windows of its neighbour; the mean cosine (not the centroid's) favours no size.
    """
    for _ in range(REFINE_PASSES):
        sums, sizes = _sums(x, labels)
        best = np.argmax(_mean_cosines(x, sums, sizes, labels), axis=1).astype(np.int64)
        # Never empty a cluster: the count was decided above.
        if np.array_equal(best, labels) or len(np.unique(best)) < len(sizes):
            break
        labels = best
    return labels


def _by_first_appearance(labels: Labels) -> Labels:
    """Labels renumbered 0, 1, ... in the order they first occur."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]
