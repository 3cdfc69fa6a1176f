"""A private RabbitMQ node from the OS package, for local runs and the test suite.

Started on loopback with its own directories, node name and ports, so it never
touches a system-wide RabbitMQ. Needs the ``rabbitmq-server`` package.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_PACKAGED_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class BrokerStartError(RuntimeError):
    """The node did not come up."""


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_as_broker_user() -> None:
    """In the node's process, before exec: more open files, and the rabbitmq user.

    RabbitMQ sizes its file handle cache from the open-files limit (1024 by
    default), sockets and every quorum queue's and stream's files included; once
    it is used up, new connections wait for a handle and hang in the handshake.
    Run as root, the node drops to the package's ``rabbitmq`` user, as the
    packaged wrapper would.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if os.geteuid() == 0:
        user = pwd.getpwnam("rabbitmq")
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalRabbitNode:
    """One RabbitMQ node on 127.0.0.1 with a throw-away (or given) data directory."""

    def __init__(
        self,
        *,
        port: int | None = None,
        name: str | None = None,
        base_dir: Path | None = None,
        extra_config: str = "",
        cookie: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dist_port = free_port()
        self.name = name or f"stt-{self.port}@localhost"
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="stt-rabbit-"))
        self._extra_config = extra_config
        # Our own cookie: the node and our rabbitmqctl calls agree on it whoever
        # runs them, and nodes of one cluster share it.
        self.cookie = cookie or secrets.token_hex(16)
        self._log_file = self.base_dir / "console.log"

    @property
    def url(self) -> str:
        """AMQP URL of the node (guest is allowed on loopback only)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        """Where the Erlang VM writes its pid."""
        return self.base_dir / "rabbit.pid"

    def _env(self) -> dict[str, str]:
        d = self.base_dir
        return {
            **os.environ,
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            # The node runs as the rabbitmq user: give it a home it can write.
            "HOME": str(d),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-setcookie {self.cookie}",
            "RABBITMQ_CTL_ERL_ARGS": f"-setcookie {self.cookie}",
        }

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` and return its output (raises on failure)."""
        done = subprocess.run(
            ["rabbitmqctl", "-n", self.name, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise BrokerStartError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def join(self, other: LocalRabbitNode) -> None:
        """Make this (running) node a member of ``other``'s cluster."""
        self.ctl("stop_app")
        self.ctl("join_cluster", other.name)
        self.ctl("start_app")

    def _prepare(self) -> None:
        d = self.base_dir
        (d / "mnesia").mkdir(parents=True, exist_ok=True)
        (d / "log").mkdir(parents=True, exist_ok=True)
        (d / "enabled_plugins").write_text("[].\n")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users = none\n" + self._extra_config
        )
        if os.geteuid() == 0:
            # The packaged start script drops to the rabbitmq user when run as root.
            shutil.chown(d, "rabbitmq", "rabbitmq")
            for path in d.rglob("*"):
                shutil.chown(path, "rabbitmq", "rabbitmq")

    def _command(self) -> list[str]:
        # The real script, not the /usr/sbin wrapper: as root the wrapper switches
        # users with su, whose PAM limits would undo _start_as_broker_user's.
        if not Path(_PACKAGED_SERVER).exists():
            raise BrokerStartError(
                "rabbitmq-server is not installed: apt-get install rabbitmq-server "
                "(or set STT_AMQP_URL to a broker you run)"
            )
        return [_PACKAGED_SERVER]

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and wait until it accepts AMQP connections."""
        self._prepare()
        with self._log_file.open("ab") as log:
            subprocess.Popen(
                self._command(),
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_start_as_broker_user,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _port_open(self.port):
                return
            time.sleep(0.25)
        raise BrokerStartError(
            f"RabbitMQ node {self.name} did not listen on {self.port} within {timeout:.0f} s; "
            f"see {self.base_dir / 'log'} and {self._log_file}"
        )

    def pid(self) -> int | None:
        """The Erlang VM's pid, once it has written it."""
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal to the VM (SIGKILL simulates a crash)."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the node: SIGTERM, then SIGKILL if it lingers."""
        pid = self.pid()
        if pid is None:
            return
        self.kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        self.kill(signal.SIGKILL)

    def cleanup(self) -> None:
        """Remove the node's data directory."""
        shutil.rmtree(self.base_dir, ignore_errors=True)
