"""ws /v1/realtime?intent=transcription: the session object and errors in OpenAI's shape.

Against scripted live sessions (tests/realtimefakes.py; no broker, no daemon). Items are
in test_realtime_items.py, the limits in test_realtime_limits.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from realtimefakes import URL, FakeLive, append, error_of, make_client, manual, receive_until


@pytest.fixture
def live() -> FakeLive:
    return FakeLive(["tiny.en", "base"])


@pytest.fixture
def client(tmp_path: Path, live: FakeLive) -> Iterator[TestClient]:
    with make_client(tmp_path, live) as test_client:
        yield test_client


# -- the session object ------------------------------------------------------------


def test_session_created_comes_first_in_the_ga_shape(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        created = ws.receive_json()
    assert created["type"] == "session.created"
    assert created["event_id"].startswith("event_")
    session = created["session"]
    assert session["type"] == "transcription" and session["id"].startswith("sess_")
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["input"]["transcription"]["model"] == "tiny.en"
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500


def test_the_beta_header_gets_transcription_session_events(client: TestClient) -> None:
    with client.websocket_connect(URL, headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        created = ws.receive_json()
        ws.send_json(
            {
                "type": "transcription_session.update",
                "session": {
                    "input_audio_format": "pcm16",
                    "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                },
            }
        )
        updated = ws.receive_json()
    assert created["type"] == "transcription_session.created"
    assert created["session"]["input_audio_format"] == "pcm16"
    assert updated["type"] == "transcription_session.updated"
    transcription = updated["session"]["input_audio_transcription"]
    assert transcription == {"model": "gpt-4o-transcribe", "language": "en", "prompt": ""}


def test_session_update_changes_only_what_it_names(client: TestClient, live: FakeLive) -> None:
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_json(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "transcription": {"model": "base", "language": "de", "prompt": "Namen"},
                        }
                    },
                    "include": ["item.input_audio_transcription.logprobs"],
                },
            }
        )
        first = ws.receive_json()["session"]
        manual(ws)
        append(ws, 0.2)
        ws.send_json({"type": "input_audio_buffer.commit"})
        receive_until(ws, "conversation.item.input_audio_transcription.completed")
    assert first["audio"]["input"]["transcription"] == {
        "model": "base",
        "language": "de",
        "prompt": "Namen",
    }
    assert first["include"] == ["item.input_audio_transcription.logprobs"]
    options = live.sessions[0].options
    assert (options.model, options.language, options.prompt) == ("base", "de", "Namen")


def test_the_clients_silence_duration_ends_its_utterances(
    client: TestClient, live: FakeLive
) -> None:
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_json(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 800}
                        }
                    },
                },
            }
        )
        updated = ws.receive_json()["session"]
        append(ws, 0.2)
        ws.send_json({"type": "input_audio_buffer.commit"})
        receive_until(ws, "conversation.item.input_audio_transcription.completed")
    assert updated["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 800
    assert live.sessions[0].options.end_silence == 0.8


def test_openai_model_names_mean_the_default_model(client: TestClient, live: FakeLive) -> None:
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        for name in ("gpt-4o-transcribe", "gpt-4o-mini-transcribe", "whisper-1"):
            ws.send_json(
                {
                    "type": "session.update",
                    "session": {
                        "type": "transcription",
                        "audio": {"input": {"transcription": {"model": name}}},
                    },
                }
            )
            session = ws.receive_json()["session"]
            assert session["audio"]["input"]["transcription"]["model"] == name
        manual(ws)
        append(ws, 0.2)
        ws.send_json({"type": "input_audio_buffer.commit"})
        receive_until(ws, "conversation.item.input_audio_transcription.completed")
    assert live.sessions[0].options.model == "tiny.en"


# -- errors: said in OpenAI's shape, and the session goes on ------------------------


def test_bad_events_get_errors_and_the_session_goes_on(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_text("{not json")
        assert error_of(ws)["code"] == "invalid_json"
        ws.send_json({"type": "response.create", "event_id": "evt_1"})
        error = error_of(ws)
        assert (error["code"], error["param"], error["event_id"]) == (
            "invalid_value",
            "type",
            "evt_1",
        )
        assert error["type"] == "invalid_request_error"
        ws.send_json({"type": "input_audio_buffer.append", "audio": "%%%not base64%%%"})
        assert (error_of(ws)["code"], "audio") == ("invalid_value", "audio")
        ws.send_json({"type": "input_audio_buffer.append"})
        assert error_of(ws)["code"] == "missing_required_parameter"
        ws.send_json({"type": "session.update", "session": {"type": "transcription", "foo": 1}})
        error = error_of(ws)
        assert (error["code"], error["param"]) == ("unknown_parameter", "session.foo")
        ws.send_json({"type": "session.update", "session": {"type": "realtime"}})
        assert error_of(ws)["param"] == "session.type"
        ws.send_bytes(b"\x00\x01")
        assert error_of(ws)["code"] == "invalid_json"
        ws.send_json({"type": "input_audio_buffer.commit", "event_id": "evt_2"})
        error = error_of(ws)
        assert (error["code"], error["event_id"]) == ("input_audio_buffer_commit_empty", "evt_2")
        # Still serving.
        ws.send_json({"type": "session.update", "session": {"type": "transcription"}})
        assert ws.receive_json()["type"] == "session.updated"


def test_an_unknown_model_is_refused_and_changes_nothing(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_json(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "transcription": {"model": "large-v9"},
                            "turn_detection": None,
                        }
                    },
                },
            }
        )
        error = error_of(ws)
        ws.send_json({"type": "session.update", "session": {"type": "transcription"}})
        session = ws.receive_json()["session"]
    assert error["param"] == "session.audio.input.transcription.model"
    assert "large-v9" in error["message"]
    assert session["audio"]["input"]["transcription"]["model"] == "tiny.en"
    assert session["audio"]["input"]["turn_detection"] is not None  # the update was refused whole


def test_other_formats_and_languages_are_refused(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_json(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"format": {"type": "audio/pcmu"}}},
                },
            }
        )
        assert error_of(ws)["param"] == "session.audio.input.format"
        ws.send_json(
            {
                "type": "session.update",
                "session": {
                    "type": "transcription",
                    "audio": {"input": {"transcription": {"language": "x"}}},
                },
            }
        )
        assert "language" in error_of(ws)["message"]


def test_the_intent_must_be_transcription(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime?model=gpt-realtime") as ws:
        error = error_of(ws)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert error["param"] == "intent"
    assert closed.value.code == 1008


def test_an_update_is_answered_in_its_own_dialect(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_json({"type": "transcription_session.update", "session": {"turn_detection": None}})
        updated = ws.receive_json()
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["input_audio_format"] == "pcm16"
    assert updated["session"]["turn_detection"] is None
