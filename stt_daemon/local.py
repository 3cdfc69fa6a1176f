"""``stt-local``: the whole system on one machine, for trying it out.

Starts a private RabbitMQ node on a fixed port (5672, or ``--amqp-port`` /
``STT_LOCAL_AMQP_PORT``) unless ``STT_AMQP_URL`` is configured, then one daemon
and one gateway with the embedded defaults (SQLite and file blobs under
``./stt-data``, the bundled tiny.en and base models). Either child is restarted
alone if it exits; a banner says where everything is once the API answers and
every model is loaded; Ctrl-C stops the daemon, then the gateway, then the broker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from yarl import URL

from stt_daemon.common.amqp import split_urls
from stt_daemon.common.logs import configure_logging
from stt_daemon.common.settings import model_name
from stt_daemon.config import DaemonSettings
from stt_daemon.localbroker import (
    DIST_PORT_OFFSET,
    BrokerStartError,
    LocalRabbitNode,
    PortInUse,
    node_dir_for,
    port_problem,
)
from stt_daemon.localsecrets import LocalSecrets, load_or_create
from stt_daemon.supervisor import Child, Signals

log = structlog.get_logger("stt_local")

DEFAULT_AMQP_PORT = 5672
AMQP_PORT_ENV = "STT_LOCAL_AMQP_PORT"
#: Served when STT_MODELS is not configured: English-only tiny.en (the default, first)
#: and a multilingual model, so that other languages and translation work out of the box.
DEFAULT_MODELS = ("tiny.en", "base")
#: uvicorn's graceful 30 s for requests in progress, then the lifespan closes connections.
GATEWAY_STOP_TIMEOUT = 45.0


class StartError(Exception):
    """stt-local cannot start; the message is one line: what went wrong and what to do."""


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """Command-line flags; the AMQP port falls back to ``$STT_LOCAL_AMQP_PORT``, then 5672."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="stt-local", description="Run a broker, a daemon and a gateway on this machine."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface the gateway binds")
    parser.add_argument("--port", type=int, default=8000, help="the gateway's HTTP port")
    parser.add_argument(
        "--amqp-port",
        type=int,
        default=None,
        help=f"the private broker's AMQP port (default ${AMQP_PORT_ENV}, else "
        f"{DEFAULT_AMQP_PORT}); its Erlang distribution port is this + {DIST_PORT_OFFSET}",
    )
    args = parser.parse_args(argv)
    if args.amqp_port is None:
        raw = environ.get(AMQP_PORT_ENV, "").strip()
        if raw and not raw.isdigit():
            parser.error(f"{AMQP_PORT_ENV}={raw!r} is not a port number")
        args.amqp_port = int(raw) if raw else DEFAULT_AMQP_PORT
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    highest = 65535 - DIST_PORT_OFFSET
    if not 0 < args.amqp_port <= highest:
        parser.error(
            f"the AMQP port must be between 1 and {highest} "
            f"(the node also listens on it + {DIST_PORT_OFFSET})"
        )
    return args


