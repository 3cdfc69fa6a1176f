"""``stt-local`` and its private broker without a real node: flags, ports, messages, supervision."""

from __future__ import annotations

import json
import os
import pwd
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from structlog.testing import capture_logs

from stt_daemon import local, localbroker
from stt_daemon.config import DaemonSettings
from stt_daemon.local import Local, StartError, parse_args
from stt_daemon.localbroker import (
    BrokerStartError,
    LocalRabbitNode,
    PortInUse,
    diagnose,
    free_port,
    last_error,
    port_problem,
)
from stt_daemon.supervisor import Child, RestartBudget, Signals

REPO = Path(__file__).resolve().parents[2]

# What the node printed in failures seen in practice (shortened); the listener one is
# reconstructed (the port check before start normally gets there first).
FEATURE_FLAGS_EACCES = """\
2026-12-01 22:44:34.623095+00:00 [error] <0.222.0> Failed to create feature flags file \
"/root/stt/stt-data/rabbitmq/feature_flags" directory: permission denied
Error during startup: {error,failed_to_create_feature_flags_file_directory}
Kernel pid terminated (application_controller) ({application_start_failure,rabbit,\
{failed_to_create_feature_flags_file_directory,{rabbit,start,[normal,[]]}}})
"""
DIST_PORT_TAKEN = """\
2026-12-01 22:45:04.004074+00:00 [notice] <0.44.0> Application rabbitmq_prelaunch exited with \
reason: {{shutdown,{failed_to_start_child,prelaunch,{dist_port_already_used,45672,not_erlang,\
"localhost"}}},{rabbit_prelaunch_app,start,[normal,[]]}}
"""
DUPLICATE_NAME = """\
{"Kernel pid terminated",application_controller,"{application_start_failure,rabbitmq_prelaunch,\
{{shutdown,{failed_to_start_child,prelaunch,{duplicate_node_name,\\"stt-local\\",\
\\"localhost\\"}}},{rabbit_prelaunch_app,start,[normal,[]]}}}"}
"""
LISTENER_TAKEN = """\
2026-12-01 [error] <0.600.0> Failed to start Ranch listener {acceptor,{127,0,0,1},5672} in \
ranch_tcp:listen(...) for reason eaddrinuse (address already in use)
"""

as_root_with_rabbitmq = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists(),
    reason="the node drops to the rabbitmq user only when started as root",
)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def listening_amqp() -> Iterator[int]:
    """A taken port that stt-local would accept as its AMQP port (at most 45535)."""
    for port in random.sample(range(20000, 45000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            sock.listen()
            yield port
            return
    pytest.skip("no free port below 45000")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STT_MODELS", "STT_AMQP_URL", "STT_LOCAL_AMQP_PORT", "STT_API_KEYS"):
        monkeypatch.delenv(name, raising=False)


# --- flags ------------------------------------------------------------------------


def test_amqp_port_is_5672_by_default() -> None:
    assert parse_args([], environ={}).amqp_port == 5672


def test_amqp_port_from_the_environment_and_the_flag_wins() -> None:
    env = {"STT_LOCAL_AMQP_PORT": "25672"}
    assert parse_args([], environ=env).amqp_port == 25672
    assert parse_args(["--amqp-port", "26000"], environ=env).amqp_port == 26000


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        ([], {"STT_LOCAL_AMQP_PORT": "rabbit"}),
        (["--amqp-port", "50000"], {}),  # 50000 + 20000 is no port
        (["--amqp-port", "0"], {}),
        (["--port", "70000"], {}),
    ],
)
def test_bad_ports_are_refused_at_once(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, environ=env)
    assert exc.value.code == 2


# --- the node's ports -------------------------------------------------------------------


def test_a_given_port_fixes_the_distribution_port_too() -> None:
    node = LocalRabbitNode(port=25672, base_dir=Path("/nonexistent"))
    assert (node.port, node.dist_port) == (25672, 45672)
    with pytest.raises(ValueError, match="too high"):
        LocalRabbitNode(port=50000, base_dir=Path("/nonexistent"))


