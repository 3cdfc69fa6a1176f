"""Each word's and segment's speaker, given the speaker turns."""

from __future__ import annotations

from stt_daemon.common.protocol import Segment, SpeakerTurn, Word
from stt_daemon.speakers.turns import assign_speakers, speaker_name


def turn(start: float, end: float, speaker: str) -> SpeakerTurn:
    return SpeakerTurn(start=start, end=end, speaker=speaker)


def word(start: float, end: float, text: str) -> Word:
    return Word(start=start, end=end, word=text, probability=0.9)


def segment(words: list[Word], text: str | None = None, id: int = 0) -> Segment:
    return Segment(
        id=id,
        start=words[0].start,
        end=words[-1].end,
        text="".join(w.word for w in words) if text is None else text,
        words=words,
        avg_logprob=-0.25,
    )


def spans(turns: list[SpeakerTurn]) -> list[tuple[float, float, str]]:
    return [(round(t.start, 3), round(t.end, 3), t.speaker) for t in turns]


# assign_speakers


def test_a_segment_spanning_a_change_is_split_at_the_change() -> None:
    words = [
        word(0.0, 0.4, " How"),
        word(0.4, 0.6, " are"),
        word(0.6, 1.0, " you?"),
        word(2.1, 2.5, " Fine,"),
        word(2.5, 3.0, " thanks."),
    ]
    turns = [turn(0.0, 1.8, "A"), turn(1.8, 4.0, "B")]
    segments, _ = assign_speakers([segment(words, id=7)], turns)
    assert [(s.id, s.start, s.end, s.text, s.speaker) for s in segments] == [
        (0, 0.0, 1.0, " How are you?", "SPEAKER_00"),
        (1, 2.1, 3.0, " Fine, thanks.", "SPEAKER_01"),
    ]
    assert all(s.avg_logprob == -0.25 for s in segments)
    assert [[w.speaker for w in s.words or []] for s in segments] == [
        ["SPEAKER_00"] * 3,
        ["SPEAKER_01"] * 2,
    ]


def test_a_segment_of_one_speaker_keeps_its_text_and_times() -> None:
    words = [word(0.5, 0.9, " Hello"), word(0.9, 1.3, " there.")]
    original = Segment(
        id=3, start=0.2, end=1.6, text=" Hello there.", words=words, avg_logprob=-0.1
    )
    (kept,), _ = assign_speakers([original], [turn(0.0, 2.0, "A")])
    assert (kept.id, kept.start, kept.end, kept.text, kept.speaker) == (
        0,
        0.2,
        1.6,
        " Hello there.",
        "SPEAKER_00",
    )


def test_speakers_are_named_in_order_of_first_appearance() -> None:
    # Cluster 5 speaks first and becomes SPEAKER_00; cluster 2 never says a word
    # and is named after the speakers who do.
    turns = [
        turn(0.0, 2.0, "SPEAKER_05"),
        turn(2.0, 3.0, "SPEAKER_02"),
        turn(3.0, 5.0, "SPEAKER_01"),
        turn(5.0, 7.0, "SPEAKER_05"),
    ]
    segments = [
        segment([word(0.2, 1.5, " One.")], id=0),
        segment([word(3.2, 4.5, " Two.")], id=1),
        segment([word(5.5, 6.5, " Three.")], id=2),
    ]
    named, renamed = assign_speakers(segments, list(reversed(turns)))
    assert [s.speaker for s in named] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]
    assert spans(renamed) == [
        (0.0, 2.0, "SPEAKER_00"),
        (2.0, 3.0, "SPEAKER_02"),
        (3.0, 5.0, "SPEAKER_01"),
        (5.0, 7.0, "SPEAKER_00"),
    ]


def test_a_word_in_a_gap_goes_to_the_nearest_turn() -> None:
    turns = [turn(0.0, 2.0, "A"), turn(6.0, 8.0, "B")]
    early = segment([word(2.5, 2.9, " um")], id=0)
    late = segment([word(5.0, 5.6, " so")], id=1)
    after = segment([word(9.0, 9.4, " bye")], id=2)
    named, _ = assign_speakers([early, late, after], turns)
    assert [s.speaker for s in named] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_01"]


def test_the_nearest_turn_before_a_word_is_the_one_ending_last() -> None:
    # Turns from a caller may overlap: B starts after A but ends long before it.
    turns = [turn(0.0, 5.0, "A"), turn(1.0, 2.0, "B"), turn(9.0, 10.0, "C")]
    _, renamed = assign_speakers([segment([word(5.5, 5.8, " so")])], turns)
    # A said the word (first to speak: SPEAKER_00); B and C are named after.
    assert [t.speaker for t in renamed] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]


