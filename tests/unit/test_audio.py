"""Decoding: many formats in, hostile files refused quickly with bounded memory."""

from __future__ import annotations

import io
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from stack import JFK
from stt_daemon.audio import SAMPLE_RATE, AudioError, decode
from stt_daemon.common.protocol import ErrorCode


def _silence(path: Path, seconds: int) -> None:
    """Digital silence (no dither) from sox, in the format the suffix names."""
    command = f"sox -D -n -r 16000 -c 1 -b 16 {path} trim 0 {seconds}".split()
    subprocess.run(command, check=True)


def _silence_flac(path: Path, seconds: int, hide_length: bool) -> Path:
    _silence(path, seconds)
    if hide_length:
        # Zero STREAMINFO's 36-bit total-samples field: the length is then unknown
        # until decoded, which is exactly what a decompression bomb relies on.
        data = bytearray(path.read_bytes())
        field = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
        data[18:26] = field.to_bytes(8, "big")
        path.write_bytes(bytes(data))
    return path


def test_real_speech_decodes_to_16k_mono() -> None:
    audio = decode(JFK, max_seconds=60)
    assert audio.dtype.name == "float32"
    assert audio.shape[0] == 11 * SAMPLE_RATE
    assert 0.01 < float(abs(audio).max()) <= 1.0


def test_audio_over_the_limit_is_refused() -> None:
    with pytest.raises(AudioError) as info:
        decode(JFK, max_seconds=5)
    assert info.value.code is ErrorCode.AUDIO_TOO_LONG
    assert "STT_MAX_AUDIO_SECONDS" in str(info.value)


def test_bomb_with_hidden_length_stops_at_the_limit_with_bounded_memory(tmp_path: Path) -> None:
    bomb = _silence_flac(tmp_path / "bomb.flac", 600, hide_length=True)
    assert bomb.stat().st_size < 200_000  # ten minutes of silence compress to almost nothing
    tracemalloc.start()
    try:
        with pytest.raises(AudioError) as info:
            decode(bomb, max_seconds=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code is ErrorCode.AUDIO_TOO_LONG
    # 10 min of float32 would be 38 MB; stopping at 30 s keeps well under that.
    assert peak < 8 * 1024 * 1024


def _wav_with_data_size(path: Path, seconds: int, size: int) -> Path:
    _silence(path, seconds)
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    data[at + 4 : at + 8] = size.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def test_wav_whose_header_claims_hours_decodes_only_what_it_holds(tmp_path: Path) -> None:
    wav = _wav_with_data_size(tmp_path / "liar.wav", 2, 0xFFFFFFF0)  # says ~37 hours
    audio = decode(wav, max_seconds=60)
    assert audio.shape[0] == 2 * SAMPLE_RATE


def test_wav_whose_header_hides_its_length_is_cut_at_the_limit(tmp_path: Path) -> None:
    wav = _wav_with_data_size(tmp_path / "hidden.wav", 120, 0)  # says "unknown"
    with pytest.raises(AudioError) as info:
        decode(wav, max_seconds=60)
    assert info.value.code is ErrorCode.AUDIO_TOO_LONG


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"plain text, not audio\n" * 50,
        b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16,
        bytes(range(256)) * 64,
    ],
    ids=["empty", "text", "png", "random"],
)
def test_not_audio_is_bad_audio(payload: bytes) -> None:
    with pytest.raises(AudioError) as info:
        decode(io.BytesIO(payload), max_seconds=60)
    assert info.value.code is ErrorCode.BAD_AUDIO


def test_truncated_file_decodes_what_is_there_or_fails_cleanly() -> None:
    data = JFK.read_bytes()
    audio = decode(io.BytesIO(data[: len(data) // 2]), max_seconds=60)
    assert 0 < audio.shape[0] < 11 * SAMPLE_RATE
    with pytest.raises(AudioError):
        decode(io.BytesIO(data[:100]), max_seconds=60)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("list.m3u8", "#EXTM3U\n#EXTINF:11,\n{target}\n#EXT-X-ENDLIST\n"),
        ("list.ffconcat", "ffconcat version 1.0\nfile '{target}'\n"),
    ],
)
def test_playlists_naming_other_files_are_refused(tmp_path: Path, name: str, text: str) -> None:
    playlist = tmp_path / name
    playlist.write_text(text.format(target=JFK))
    for source in (playlist, io.BytesIO(playlist.read_bytes())):
        with pytest.raises(AudioError) as info:
            decode(source, max_seconds=60)
        assert info.value.code is ErrorCode.BAD_AUDIO
