"""A private RabbitMQ node from the OS package, for local runs and the test suite.

Started on loopback with its own directories, node name and ports, so it never
touches a system-wide RabbitMQ. Needs the ``rabbitmq-server`` package. A start
that fails says why in one line (:class:`BrokerStartError`), read from the node's
own log, as soon as the node exits.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
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
from collections.abc import Mapping
from pathlib import Path

from stt_daemon import roles

_PACKAGED_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
_NOT_INSTALLED = (
    "rabbitmq-server is not installed: apt-get install rabbitmq-server "
    "(or set STT_AMQP_URL to a broker you run)"
)
#: RabbitMQ's own rule: the Erlang distribution port is the AMQP port + 20000.
DIST_PORT_OFFSET = 20000
#: How much of each log file a failed start reads to find the cause.
_LOG_TAIL = 64 * 1024


class BrokerStartError(RuntimeError):
    """The node did not come up; the message is one line: what went wrong, what to do."""


class PortInUse(BrokerStartError):
    """A port the node needs is taken (checked before the node starts)."""

    def __init__(self, port: int, role: str, detail: str) -> None:
        self.port = port
        self.role = role
        self.detail = detail
        super().__init__(
            f"{role} port {port} on 127.0.0.1 is not available ({detail}); "
            "stop what listens there or choose another port"
        )


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_problem(port: int, host: str = "127.0.0.1") -> str | None:
    """Why nothing could listen on ``host:port`` now ("in use", ...), or None if it could."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the servers we start do: a connection in TIME_WAIT must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use by another program"
            return exc.strerror or str(exc)
    return None


def broker_user() -> pwd.struct_passwd | None:
    """The user the node runs as when we are root; None when it runs as us."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("rabbitmq")
    except KeyError:
        raise BrokerStartError(_NOT_INSTALLED) from None


def _drop_to(user: pwd.struct_passwd) -> None:
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


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
    user = broker_user()
    if user is not None:
        _drop_to(user)


def user_can_enter(user: pwd.struct_passwd, directory: Path) -> bool:
    """Whether ``user`` may reach ``directory`` (search permission on it and every parent).

    Asked of the kernel by a child process that has become that user: permission
    bits, ACLs and mount options all count, as they will for the node.
    """
    test = shutil.which("test") or "/usr/bin/test"
    done = subprocess.run(
        [test, "-d", str(directory), "-a", "-x", str(directory)],
        preexec_fn=lambda: _drop_to(user),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def fallback_dir(wanted: Path, user: pwd.struct_passwd) -> Path:
    """Where the node's files go when ``user`` cannot reach ``wanted``: its own home.

    One directory per ``wanted`` path (a hash of it), so that each checkout keeps
    its own queued jobs across restarts, as it would under its data directory.
    """
    digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:16]
    return Path(user.pw_dir) / "stt-local" / digest


def node_dir_for(wanted: Path) -> Path:
    """``wanted`` if the node's user can reach it, else a directory that user owns.

    As root the node drops to the ``rabbitmq`` user, which cannot pass through a
    directory such as /root (mode 700) or one made by ``mktemp -d``. Granting it
    access there would mean opening the user's directories (or the broker's
    files) to others; instead the node's files move to a directory under the
    rabbitmq user's home (/var/lib/rabbitmq/stt-local/<hash>), the place the
    package itself keeps broker data, and the caller reports where.
    """
    wanted = wanted.resolve()
    user = broker_user()
    if user is None:
        return wanted
    wanted.parent.mkdir(parents=True, exist_ok=True)
    if user_can_enter(user, wanted.parent):
        return wanted
    home = fallback_dir(wanted, user)
    home.mkdir(parents=True, exist_ok=True)
    for path in (home.parent, home):
        shutil.chown(path, user.pw_uid, user.pw_gid)
    if not user_can_enter(user, home):
        raise BrokerStartError(
            f"the rabbitmq user can reach neither {wanted.parent} nor {home}: "
            "set STT_DATA_DIR to a directory it can enter (e.g. under /srv or /tmp)"
        )
    return home


#: (substring of the node's log, what went wrong, what to do); the first match wins.
_KNOWN_CAUSES: tuple[tuple[str, str, str], ...] = (
    (
        "dist_port_already_used",
        "its Erlang distribution port {dist_port} is in use",
        "stop what listens there or choose another AMQP port (the node uses port + 20000)",
    ),
    (
        "eaddrinuse",
        "port {port} is in use",
        "stop what listens there or choose another AMQP port",
    ),
    (
        "duplicate_node_name",
        "another node named {name} is running (a second stt-local?)",
        "stop it first",
    ),
    (
        "seems to be in use by another erlang node",
        "another node named {name} is running (a second stt-local?)",
        "stop it first",
    ),
    (
        "permission denied",
        "user {user} may not write {base_dir}",
        "set STT_DATA_DIR to a directory that user can enter",
    ),
    (
        "eacces",
        "user {user} may not write {base_dir}",
        "set STT_DATA_DIR to a directory that user can enter",
    ),
    ("erl: not found", "Erlang is missing", "apt-get install rabbitmq-server"),
)


def diagnose(log_text: str, **facts: object) -> tuple[str, str] | None:
    """(what went wrong, what to do) for a known cause in the node's log, else None."""
    lowered = log_text.lower()
    for needle, what, todo in _KNOWN_CAUSES:
        if needle in lowered:
            return what.format(**facts), todo.format(**facts)
    return None