def test_a_word_straddling_a_boundary_goes_to_the_speaker_with_more_of_it() -> None:
    turns = [turn(0.0, 2.0, "A"), turn(2.0, 4.0, "B")]
    mostly_b = segment([word(0.5, 1.0, " yes"), word(1.8, 2.6, " right")])
    named, _ = assign_speakers([mostly_b], turns)
    assert [(s.text, s.speaker) for s in named] == [
        (" yes", "SPEAKER_00"),
        (" right", "SPEAKER_01"),
    ]


def test_overlap_is_summed_over_a_speakers_turns() -> None:
    # A has 0.3 + 0.3 s of the word, B 0.4 s in one piece: A said it.
    turns = [turn(0.0, 1.3, "A"), turn(1.3, 1.7, "B"), turn(1.7, 3.0, "A")]
    named, renamed = assign_speakers([segment([word(1.0, 2.0, " well")])], turns)
    assert named[0].speaker == "SPEAKER_00"
    assert [t.speaker for t in renamed] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]


def test_a_segment_without_words_takes_the_speaker_of_most_of_it() -> None:
    turns = [turn(0.0, 1.0, "A"), turn(1.0, 5.0, "B")]
    bare = Segment(id=0, start=0.5, end=3.0, text=" No word timings here.")
    empty_words = Segment(id=1, start=0.0, end=0.8, text=" Nor here.", words=[])
    named, _ = assign_speakers([bare, empty_words], turns)
    assert [(s.text, s.speaker) for s in named] == [
        (" No word timings here.", "SPEAKER_00"),
        (" Nor here.", "SPEAKER_01"),
    ]


def test_a_zero_length_word_takes_the_turn_around_it() -> None:
    turns = [turn(0.0, 1.0, "A"), turn(1.0, 2.0, "B")]
    named, renamed = assign_speakers([segment([word(1.5, 1.5, " uh")])], turns)
    assert named[0].speaker == "SPEAKER_00"
    assert [t.speaker for t in renamed] == ["SPEAKER_01", "SPEAKER_00"]


def test_ids_are_renumbered_across_split_segments() -> None:
    turns = [turn(0.0, 1.0, "A"), turn(1.0, 2.0, "B"), turn(2.0, 3.0, "A")]
    first = segment([word(0.1, 0.5, " a"), word(1.2, 1.6, " b")], id=4)
    second = segment([word(2.2, 2.6, " c")], id=5)
    named, _ = assign_speakers([first, second], turns)
    assert [(s.id, s.text, s.speaker) for s in named] == [
        (0, " a", "SPEAKER_00"),
        (1, " b", "SPEAKER_01"),
        (2, " c", "SPEAKER_00"),
    ]


def test_without_turns_everyone_is_one_speaker() -> None:
    segments = [segment([word(0.3, 0.6, " hi")], id=0), Segment(id=1, start=1.0, end=2.0, text="x")]
    named, turns = assign_speakers(segments, [])
    assert [s.speaker for s in named] == ["SPEAKER_00", "SPEAKER_00"]
    assert named[0].words is not None and named[0].words[0].speaker == "SPEAKER_00"
    assert spans(turns) == [(0.3, 2.0, "SPEAKER_00")]
    assert assign_speakers([], []) == ([], [])


def test_nothing_is_assumed_about_one_part() -> None:
    # Two parts of one recording: turns with absolute times, the second part's first;
    # one clustering over both, so the labels hold across the cut.
    turns = [
        turn(60.0, 62.625, "SPEAKER_00"),
        turn(62.625, 65.25, "SPEAKER_01"),
        turn(0.0, 5.25, "SPEAKER_01"),
    ]
    segments = [
        segment([word(0.5, 4.0, " Part one.")], id=0),
        segment([word(60.5, 61.5, " Part"), word(63.5, 64.5, " two.")], id=0),
    ]
    named, renamed = assign_speakers(segments, turns)
    assert [(s.id, s.text, s.speaker) for s in named] == [
        (0, " Part one.", "SPEAKER_00"),
        (1, " Part", "SPEAKER_01"),
        (2, " two.", "SPEAKER_00"),
    ]
    assert [t.speaker for t in renamed] == ["SPEAKER_00", "SPEAKER_01", "SPEAKER_00"]


def test_speaker_names_are_two_digits() -> None:
    assert [speaker_name(i) for i in (0, 7, 12)] == ["SPEAKER_00", "SPEAKER_07", "SPEAKER_12"]
