"""ws /v1/realtime: items in OpenAI's order, with server VAD and manual commits.

Against scripted live sessions (tests/realtimefakes.py; no broker, no daemon).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.livesession import Hypothesis, SpeechStarted, SpeechStopped
from realtimefakes import (
    URL,
    FakeLive,
    append,
    error_of,
    make_client,
    manual,
    receive_until,
    types,
    utterance,
    words,
)


@pytest.fixture
def live() -> FakeLive:
    return FakeLive(["tiny.en", "base"])


@pytest.fixture
def client(tmp_path: Path, live: FakeLive) -> Iterator[TestClient]:
    with make_client(tmp_path, live) as test_client:
        yield test_client


# -- items ----------------------------------------------------------------------------


def test_server_vad_items_in_openai_order(client: TestClient, live: FakeLive) -> None:
    first = words(" And", " so", " my", start=0.3)
    second = words(" fellow", " Americans", start=2.0)
    live.scripts.append(
        [
            (0.5, SpeechStarted(0.3)),
            (1.0, Hypothesis(first[:2], first[2:])),
            (1.5, SpeechStopped(1.3)),
            (1.5, Hypothesis(first[2:], [])),
            (1.5, utterance(0, first)),
            (2.0, Hypothesis([], [])),
            # The session's context before a stop can make the VAD see the old start.
            (2.5, SpeechStarted(0.3)),
            (3.0, Hypothesis(second, [])),
            (3.5, SpeechStopped(2.6)),
            (3.5, utterance(1, second)),
        ]
    )
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        for _ in range(8):
            append(ws, 0.5)
        events = receive_until(ws, "conversation.item.input_audio_transcription.completed")
        events += receive_until(ws, "conversation.item.input_audio_transcription.completed")
    assert types(events) == [
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
    ]
    one, two = events[0]["item_id"], events[8]["item_id"]
    assert one.startswith("item_") and two.startswith("item_") and one != two
    assert events[0]["audio_start_ms"] == 300 and events[2]["audio_end_ms"] == 1300
    assert events[8]["audio_start_ms"] == 1300  # never before the previous item's end
    assert events[3] == {**events[3], "item_id": one, "previous_item_id": None, "job_id": "live-0"}
    assert events[11]["previous_item_id"] == one
    item = events[4]["item"]
    assert (item["id"], item["type"], item["role"]) == (one, "message", "user")
    assert item["content"] == [{"type": "input_audio", "transcript": None}]
    deltas = [e["delta"] for e in events[:8] if e["type"].endswith(".delta")]
    assert deltas == ["And so", " my"]
    completed = events[7]
    assert completed["transcript"] == "".join(deltas) == "And so my"
    assert (completed["item_id"], completed["content_index"]) == (one, 0)
    assert completed["usage"] == {"type": "duration", "seconds": 1.0}
    assert events[-1]["transcript"] == "fellow Americans"


def test_the_beta_dialect_announces_items_with_conversation_item_created(
    client: TestClient, live: FakeLive
) -> None:
    ws_ = words(" Hello")
    live.scripts.append(
        [
            (0.5, SpeechStarted(0.1)),
            (0.5, Hypothesis(ws_, [])),
            (1.0, SpeechStopped(0.5)),
            (1.0, utterance(0, ws_)),
        ]
    )
    with client.websocket_connect(URL, headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        ws.receive_json()
        append(ws, 1.0)
        events = receive_until(ws, "conversation.item.input_audio_transcription.completed")
    assert "conversation.item.created" in types(events)
    assert "conversation.item.added" not in types(events)


def test_speech_without_words_completes_with_an_empty_transcript(
    client: TestClient, live: FakeLive
) -> None:
    live.scripts.append(
        [(0.5, SpeechStarted(0.1)), (1.0, SpeechStopped(0.6)), (1.5, Hypothesis([], []))]
    )
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        for _ in range(3):
            append(ws, 0.5)
        events = receive_until(ws, "conversation.item.input_audio_transcription.completed")
    assert events[-1]["transcript"] == ""


def test_manual_commits_make_one_item_each_and_one_job_each(
    client: TestClient, live: FakeLive
) -> None:
    live.scripts.append(
        [(0.2, SpeechStarted(0.1)), (0.5, Hypothesis(words(" Ask", " not"), words(" what")))]
    )
    live.scripts.append([(0.5, Hypothesis(words(" ask"), []))])
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        assert manual(ws)["session"]["audio"]["input"]["turn_detection"] is None
        append(ws, 0.5)
        delta = ws.receive_json()
        ws.send_json({"type": "input_audio_buffer.commit"})
        events = receive_until(ws, "conversation.item.input_audio_transcription.completed")
        append(ws, 0.5)
        ws.send_json({"type": "input_audio_buffer.commit"})
        later = receive_until(ws, "conversation.item.input_audio_transcription.completed")
    # No VAD events without turn detection; the deltas still stream before the commit.
    assert delta["type"] == "conversation.item.input_audio_transcription.delta"
    assert delta["delta"] == "Ask not"
    assert types(events) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert events[0]["item_id"] == delta["item_id"] == events[-1]["item_id"]
    assert events[-1]["transcript"] == "Ask not"
    committed = next(e for e in later if e["type"] == "input_audio_buffer.committed")
    assert committed["previous_item_id"] == delta["item_id"]
    assert later[-1]["transcript"] == "ask" and later[-1]["job_id"] == "live-1"
    assert [s.id for s in live.sessions] == ["live-0", "live-1"]
    assert all(s.ended is not None for s in live.sessions)


def test_clear_drops_the_uncommitted_item(client: TestClient, live: FakeLive) -> None:
    live.scripts.append([(0.5, Hypothesis(words(" Hello"), []))])
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        manual(ws)
        append(ws, 0.5)
        assert ws.receive_json()["type"].endswith(".delta")
        ws.send_json({"type": "input_audio_buffer.clear"})
        assert ws.receive_json()["type"] == "input_audio_buffer.cleared"
        ws.send_json({"type": "input_audio_buffer.commit"})
        assert error_of(ws)["code"] == "input_audio_buffer_commit_empty"
    assert live.sessions[0].ended is not None


def test_audio_is_resampled_to_16_khz(client: TestClient, live: FakeLive) -> None:
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        manual(ws)
        append(ws, 1.0)
        ws.send_json({"type": "input_audio_buffer.commit"})
        receive_until(ws, "conversation.item.input_audio_transcription.completed")
    assert len(live.sessions[0].pcm) == 32000


def test_logprobs_come_when_included(client: TestClient, live: FakeLive) -> None:
    live.scripts.append([(0.5, Hypothesis(words(" Hi"), []))])
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_json(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"turn_detection": None}},
                    "include": ["item.input_audio_transcription.logprobs"],
                },
            }
        )
        ws.receive_json()
        append(ws, 0.5)
        delta = ws.receive_json()
    assert delta["logprobs"][0]["token"] == " Hi"
    assert delta["logprobs"][0]["bytes"] == list(b" Hi")
    assert delta["logprobs"][0]["logprob"] == pytest.approx(-0.10536, abs=1e-4)