def _get_json(url: str, api_key: str | None) -> tuple[int, Any]:
    """GET ``url``: the HTTP status and the decoded body (None if not JSON)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # No proxy: the gateway is ours, here; an http_proxy in the environment must not see it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=3) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def not_ready(base_url: str, models: Sequence[str], api_key: str | None) -> list[str]:
    """What is not ready yet (the gateway, models without a live daemon); [] when all is."""
    try:
        status, _ = _get_json(f"{base_url}/readyz", None)
        if status != 200:
            return ["gateway (its broker or status store)"]
        status, body = _get_json(f"{base_url}/v1/models", api_key)
    except OSError:
        return ["gateway (not answering yet)"]
    if status in (401, 403):
        # API keys are configured and none is known here: the gateway being ready must do.
        return []
    if status != 200 or not isinstance(body, dict):
        return [f"model list (HTTP {status})"]
    served = {str(item.get("id")) for item in body.get("data", []) if isinstance(item, dict)}
    return [f"model {name}" for name in models if name not in served]


def public_amqp_url(url: str) -> str:
    """The broker URL(s) without passwords, for people to read."""
    return ",".join(str(URL(one).with_password(None)) for one in split_urls(url))


def stt_command() -> str:
    """How to run ``stt`` from here: the script beside our Python (usually not on PATH)."""
    beside = Path(sys.executable).parent / "stt"
    if not beside.is_file():
        return f"{sys.executable} -m gateway.cli"
    on_path = shutil.which("stt")
    if on_path is not None and Path(on_path).resolve() == beside.resolve():
        return "stt"
    try:
        return str(beside.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def banner(
    *,
    http_url: str,
    amqp_url: str,
    models: Sequence[str],
    data_dir: Path,
    broker_dir: Path | None,
    secrets_file: Path | None = None,
) -> str:
    """What a person needs once everything is up: where the API, broker, models and data are."""
    stt = stt_command()
    where_stt = "" if stt == "stt" else "   (not on PATH: see docs/api/client.md)"
    data = f"{data_dir}"
    if broker_dir is not None and not broker_dir.is_relative_to(data_dir):
        data += f"   (broker files: {broker_dir})"
    lines = [
        "",
        "stt-local is ready",
        f"  HTTP API   {http_url}",
        f"  API docs   {http_url}/docs",
        f"  live       {http_url.replace('http', 'ws', 1)}/ (WhisperLive), "
        f"{http_url.replace('http', 'ws', 1)}/v1/realtime?intent=transcription (OpenAI)",
        f"  AMQP       {public_amqp_url(amqp_url)}",
        *(
            [
                "             producers: user stt-producer, downstream: stt-listener, "
                f"passwords in {secrets_file}"
            ]
            if secrets_file is not None
            else []
        ),
        f"  models     {', '.join(models)}   (default: {models[0]})",
        f"  data       {data}",
        f"  stt CLI    {stt}{where_stt}",
        f"             e.g. {stt} --url {http_url} transcribe audio.flac --wait",
        "Ctrl-C stops the daemon (its jobs finish or go back to the queue), "
        "then the gateway, then the broker.",
        "",
    ]
    return "\n".join(lines)


def _connect_host(host: str) -> str:
    """Where to reach a server bound to ``host`` (the wildcard addresses mean loopback)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _api_key(environ: Mapping[str, str]) -> str | None:
    """A key the gateway accepts, to list its models when API keys are on."""
    keys = [k.strip() for k in environ.get("STT_API_KEYS", "").split(",") if k.strip()]
    return keys[0] if keys else None