def last_error(log_text: str) -> str:
    """The line of the log that best says why the node stopped (for unknown causes)."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for marker in ("Error during startup:", "Kernel pid terminated", "[error]"):
        for line in lines:
            if marker in line:
                return line.split(marker, 1)[1].strip(" :")[:300] or line[:300]
    return lines[-1][:300] if lines else "no output"


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
        # A port given is a fixed, documented one: the distribution port follows it
        # by RabbitMQ's rule, so nothing is random. The test suite's nodes (port
        # None) take free ports for both, since an ephemeral port + 20000 may not exist.
        self.port = port or free_port()
        self.dist_port = self.port + DIST_PORT_OFFSET if port else free_port()
        if not 0 < self.dist_port < 65536:
            raise ValueError(
                f"AMQP port {self.port} is too high: the node also needs port + "
                f"{DIST_PORT_OFFSET}; choose one at most {65535 - DIST_PORT_OFFSET}"
            )
        self.name = name or f"stt-{self.port}@localhost"
        self.base_dir = base_dir or Path(tempfile.mkdtemp(prefix="stt-rabbit-"))
        self._extra_config = extra_config
        # Our own cookie: the node and our rabbitmqctl calls agree on it whoever
        # runs them, and nodes of one cluster share it.
        self.cookie = cookie or secrets.token_hex(16)
        self._log_file = self.base_dir / "console.log"
        self._proc: subprocess.Popen[bytes] | None = None

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
            # Not in whatever directory we were started from, which the node's user
            # may not be able to write (or should not litter).
            "ERL_CRASH_DUMP": str(d / "erl_crash.dump"),
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

    def add_roles(
        self, passwords: Mapping[str, str], namespace: str = "stt", timeout: float = 30.0
    ) -> dict[str, str]:
        """Create the broker users of stt_daemon/roles.py; return each role's AMQP URL.

        ``namespace`` is a regular expression (``re.escape`` a plain one). Existing
        users are updated in place, so a restart with the same passwords changes nothing.
        """
        document = roles.definitions(passwords, namespace=namespace)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
            json.dump(document, file)
        try:
            os.chmod(file.name, 0o644)  # the CLI may run the read as another user
            self.ctl("import_definitions", file.name)
        finally:
            os.unlink(file.name)
        # The import finishes in the background: wait until every user is there.
        wanted = {roles.user_name(role) for role in passwords}
        deadline = time.monotonic() + timeout
        while True:
            listed = {line.split("\t")[0] for line in self.ctl("list_users", "-q").splitlines()}
            if wanted <= listed:
                break
            if time.monotonic() > deadline:
                raise BrokerStartError(f"broker users not created: missing {wanted - listed}")
            time.sleep(0.3)
        return {
            role: f"amqp://{roles.user_name(role)}:{password}@127.0.0.1:{self.port}/"
            for role, password in passwords.items()
        }

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
            raise BrokerStartError(_NOT_INSTALLED)
        return [_PACKAGED_SERVER]

    def check_ports(self) -> None:
        """Raise :class:`PortInUse` unless both ports of the node are free now."""
        for port, role in ((self.port, "AMQP"), (self.dist_port, "Erlang distribution")):
            problem = port_problem(port)
            if problem is not None:
                raise PortInUse(port, role, problem)

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and wait until it accepts AMQP connections.

        Fails fast: the ports are checked before, and a node that exits while
        starting is reported at once with the cause found in its log.
        """
        command = self._command()
        if self._proc is not None:
            self._proc.poll()  # reap a node killed earlier (a restart after a crash)
        self.check_ports()
        self._prepare()
        log_start = self._log_file.stat().st_size if self._log_file.exists() else 0
        with self._log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                command,
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
            code = self._proc.poll()
            if code is not None:
                raise BrokerStartError(self._failure(f"exited (code {code})", log_start))
            time.sleep(0.25)
        failure = self._failure(f"did not listen on {self.port} within {timeout:.0f} s", log_start)
        # Leave nothing behind: a node that may still come up would hold the ports.
        self._kill_group()
        raise BrokerStartError(failure)

    def _failure(self, what: str, log_start: int) -> str:
        """One line: the node, what happened, the cause in its log, what to do, where to look."""
        text = self._read_logs(log_start)
        facts = {
            "port": self.port,
            "dist_port": self.dist_port,
            "name": self.name,
            "base_dir": self.base_dir,
            "user": (broker_user() or pwd.getpwuid(os.geteuid())).pw_name,
        }
        known = diagnose(text, **facts)
        cause, todo = known if known else (last_error(text), "see the log")
        return f"RabbitMQ node {self.name} {what}: {cause}; {todo} (log: {self._log_file})"

    def _read_logs(self, console_start: int) -> str:
        """This start's console output and the tails of the node's log files."""
        parts = []
        with contextlib.suppress(OSError), self._log_file.open("rb") as console:
            console.seek(console_start)
            parts.append(console.read()[-_LOG_TAIL:])
        for path in sorted((self.base_dir / "log").glob("*.log")):
            with contextlib.suppress(OSError):
                parts.append(path.read_bytes()[-_LOG_TAIL:])
        return b"\n".join(parts).decode(errors="replace")

    def _kill_group(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

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
        if pid is None and self._proc is None:
            return
        self.kill(signal.SIGTERM)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._alive(pid):
                return
            time.sleep(0.2)
        self.kill(signal.SIGKILL)
        self._kill_group()

    def _alive(self, pid: int | None) -> bool:
        # Our own child must be waited for: until then it lingers as a zombie,
        # which os.kill(pid, 0) still finds.
        if self._proc is not None and self._proc.poll() is None:
            return True
        if pid is None or (self._proc is not None and pid == self._proc.pid):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def cleanup(self) -> None:
        """Remove the node's data directory."""
        shutil.rmtree(self.base_dir, ignore_errors=True)