def test_the_test_suites_nodes_keep_free_random_ports() -> None:
    nodes = [LocalRabbitNode(base_dir=Path("/nonexistent")) for _ in range(2)]
    ports = {port for node in nodes for port in (node.port, node.dist_port)}
    assert len(ports) == 4 and 5672 not in ports
    assert all(port_problem(port) is None for port in ports)


def test_port_problem_tells_a_taken_port_from_a_free_one(listening: int) -> None:
    assert port_problem(listening) == "in use by another program"
    assert port_problem(free_port()) is None


@pytest.mark.parametrize("which", ["amqp", "dist"])
def test_a_taken_port_is_refused_before_the_node_starts(
    listening: int, tmp_path: Path, which: str
) -> None:
    node = LocalRabbitNode(base_dir=tmp_path)
    if which == "amqp":
        node.port = listening
    else:
        node.dist_port = listening
    started = time.monotonic()
    with pytest.raises(PortInUse) as exc:
        node.start()
    assert time.monotonic() - started < 2
    assert exc.value.port == listening
    assert "\n" not in str(exc.value) and "in use" in str(exc.value)
    assert not (tmp_path / "console.log").exists()  # nothing was started


def test_stt_local_says_how_to_choose_another_amqp_port(
    listening_amqp: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.setattr(local, "node_dir_for", lambda wanted: wanted)
    monkeypatch.setenv("STT_DATA_DIR", str(tmp_path))
    argv = ["--amqp-port", str(listening_amqp)]
    stack = Local(parse_args(argv, environ={}), DaemonSettings())
    with pytest.raises(StartError) as exc:
        stack.start_broker()
    message = str(exc.value)
    assert "\n" not in message
    assert f"AMQP port {listening_amqp}" in message and "in use" in message
    assert "--amqp-port" in message and "STT_LOCAL_AMQP_PORT" in message
    assert "STT_AMQP_URL" in message


def test_a_taken_http_port_is_one_line_before_anything_starts(
    listening: int, clean_env: None
) -> None:
    stack = Local(parse_args(["--port", str(listening)], environ={}), DaemonSettings())
    with pytest.raises(StartError) as exc:
        stack.check_http_port()
    assert "\n" not in str(exc.value)
    assert f"HTTP port {listening}" in str(exc.value) and "--port" in str(exc.value)


# --- why a node did not start -------------------------------------------------------


@pytest.mark.parametrize(
    ("log_text", "cause", "advice"),
    [
        (FEATURE_FLAGS_EACCES, "may not write /srv/node", "STT_DATA_DIR"),
        (DIST_PORT_TAKEN, "distribution port 45672 is in use", "another AMQP port"),
        (LISTENER_TAKEN, "port 25672 is in use", "another AMQP port"),
        (DUPLICATE_NAME, "another node named stt-local@localhost", "stop it"),
    ],
)
def test_known_causes_are_named(log_text: str, cause: str, advice: str) -> None:
    facts = {
        "port": 25672,
        "dist_port": 45672,
        "name": "stt-local@localhost",
        "base_dir": "/srv/node",
        "user": "rabbitmq",
    }
    found = diagnose(log_text, **facts)
    assert found is not None
    assert cause in found[0] and advice in found[1]


def test_an_unknown_cause_quotes_the_nodes_own_words() -> None:
    text = "booting\nError during startup: {error,something_new}\nKernel pid terminated (x)\n"
    assert diagnose(text) is None
    assert last_error(text) == "{error,something_new}"
    assert last_error("") == "no output"


def _fake_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> LocalRabbitNode:
    node = LocalRabbitNode(base_dir=tmp_path / "node")
    monkeypatch.setattr(node, "_command", lambda: ["/bin/sh", "-c", script])
    return node


def test_a_node_that_exits_is_reported_at_once_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = f"printf '%s' '{FEATURE_FLAGS_EACCES}'; exit 1"
    node = _fake_node(tmp_path, monkeypatch, script)
    started = time.monotonic()
    with pytest.raises(BrokerStartError) as exc:
        node.start(timeout=60)
    assert time.monotonic() - started < 10  # not the whole timeout
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"RabbitMQ node {node.name} exited (code 1): ")
    assert f"may not write {node.base_dir}" in message and "STT_DATA_DIR" in message
    assert str(node.base_dir / "console.log") in message


