"""The WhisperLive adapter without a broker: options, audio formats, segments, and the socket.

The socket tests run the real LiveSessions and LiveSession against a fake daemon that
"hears" a word in every loud half second, so each rule of the protocol is checked in
milliseconds; tests/integration/test_whisperlive.py runs WhisperLive's own client.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gateway.agreement import TimedWord
from gateway.config import GatewaySettings
from gateway.livesession import Hypothesis, SpeechStarted, Utterance
from gateway.livesessions import LiveSessions
from gateway.metrics import GatewayMetrics
from gateway.routes import whisperlive
from gateway.routes.whisperlive import (
    OptionsError,
    SegmentView,
    parse_options,
    to_pcm16,
)
from gateway.store import open_store
from stt_daemon.common.liveprotocol import LiveReply, LiveWord, WindowOptions
from stt_daemon.common.protocol import Task

MODELS = ["tiny.en", "base"]


# -- options -----------------------------------------------------------------


def test_options_as_whisperlive_clients_send_them() -> None:
    sent: dict[str, Any] = {
        "uid": "u-1",
        "language": None,
        "task": "transcribe",
        "model": "small",
        "use_vad": True,
        "send_last_n_segments": 10,
        "no_speech_thresh": 0.45,
        "clip_audio": False,
        "same_output_threshold": 10,
        "enable_translation": False,
        "target_language": "fr",
        "hotwords": None,
        "enable_diarization": False,
        "max_speakers": 10,
        "known_speakers": [],
        "word_timestamps": False,
        "initial_prompt": None,
        "vad_parameters": None,
    }
    options = parse_options(json.dumps(sent), MODELS)
    assert options.uid == "u-1"
    assert options.session.model == "tiny.en"  # "small" is not served: the default
    assert options.warnings == ("model 'small' is not served here; using 'tiny.en'",)
    assert options.session.language is None and options.session.task is Task.TRANSCRIBE
    assert options.session.vad and options.send_last_n == 10
    assert options.audio_format == "float32" and not options.word_timestamps


def test_served_models_prompt_vad_format_and_what_is_not_offered() -> None:
    options = parse_options(
        json.dumps(
            {
                "uid": "u",
                "model": "base",
                "language": "de",
                "task": "translate",
                "use_vad": False,
                "initial_prompt": "Kubernetes, RabbitMQ",
                "audio_format": "int16",
                "send_last_n_segments": 5000,
                "enable_translation": True,
                "word_timestamps": True,
            }
        ),
        MODELS,
    )
    assert options.session.model == "base" and options.session.language == "de"
    assert options.session.task is Task.TRANSLATE and not options.session.vad
    assert options.session.prompt == "Kubernetes, RabbitMQ"
    assert options.audio_format == "int16" and options.word_timestamps
    assert options.send_last_n == whisperlive.MAX_LAST_N
    assert options.warnings == ("enable_translation is not offered here",)
    assert parse_options(b'{"uid": "u"}', MODELS).session.vad  # use_vad left out: on


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("not json", "JSON options"),
        ("[1, 2]", "JSON options"),
        (b"\xff\xfe", "JSON options"),
        ("", "JSON options"),
        ('{"task": "summarise"}', "task"),
        ('{"language": "e"}', "language"),
        ('{"language": 7}', "language"),
        ('{"language": "much-too-long"}', "language"),
        ('{"send_last_n_segments": 0}', "send_last_n_segments"),
        ('{"send_last_n_segments": true}', "send_last_n_segments"),
        ('{"send_last_n_segments": "3"}', "send_last_n_segments"),
        ('{"audio_format": "mp3"}', "audio_format"),
        ('{"uid": 5}', "uid"),
        (json.dumps({"initial_prompt": "x" * 2001}), "initial_prompt"),
    ],
)
def test_options_that_are_refused(raw: str | bytes, says: str) -> None:
    with pytest.raises(OptionsError, match=says):
        parse_options(raw, MODELS)


# -- audio ---------------------------------------------------------------------


def samples(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def test_float32_is_read_as_the_server_reads_it_and_clipped() -> None:
    frame = struct.pack("<6f", 0.0, 0.5, -0.5, 1.0, 2.0, -math.inf)
    assert samples(to_pcm16(frame, "float32")) == [0, 16383, -16383, 32767, 32767, -32767]
    assert samples(to_pcm16(struct.pack("<f", math.nan), "float32")) in ([32767], [-32767])


def test_int16_passes_and_uint8_is_centred() -> None:
    pcm = struct.pack("<3h", 1, -2, 32767)
    assert to_pcm16(pcm, "int16") == pcm
    assert samples(to_pcm16(bytes([0, 128, 255]), "uint8")) == [-32768, 0, 32512]


@pytest.mark.parametrize(("frame", "fmt"), [(b"\0" * 6, "float32"), (b"\0" * 3, "int16")])
def test_partial_samples_are_refused(frame: bytes, fmt: str) -> None:
    with pytest.raises(ValueError, match="bytes"):
        to_pcm16(frame, fmt)


# -- segments ------------------------------------------------------------------


def word(text: str, start: float, end: float) -> TimedWord:
    return TimedWord(start, end, text, 0.91234)


def test_the_utterance_in_progress_updates_in_place_then_completes() -> None:
    view = SegmentView("u", last_n=2)
    assert view.apply(SpeechStarted(0.0)) is None
    first = view.apply(Hypothesis([], [word(" Ask", 0.5, 0.8)]))
    assert first == {
        "uid": "u",
        "segments": [{"start": "0.500", "end": "0.800", "text": " Ask", "completed": False}],
    }
    assert view.apply(Hypothesis([], [word(" Ask", 0.5, 0.8)])) is None  # nothing new
    second = view.apply(Hypothesis([word(" Ask", 0.5, 0.8)], [word(" not", 0.8, 1.2)]))
    assert second is not None and second["segments"][-1]["text"] == " Ask not"
    done = view.apply(Utterance(0, 0.5, 1.2, [word(" Ask", 0.5, 0.8), word(" not", 0.8, 1.2)]))
    assert done is not None
    assert done["segments"] == [
        {"start": "0.500", "end": "1.200", "text": " Ask not", "completed": True}
    ]


def test_completed_segments_never_start_before_the_last_ended_and_only_the_last_n_go() -> None:
    view = SegmentView("u", last_n=2)
    view.apply(Utterance(0, 0.0, 1.0, [word(" one", 0.0, 1.0)]))
    # Whisper started the next word early: WhisperLive's client would drop the segment.
    view.apply(Utterance(1, 0.9, 2.0, [word(" two", 0.9, 2.0)]))
    message = view.apply(Utterance(2, 2.5, 3.0, [word(" three", 2.5, 3.0)]))
    assert message is not None
    assert [(s["start"], s["text"]) for s in message["segments"]] == [
        ("1.000", " two"),
        ("2.500", " three"),
    ]


def test_word_timestamps_as_whisperlive_formats_them() -> None:
    view = SegmentView("u", timed=True)
    message = view.apply(Hypothesis([], [word(" Ask", 0.5, 0.8)]))
    assert message is not None
    assert message["segments"][0]["words"] == [
        {"word": " Ask", "start": "0.500", "end": "0.800", "probability": 0.9123}
    ]


# -- the socket ----------------------------------------------------------------

LOUD = struct.pack("<h", 3000) * 8000  # half a second
QUIET = b"\0\0" * 8000


class FakeDaemon:
    """Answers windows at once: a word in every loud half second, speech where it is loud."""

    ready = True

    async def transcribe(
        self, model: str, window: bytes, options: WindowOptions, wait: float
    ) -> LiveReply:
        halves = [window[i : i + len(LOUD)] for i in range(0, len(window), len(LOUD))]
        words, speech = [], []
        for i, half in enumerate(halves):
            if any(half[1::2]):
                words.append(LiveWord(start=i / 2, end=i / 2 + 0.45, word=" hey", probability=1))
                speech.append((i / 2, i / 2 + 0.5))
        return LiveReply(duration=len(window) / 32000, words=words, speech=speech, language="en")


class Quiet:
    """Publishes nothing: the news of sessions is not what these tests look at."""

    async def publish_result_event(self, *args: Any) -> None:
        return None


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    settings = GatewaySettings(
        data_dir=tmp_path,
        models=MODELS,
        live_max_sessions=1,
        live_idle_timeout=1.0,
        live_step=0.5,
    )
    app = FastAPI()
    app.include_router(whisperlive.router)
    store = open_store(f"sqlite:///{tmp_path}/status.db")
    live = LiveSessions(settings, FakeDaemon(), store, Quiet(), GatewayMetrics())  # type: ignore[arg-type]

    class Services:
        pass

    services = Services()
    services.settings = settings  # type: ignore[attr-defined]
    services.live = live  # type: ignore[attr-defined]
    app.state.services = services
    return app


def until_closed(ws: Any) -> tuple[list[dict[str, Any]], int]:
    messages = []
    try:
        while True:
            messages.append(ws.receive_json())
    except WebSocketDisconnect as exc:
        return messages, exc.code


def start(ws: Any, **options: Any) -> dict[str, Any]:
    ws.send_text(json.dumps({"uid": "u1", "language": "en", **options}))
    ready: dict[str, Any] = ws.receive_json()
    assert ready["message"] == "SERVER_READY" and ready["backend"] == "faster_whisper"
    assert ready["uid"] == "u1" and ready["job_id"].startswith("live-")
    return ready


@pytest.mark.parametrize("fmt", ["int16", "float32", "uint8"])
def test_a_session_in_every_audio_format(app: FastAPI, fmt: str) -> None:
    pcm = LOUD + LOUD + QUIET + QUIET
    values = samples(pcm)
    frame = {
        "int16": pcm,
        "float32": struct.pack(f"<{len(values)}f", *(v / 32768 for v in values)),
        "uint8": bytes((v >> 8) + 128 for v in values),
    }[fmt]
    with TestClient(app) as client, client.websocket_connect("/") as ws:
        start(ws, audio_format=fmt)
        ws.send_bytes(frame)
        ws.send_bytes(b"END_OF_AUDIO")
        messages, code = until_closed(ws)
    assert code == 1000
    last = messages[-1]["segments"]
    assert last == [{"start": "0.000", "end": "0.950", "text": " hey hey", "completed": True}]
    assert "DISCONNECT" not in [m.get("message") for m in messages]  # not after END_OF_AUDIO


def test_end_of_audio_as_text_too_and_a_language_says_nothing(app: FastAPI) -> None:
    with TestClient(app) as client, client.websocket_connect("/") as ws:
        start(ws, audio_format="int16")
        ws.send_bytes(LOUD + QUIET + QUIET)
        ws.send_text("END_OF_AUDIO")
        messages, code = until_closed(ws)
    assert code == 1000 and messages[-1]["segments"][-1]["completed"]
    assert not [m for m in messages if "language" in m]  # the client named it


def test_the_detected_language_is_announced(app: FastAPI) -> None:
    with TestClient(app) as client, client.websocket_connect("/") as ws:
        start(ws, audio_format="int16", language=None)
        ws.send_bytes(LOUD + QUIET + QUIET)
        ws.send_bytes(b"END_OF_AUDIO")
        messages, _ = until_closed(ws)
    assert {"uid": "u1", "language": "en", "language_prob": None} in messages


def test_a_text_frame_or_broken_audio_ends_only_that_session(app: FastAPI) -> None:
    with TestClient(app) as client:
        with client.websocket_connect("/") as ws:
            start(ws)
            ws.send_text("hello")
            messages, code = until_closed(ws)
        assert code == 1003 and messages[-1]["status"] == "ERROR"
        with client.websocket_connect("/") as ws:
            start(ws)
            ws.send_bytes(b"\0" * 7)
            messages, code = until_closed(ws)
        assert code == 1007 and "multiple of 4" in messages[-1]["message"]
        with client.websocket_connect("/") as ws:
            ws.send_bytes(b"\x00garbage")
            messages, code = until_closed(ws)
        assert code == 1007 and messages == [
            {
                "uid": None,
                "status": "ERROR",
                "message": "the first message must be the JSON options (uid, language, ...)",
            }
        ]
        with client.websocket_connect("/") as ws:  # and the next one is served
            start(ws)
            ws.send_bytes(b"END_OF_AUDIO")
            assert until_closed(ws)[1] == 1000


def test_the_limit_says_wait_and_an_idle_client_gets_disconnect(app: FastAPI) -> None:
    with TestClient(app) as client, client.websocket_connect("/") as first:
        start(first)
        with client.websocket_connect("/") as second:
            second.send_text(json.dumps({"uid": "u2"}))
            messages, code = until_closed(second)
        assert messages == [{"uid": "u2", "status": "WAIT", "message": 1.0}] and code == 1013
        # STT_LIVE_IDLE_TIMEOUT (1 s here) without audio: WhisperLive's DISCONNECT.
        messages, code = until_closed(first)
        assert messages == [{"uid": "u1", "message": "DISCONNECT"}] and code == 1000


def test_keys_where_whisperlive_takes_them(app: FastAPI) -> None:
    settings = app.state.services.settings
    keyed = GatewaySettings(data_dir=settings.data_dir, models=MODELS, api_keys="k-123")  # type: ignore[arg-type]
    app.state.services.settings = keyed
    with TestClient(app) as client:
        for url in ("/", "/?token=nope"):
            with pytest.raises(WebSocketDisconnect), client.websocket_connect(url):
                pass
        with client.websocket_connect("/?token=k-123") as ws:
            start(ws)
        with client.websocket_connect("/", headers={"Authorization": "Bearer k-123"}) as ws:
            start(ws)
        with client.websocket_connect("/", subprotocols=["bearer", "k-123"]) as ws:
            assert ws.accepted_subprotocol == "bearer"
            start(ws)


def test_no_live_sessions_here_is_an_error_not_a_wait(app: FastAPI) -> None:
    app.state.services.live = None
    with TestClient(app) as client, client.websocket_connect("/") as ws:
        ws.send_text(json.dumps({"uid": "u1"}))
        messages, code = until_closed(ws)
    assert code == 1011 and messages == [
        {
            "uid": "u1",
            "status": "ERROR",
            "message": "live sessions are not available on this gateway",
        }
    ]
