"""ws /v1/realtime: the limits (sessions, idle time, length, keys) and sessions that fail.

Against scripted live sessions (tests/realtimefakes.py; no broker, no daemon).
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


# -- limits --------------------------------------------------------------------------


def test_a_full_gateway_refuses_with_an_error_event(tmp_path: Path) -> None:
    live = FakeLive(["tiny.en", "base"], max_sessions=0)
    with make_client(tmp_path, live) as client, client.websocket_connect(URL) as ws:
        error = error_of(ws)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert error["code"] == "session_limit_reached"
    assert closed.value.code == 1013


def test_a_silent_client_is_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    live = FakeLive(["tiny.en", "base"])
    with (
        make_client(tmp_path, live, live_idle_timeout=0.3) as client,
        client.websocket_connect(URL) as ws,
    ):
        ws.receive_json()
        ws.send_json({"type": "session.update", "session": {"type": "transcription"}})
        ws.receive_json()
        assert error_of(ws)["code"] == "idle_timeout"
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()


def test_audio_past_the_session_limit_ends_it(tmp_path: Path) -> None:
    live = FakeLive(["tiny.en", "base"])
    with (
        make_client(tmp_path, live, live_max_seconds=1.0) as client,
        client.websocket_connect(URL) as ws,
    ):
        ws.receive_json()
        append(ws, 0.8)
        append(ws, 0.8)
        assert error_of(ws)["code"] == "session_expired"
        with pytest.raises(WebSocketDisconnect):
            ws.receive_json()
    assert live.sessions[0].ended is not None and live.active == 0


def test_a_session_that_fails_by_itself_ends_the_connection(
    client: TestClient, live: FakeLive
) -> None:
    live.fail_at = 0.5
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        append(ws, 0.5)
        error = error_of(ws)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert (error["type"], error["code"]) == ("server_error", "server_error")
    assert closed.value.code == 1011


def test_keys_are_required_when_configured(tmp_path: Path, live: FakeLive) -> None:
    with make_client(tmp_path, live, api_keys="k1") as client:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            with (
                pytest.raises(WebSocketDisconnect) as refused,
                client.websocket_connect(URL, headers=headers) as ws,
            ):
                ws.receive_json()
            assert refused.value.code == 1008
        with client.websocket_connect(URL, headers={"Authorization": "Bearer k1"}) as ws:
            ws.receive_json()
            manual(ws)
            append(ws, 0.2)
            ws.send_json({"type": "input_audio_buffer.commit"})
            receive_until(ws, "conversation.item.input_audio_transcription.completed")
    assert live.owners == [live.owners[0]] and live.owners[0] is not None


def test_a_session_that_cannot_be_recorded_does_not_end_the_connection(
    client: TestClient, live: FakeLive
) -> None:
    live.record_fails = True
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        manual(ws)
        append(ws, 0.2)
        ws.send_json({"type": "input_audio_buffer.clear"})
        assert ws.receive_json()["type"] == "input_audio_buffer.cleared"
        append(ws, 0.2)
        ws.send_json({"type": "input_audio_buffer.commit"})
        receive_until(ws, "conversation.item.input_audio_transcription.completed")
    assert len(live.sessions) == 2 and live.active == 0