def test_a_node_that_never_listens_is_stopped_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = _fake_node(tmp_path, monkeypatch, "echo 'still booting'; exec sleep 60")
    with pytest.raises(BrokerStartError) as exc:
        node.start(timeout=1)
    message = str(exc.value)
    assert "\n" not in message
    assert f"did not listen on {node.port} within 1 s: still booting; see the log" in message
    assert node._proc is not None and node._proc.poll() is not None  # killed, not left behind


# --- where the node's files live ------------------------------------------------------


@as_root_with_rabbitmq
def test_node_files_move_where_the_rabbitmq_user_can_reach_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = pwd.getpwnam("rabbitmq")
    private = Path(tempfile.mkdtemp())  # mode 700, root's: what `mktemp -d` or /root give
    reachable = Path(tempfile.mkdtemp())
    reachable.chmod(0o755)
    try:
        monkeypatch.setattr(
            localbroker, "fallback_dir", lambda wanted, user: reachable / "stt-local" / "h"
        )
        assert not localbroker.user_can_enter(user, private)
        moved = localbroker.node_dir_for(private / "stt-data" / "rabbitmq")
        assert moved == reachable / "stt-local" / "h"
        assert moved.stat().st_uid == user.pw_uid
        assert localbroker.user_can_enter(user, moved)
        # A directory the user can reach stays where it was asked for.
        assert localbroker.node_dir_for(reachable / "data" / "rabbitmq") == (
            reachable / "data" / "rabbitmq"
        )
    finally:
        for path in (private, reachable):
            for child in sorted(path.rglob("*"), reverse=True):
                child.rmdir()
            path.rmdir()


@as_root_with_rabbitmq
def test_fallback_is_one_directory_per_data_directory() -> None:
    user = pwd.getpwnam("rabbitmq")
    a = localbroker.fallback_dir(Path("/root/a/stt-data/rabbitmq"), user)
    b = localbroker.fallback_dir(Path("/root/b/stt-data/rabbitmq"), user)
    assert a != b and a.parent == b.parent == Path(user.pw_dir) / "stt-local"
    assert a == localbroker.fallback_dir(Path("/root/a/stt-data/rabbitmq"), user)


# --- models, readiness, banner ----------------------------------------------------------