class Local:
    """The broker, the daemon and the gateway of one ``stt-local`` run."""

    def __init__(self, args: argparse.Namespace, settings: DaemonSettings) -> None:
        self.args = args
        self.settings = settings
        self.signals = Signals()
        self.node: LocalRabbitNode | None = None
        configured = "models" in settings.model_fields_set
        self.model_specs = list(settings.models) if configured else list(DEFAULT_MODELS)
        self.models = [model_name(spec) for spec in self.model_specs]
        self.http_url = f"http://{_connect_host(args.host)}:{args.port}"
        self.children: list[Child] = []
        #: Role -> AMQP URL of the broker users made on the private node (none when
        #: STT_AMQP_URL names a broker of the user's: it is used as it is).
        self.role_urls: dict[str, str] = {}
        self.secrets: LocalSecrets | None = None

    def check_http_port(self) -> None:
        """Refuse at once (one line) if the gateway could not listen, rather than let it crash."""
        problem = port_problem(self.args.port, self.args.host.strip("[]") or "0.0.0.0")
        if problem is not None:
            raise StartError(
                f"HTTP port {self.args.port} on {self.args.host} is not available ({problem}): "
                "stop what listens there or choose another with --port"
            )

    def start_broker(self) -> str:
        """The AMQP URL to use: STT_AMQP_URL when configured, else a private node started now."""
        if "amqp_url" in self.settings.model_fields_set:
            log.info("local.broker", using=self.settings.amqp_url.redacted)
            return self.settings.amqp_url
        wanted = (self.settings.data_dir / "rabbitmq").resolve()
        base_dir = node_dir_for(wanted)
        if base_dir != wanted:
            log.warning(
                "local.broker.dir_moved",
                wanted=str(wanted),
                dir=str(base_dir),
                reason="the rabbitmq user cannot enter the data directory; the node keeps "
                "its files in that user's home instead",
            )
        port = self.args.amqp_port
        # One node name per port: two stt-local runs on different ports can coexist.
        name = "stt-local@localhost" if port == DEFAULT_AMQP_PORT else f"stt-local-{port}@localhost"
        self.node = LocalRabbitNode(port=port, name=name, base_dir=base_dir)
        log.info(
            "local.broker.starting", port=port, dist_port=self.node.dist_port, dir=str(base_dir)
        )
        try:
            self.node.start()
        except PortInUse as exc:
            raise StartError(self._port_advice(exc)) from None
        # The daemon and the gateway run as their own users with the least
        # permissions, as in a real deployment (stt_daemon/roles.py).
        self.secrets = load_or_create(self.settings.data_dir)
        self.role_urls = self.node.add_roles(self.secrets.passwords)
        return self.node.url

    def _port_advice(self, exc: PortInUse) -> str:
        port = f"{exc.role} port {exc.port} on 127.0.0.1 is not available ({exc.detail})"
        other = f"choose another AMQP port with --amqp-port N or {AMQP_PORT_ENV}=N"
        if exc.port == self.args.amqp_port:
            return f"{port}: another RabbitMQ? stop it, {other}, or use it with STT_AMQP_URL"
        return f"{port} (the AMQP port + {DIST_PORT_OFFSET}): {other}"

    def start_children(self, amqp_url: str) -> None:
        """One daemon and one gateway, in the order they are stopped in."""
        env = {**os.environ, "STT_AMQP_URL": amqp_url, "STT_MODELS": ",".join(self.model_specs)}
        if self.secrets is not None:
            env["STT_CLAIM_SECRET"] = self.secrets.claim_secret

        def as_role(role: str) -> dict[str, str]:
            return {**env, "STT_AMQP_URL": self.role_urls.get(role, amqp_url)}

        python = sys.executable
        gateway_argv = ["-m", "gateway", "--host", self.args.host, "--port", str(self.args.port)]
        daemon_stop = self.settings.shutdown_timeout + 30
        self.children = [
            Child("daemon", [python, "-m", "stt_daemon"], as_role("daemon"), daemon_stop),
            Child("gateway", [python, *gateway_argv], as_role("gateway"), GATEWAY_STOP_TIMEOUT),
        ]
        for child in self.children:
            child.start()

    def supervise(self) -> int:
        """Keep the children up and announce readiness once, until a signal (0) or give-up (1)."""
        ready, next_check, next_note = False, 0.0, time.monotonic() + 30
        key = _api_key(os.environ)
        while self.signals.count == 0:
            now = time.monotonic()
            if not all(child.watch(now) for child in self.children):
                return 1
            if not ready and now >= next_check:
                missing = not_ready(self.http_url, self.models, key)
                ready = not missing
                if ready:
                    self.announce()
                elif now >= next_note:
                    log.info("local.waiting", missing=missing)
                    next_note = now + 30
                next_check = now + 0.5
            time.sleep(0.2)
        log.info("local.stopping", signals=self.signals.count)
        return 0

    def announce(self) -> None:
        """The banner on stdout, and ``local.ready`` in the log."""
        data_dir = self.settings.data_dir.resolve()
        broker_dir = self.node.base_dir if self.node is not None else None
        amqp_url = self.node.url if self.node is not None else self.settings.amqp_url
        text = banner(
            http_url=self.http_url,
            amqp_url=amqp_url,
            models=self.models,
            data_dir=data_dir,
            broker_dir=broker_dir,
            secrets_file=self.secrets.path.resolve() if self.secrets is not None else None,
        )
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        log.info(
            "local.ready",
            url=self.http_url,
            docs=f"{self.http_url}/docs",
            amqp=public_amqp_url(amqp_url),
            models=self.models,
            data_dir=str(data_dir),
            broker_dir=str(broker_dir) if broker_dir else None,
        )

    def stop(self) -> None:
        """The daemon first, then the gateway, then the broker.

        The daemon stops taking jobs and finishes or hands back the running ones
        while the gateway still answers (statuses, results, new jobs wait in the
        queue) and the broker takes back what is handed back; the gateway goes
        next, and the broker they both need goes last.
        """
        for child in self.children:
            child.stop(self.signals)
        if self.node is not None:
            self.node.stop()
            log.info("local.broker.stopped", dir=str(self.node.base_dir))


def main(argv: list[str] | None = None) -> None:
    """Run broker, daemon and gateway until interrupted."""
    args = parse_args(argv)
    settings = DaemonSettings()
    configure_logging(settings.log_level, settings.log_format)
    local = Local(args, settings)
    local.signals.install()
    code = 1
    try:
        local.check_http_port()
        local.start_children(local.start_broker())
        code = local.supervise()
    except (StartError, BrokerStartError) as exc:
        log.error("local.failed", error=str(exc))
    finally:
        local.stop()
    log.info("local.stopped", code=code)
    sys.exit(code)


if __name__ == "__main__":
    main()
