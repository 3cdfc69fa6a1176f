"""What a process shows to whoever can reach it: API docs with keys, the daemon's metrics."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.config import GatewaySettings
from stt_daemon.metrics import DaemonMetrics


@pytest.mark.parametrize(
    ("keys", "setting", "served"),
    [
        (None, "auto", True),
        (SecretStr("k1"), "auto", False),
        (SecretStr("k1"), "on", True),
        (None, "off", False),
    ],
)
def test_api_docs_are_not_served_with_keys_unless_asked(
    keys: SecretStr | None, setting: str, served: bool
) -> None:
    settings = GatewaySettings(api_keys=keys, api_docs=setting)  # type: ignore[arg-type]
    assert settings.serves_api_docs is served


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(address)
    return found


def test_daemon_metrics_listen_on_loopback_by_default() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    DaemonMetrics().serve(port)
    assert _listening(port) == {"0100007F"}  # 127.0.0.1 only, not 0.0.0.0