def test_base_is_served_beside_tiny_en_unless_models_are_configured(
    monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.setattr(Child, "start", lambda self: None)
    stack = Local(parse_args([], environ={}), DaemonSettings())
    stack.start_children("amqp://guest:guest@127.0.0.1:5672/")
    assert stack.models == ["tiny.en", "base"]  # tiny.en first: the default model
    assert [c.name for c in stack.children] == ["daemon", "gateway"]  # also the stop order
    assert {c.env["STT_MODELS"] for c in stack.children} == {"tiny.en,base"}
    monkeypatch.setenv("STT_MODELS", "tiny.en")
    assert Local(parse_args([], environ={}), DaemonSettings()).models == ["tiny.en"]


class FakeGateway(BaseHTTPRequestHandler):
    """Answers /readyz and /v1/models as the test sets them."""

    answers: ClassVar[dict[str, tuple[int, Any]]] = {}

    def do_GET(self) -> None:
        status, body = self.answers.get(self.path, (404, {"detail": "Not Found"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_ready_only_once_every_model_has_a_live_daemon(fake_gateway: str) -> None:
    models = ["tiny.en", "base"]
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert local.not_ready(nowhere, models, None) == ["gateway (not answering yet)"]
    FakeGateway.answers = {"/readyz": (503, {"status": "not ready"})}
    assert local.not_ready(fake_gateway, models, None) == ["gateway (its broker or status store)"]
    FakeGateway.answers = {
        "/readyz": (200, {"status": "ready"}),
        "/v1/models": (200, {"data": [{"id": "tiny.en"}]}),
    }
    assert local.not_ready(fake_gateway, models, None) == ["model base"]
    FakeGateway.answers["/v1/models"] = (200, {"data": [{"id": "base"}, {"id": "tiny.en"}]})
    assert local.not_ready(fake_gateway, models, None) == []


def test_banner_says_where_everything_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "executable", str(REPO / ".venv" / "bin" / "python"))
    text = local.banner(
        http_url="http://127.0.0.1:8000",
        amqp_url="amqp://guest:guest@127.0.0.1:5672/",
        models=["tiny.en", "base"],
        data_dir=Path("/root/stt/stt-data"),
        broker_dir=Path("/var/lib/rabbitmq/stt-local/abc"),
    )
    assert "http://127.0.0.1:8000/docs" in text
    assert "amqp://guest@127.0.0.1:5672/" in text and "guest:guest" not in text
    assert "tiny.en, base" in text and "(default: tiny.en)" in text
    assert "/root/stt/stt-data" in text and "/var/lib/rabbitmq/stt-local/abc" in text
    assert ".venv/bin/stt" in text and "not on PATH" in text


# --- supervision ---------------------------------------------------------------------


def test_restart_budget_allows_a_few_quick_restarts_then_gives_up() -> None:
    budget = RestartBudget(limit=3, window=60)
    assert [budget.allow(t) for t in (0, 1, 2, 3)] == [True, True, True, False]
    assert budget.allow(61.5)  # the first ones have aged out
    longer = RestartBudget(limit=9, window=60)
    seen = []
    for t in range(8):
        longer.allow(t)
        seen.append(longer.delay())
    assert seen[:3] == [0.5, 1.0, 2.0] and max(seen) == 5.0


def test_a_child_that_exits_is_restarted_until_the_budget_is_spent() -> None:
    child = Child("gateway", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ), 5)
    child.budget = RestartBudget(limit=2, window=60)
    with capture_logs() as logs:
        child.start()
        deadline = time.monotonic() + 30
        while child.watch(time.monotonic()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    events = [(e["event"], e.get("code")) for e in logs]
    assert events.count(("local.child_started", None)) == 3
    assert events.count(("local.child_exited", 3)) == 2
    assert events[-1] == ("local.child_gave_up", 3)


def test_children_stop_one_after_the_other_in_order(tmp_path: Path, clean_env: None) -> None:
    order = tmp_path / "order"

    def child(name: str, linger: float) -> Child:
        script = (
            f"trap 'echo {name}-term >> {order}; sleep {linger}; echo {name}-exit >> {order}; "
            "exit 0' TERM; echo up >> " + str(tmp_path / name) + "; while :; do sleep 0.05; done"
        )
        return Child(name, ["/bin/sh", "-c", script], dict(os.environ), 10)

    stack = Local(parse_args([], environ={}), DaemonSettings())
    stack.children = [child("daemon", 0.5), child("gateway", 0)]
    for c in stack.children:
        c.start()
    deadline = time.monotonic() + 10
    while not all((tmp_path / name).exists() for name in ("daemon", "gateway")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stack.stop()
    assert order.read_text().split() == [
        "daemon-term",
        "daemon-exit",
        "gateway-term",
        "gateway-exit",
    ]


def test_signals_are_counted_not_acted_on() -> None:
    signals = Signals()
    signals._on_signal(2, None)
    signals._on_signal(15, None)
    assert signals.count == 2
