"""``stt-local``: the whole system on one machine, for trying it out.

Starts a private RabbitMQ node (unless ``STT_AMQP_URL`` is configured), one
daemon and one gateway, all with the embedded defaults (SQLite, file blobs
under ``./stt-data``, the bundled tiny.en model); Ctrl-C stops them in order.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import structlog

from stt_daemon.config import CommonSettings
from stt_daemon.localbroker import LocalRabbitNode
from stt_daemon.logs import configure_logging

log = structlog.get_logger("stt_local")


def _start_broker(settings: CommonSettings) -> tuple[LocalRabbitNode | None, str]:
    if "amqp_url" in settings.model_fields_set:
        log.info("local.broker", using=settings.amqp_url.split("@")[-1])
        return None, settings.amqp_url
    # Kept under the data directory so that queued jobs survive a restart.
    node = LocalRabbitNode(
        name="stt-local@localhost", base_dir=(settings.data_dir / "rabbitmq").resolve()
    )
    log.info("local.broker.starting", port=node.port, dir=str(node.base_dir))
    node.start()
    return node, node.url


def main(argv: list[str] | None = None) -> None:
    """Run broker, daemon and gateway until interrupted."""
    parser = argparse.ArgumentParser(prog="stt-local", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    settings = CommonSettings()
    configure_logging(settings.log_level, settings.log_format)
    node, url = _start_broker(settings)
    env = {**os.environ, "STT_AMQP_URL": url}
    python = sys.executable
    # Own sessions: a Ctrl-C in the terminal reaches only us, and we stop the
    # children once each, in order (a second signal would force the daemon out).
    procs = [
        subprocess.Popen([python, "-m", "stt_daemon"], env=env, start_new_session=True),
        subprocess.Popen(
            [python, "-m", "gateway", "--host", args.host, "--port", str(args.port)],
            env=env,
            start_new_session=True,
        ),
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info("local.ready", url=f"http://{args.host}:{args.port}", docs="/docs")
    exit_code = 0
    while not stopping:
        if any(p.poll() is not None for p in procs):
            log.error("local.child_exited", codes=[p.returncode for p in procs])
            exit_code = 1
            break
        time.sleep(0.5)
    # Gateway first (stop intake), then the daemon (drains), then the broker.
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
    if node is not None:
        node.stop()
    log.info("local.stopped")
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
