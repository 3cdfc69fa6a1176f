"""A split recording's parts collected as they finish, then merged into one transcript.

Each finished part's transcript goes into the books; until the set is complete a
part reports progress. The part that completes it claims the merge and gets the
whole recording's transcript, timestamps shifted by each part's offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stt_daemon.common.protocol import (
    InboundJob,
    ResultWarning,
    Segment,
    TranscriptResult,
    VoicePrintsWire,
    Word,
)
from stt_daemon.fanbook import FanBook, Manifest


@dataclass(frozen=True)
class PartOutcome:
    """What a finished part leads to: the merged transcript, or progress so far."""

    merged: TranscriptResult | None = None
    #: With the merged transcript: the voice prints of every part that has them, for
    #: labelling the whole recording at once (``diarize=speakers``).
    voiceprints: list[VoicePrintsWire] = field(default_factory=list)
    progress: float | None = None
    #: The recording was settled by another part already: report nothing.
    settled: bool = False


def collect(book: FanBook, job: InboundJob, result: TranscriptResult) -> PartOutcome:
    """Keep a part's transcript; merge when it completes the set (blocking)."""
    part = job.message.part
    assert part is not None
    book.write_result(job.job_id, part.index, result)
    manifest = book.manifest(job.job_id)
    if manifest is None:
        book.drop_result(job.job_id, part.index)  # settled meanwhile: nothing will read it
        return PartOutcome(settled=True)
    done = book.finished(job.job_id, len(manifest.parts))
    if len(done) < len(manifest.parts):
        covered = sum(manifest.parts[i][1] for i in done)
        return PartOutcome(progress=min(covered / manifest.duration, 0.9999))
    if not book.claim_merge(job.job_id, part.index):
        return PartOutcome(settled=True)  # another part merges
    results = book.results(job.job_id, len(manifest.parts))
    # The merge drops the parts' voice prints (and never has speakers): the caller
    # labels the merged transcript from all of them.
    prints = [r.voiceprints for r in results if r.voiceprints is not None]
    return PartOutcome(merged=merge(manifest, results), voiceprints=prints)


def merge(manifest: Manifest, results: list[TranscriptResult]) -> TranscriptResult:
    """One transcript from the parts', in order, with timestamps on the whole recording's clock."""
    segments: list[Segment] = []
    warnings: list[ResultWarning] = []
    for (offset, _length), part in zip(manifest.parts, results, strict=True):
        first_id = len(segments)  # ids run on across parts
        segments.extend(
            _shift_segment(seg, offset, first_id + i) for i, seg in enumerate(part.segments)
        )
        # Each part's warnings are on its own clock, as its segments were.
        warnings.extend(_shift_warning(warning, offset) for warning in part.warnings)
    first = results[0]
    return TranscriptResult(
        warnings=warnings,
        text=" ".join(text for r in results if (text := r.text.strip())),
        language=manifest.language or first.language,
        language_probability=manifest.language_probability,
        duration=manifest.duration,
        model=first.model,
        task=first.task,
        segments=segments,
    )


def _shift_segment(seg: Segment, offset: float, number: int) -> Segment:
    """A part's segment renumbered and moved ``offset`` seconds on, its words too."""
    words = None
    if seg.words is not None:
        words = [
            Word(
                start=round(w.start + offset, 3),
                end=round(w.end + offset, 3),
                word=w.word,
                probability=w.probability,
            )
            for w in seg.words
        ]
    return seg.model_copy(
        update={
            "id": number,
            "start": round(seg.start + offset, 3),
            "end": round(seg.end + offset, 3),
            "words": words,
        }
    )


def _shift_warning(warning: ResultWarning, offset: float) -> ResultWarning:
    """A part's warning moved ``offset`` seconds on (it may have no times)."""
    return warning.model_copy(
        update={
            "start": None if warning.start is None else round(warning.start + offset, 2),
            "end": None if warning.end is None else round(warning.end + offset, 2),
        }
    )
