"""ws /v1/realtime?intent=transcription against scripted live sessions (no broker, no daemon).

The live sessions are fakes that say what a script tells them to as their audio
arrives, so each test pins one thing the client must see: OpenAI's event names and
fields, item order, errors in OpenAI's shape, and the limits.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from gateway.agreement import TimedWord
from gateway.config import GatewaySettings
from gateway.fleet import Fleet
from gateway.livesession import (
    Hypothesis,
    LiveEvent,
    SessionClosed,
    SessionEnded,
    SessionOptions,
    SpeechStarted,
    SpeechStopped,
    Utterance,
)
from gateway.livesessions import LiveRefused
from gateway.routes import realtime
from gateway.services import Services
from stt_daemon.common.blobs import BlobStore
from stt_daemon.common.protocol import TranscriptResult

Script = list[tuple[float, LiveEvent]]
URL = "/v1/realtime?intent=transcription"


def words(*texts: str, start: float = 0.0) -> list[TimedWord]:
    return [TimedWord(start + i * 0.3, start + i * 0.3 + 0.25, t, 0.9) for i, t in enumerate(texts)]


def utterance(index: int, ws: list[TimedWord]) -> Utterance:
    return Utterance(index, ws[0].start, ws[-1].end, ws)


class FakeSession:
    """Says its script's events as its audio passes their times; the rest at ``finish``."""

    def __init__(
        self, number: int, options: SessionOptions, script: Script, fail_at: float
    ) -> None:
        self.id = f"live-{number}"
        self.options = options
        self.received = 0.0
        self.pcm = bytearray()
        self._script = list(script)
        self._fail_at = fail_at
        self._queue: asyncio.Queue[LiveEvent | None] = asyncio.Queue()
        self.ended: SessionEnded | None = None
        self.finished = False

    async def feed(self, pcm: bytes) -> None:
        if self.finished or self.ended is not None:
            raise SessionClosed("the session has ended")
        self.pcm += pcm
        self.received += len(pcm) / 32000
        while self._script and self._script[0][0] <= self.received:
            self._queue.put_nowait(self._script.pop(0)[1])
        if self.received >= self._fail_at:
            self._end("no daemon answered 6 windows in a row")

    def finish(self) -> None:
        self.finished = True
        for _, event in self._script:
            self._queue.put_nowait(event)
        self._end(None)

    async def close(self) -> None:
        self._end("closed before the end of its audio")

    def _end(self, error: str | None) -> None:
        if self.ended is not None:
            return
        result = TranscriptResult(text="", duration=self.received, model="tiny.en", segments=[])
        self.ended = SessionEnded(result, error)
        self._queue.put_nowait(self.ended)
        self._queue.put_nowait(None)

    async def events(self) -> AsyncIterator[LiveEvent]:
        while (event := await self._queue.get()) is not None:
            yield event


class FakeLive:
    """``services.live``: the session limit, and sessions that follow ``scripts`` in turn."""

    def __init__(self, models: list[str], max_sessions: int = 8) -> None:
        self.models = models
        self.max_sessions = max_sessions
        self.scripts: list[Script] = []
        self.fail_at = float("inf")
        #: Recording a session fails (the store or the broker): open()'s exit raises.
        self.record_fails = False
        self.sessions: list[FakeSession] = []
        self.owners: list[str | None] = []
        self.active = 0

    def check_room(self) -> None:
        if self.active >= self.max_sessions:
            raise LiveRefused("this gateway runs 1 live sessions at most", busy=True)

    @asynccontextmanager
    async def open(self, options: SessionOptions, owner: str | None) -> AsyncIterator[FakeSession]:
        self.check_room()
        assert options.model in self.models
        script = self.scripts.pop(0) if self.scripts else []
        session = FakeSession(len(self.sessions), options, script, self.fail_at)
        self.sessions.append(session)
        self.owners.append(owner)
        self.active += 1
        try:
            yield session
        finally:
            await session.close()
            self.active -= 1
            if self.record_fails:
                raise RuntimeError("the session's job could not be recorded")


@pytest.fixture
def live() -> FakeLive:
    return FakeLive(["tiny.en", "base"])


def make_client(tmp_path: Path, live: FakeLive, **settings: Any) -> TestClient:
    config = GatewaySettings(data_dir=tmp_path, models=["tiny.en", "base"], **settings)
    app = FastAPI()
    app.include_router(realtime.router)
    services = Services(
        settings=config,
        blobs=BlobStore(config.resolved_blob_url),
        store=None,  # type: ignore[arg-type]
        broker=None,  # type: ignore[arg-type]
        fleet=Fleet(config.names),
    )
    services.live = live  # type: ignore[assignment]
    app.state.services = services
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path, live: FakeLive) -> Iterator[TestClient]:
    with make_client(tmp_path, live) as test_client:
        yield test_client


def audio(seconds: float) -> str:
    """Base64 of ``seconds`` of 24 kHz PCM16 (a quiet tone)."""
    samples = int(24000 * seconds)
    pcm = b"".join(
        (1000 if (i // 12) % 2 else -1000).to_bytes(2, "little", signed=True)
        for i in range(samples)
    )
    return base64.b64encode(pcm).decode()


def append(ws: WebSocketTestSession, seconds: float) -> None:
    ws.send_json({"type": "input_audio_buffer.append", "audio": audio(seconds)})


def receive_until(ws: WebSocketTestSession, kind: str) -> list[dict[str, Any]]:
    """Events up to and including the first of type ``kind``."""
    seen = []
    while True:
        event = ws.receive_json()
        seen.append(event)
        if event["type"] == kind:
            return seen


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def manual(ws: WebSocketTestSession) -> dict[str, Any]:
    ws.send_json(
        {
            "type": "session.update",
            "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
        }
    )
    return receive_until(ws, "session.updated")[-1]


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


def error_of(ws: WebSocketTestSession) -> dict[str, Any]:
    event = ws.receive_json()
    assert event["type"] == "error", event
    assert event["event_id"].startswith("event_")
    error: dict[str, Any] = event["error"]
    assert set(error) == {"type", "code", "message", "param", "event_id"}
    return error


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


def test_an_update_is_answered_in_its_own_dialect(client: TestClient) -> None:
    with client.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_json({"type": "transcription_session.update", "session": {"turn_detection": None}})
        updated = ws.receive_json()
    assert updated["type"] == "transcription_session.updated"
    assert updated["session"]["input_audio_format"] == "pcm16"
    assert updated["session"]["turn_detection"] is None
