"""A RabbitMQ node and a Redis of the fault suite's own, on ports of their own, that a
scenario may stop, pause, restart or wipe without touching the shared services."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import redis

from bench.stack import free_port, wait_until

# Debian installs the real scripts here; /usr/sbin's wrappers would switch to the rabbitmq
# user and its cookie. Run directly, the node and its CLI share a cookie of our own.
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT_S = 60.0


def _rabbit_tool(name: str) -> str:
    local = RABBITMQ_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    assert found, f"{name} must be installed (RabbitMQ 3.10+)"
    return found


class OwnRabbit:
    """A single RabbitMQ node in a temporary directory, driven with `rabbitmqctl -n`."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agentq-faults-rabbit-"))
        self.node = f"faults-{uuid.uuid4().hex[:8]}@localhost"
        self.port, self.dist_port = free_port(), free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        home = self.dir / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")
        config = self.dir / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
                          "loopback_users = none\n"
                          # the shared node's memory alarm must not be ours too on a busy host
                          "vm_memory_high_watermark.relative = 0.8\n"
                          "disk_free_limit.absolute = 50MB\n")
        self._cli_env = {**os.environ, "HOME": str(home)}
        self._env = {**self._cli_env, "RABBITMQ_NODENAME": self.node,
                     "RABBITMQ_NODE_PORT": str(self.port),
                     "RABBITMQ_DIST_PORT": str(self.dist_port),
                     "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                     "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                     "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                     "RABBITMQ_CONFIG_FILE": str(config)}
        self._log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([_rabbit_tool("rabbitmq-server")], cwd=self.dir,
                                        env=self._env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._started, START_TIMEOUT_S, f"RabbitMQ node {self.node}", interval=0.3)

    def _started(self) -> bool:
        assert self.process.poll() is None, self.server_log()
        return self.ctl("await_startup", "--timeout", "2", check=False).returncode == 0

    def server_log(self) -> str:
        return (self.dir / "server.log").read_text(errors="replace")[-3000:]

    def ctl(self, *args: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `rabbitmqctl -n <node> args`."""
        done = subprocess.run([_rabbit_tool("rabbitmqctl"), "-n", self.node, *args],
                              env=self._cli_env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)
        if check:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")

    def close_all_connections(self, reason: str = "closed by the fault suite") -> int:
        """Close every client connection from the broker's side; return how many."""
        out = self.ctl("close_all_connections", reason).stdout
        words = [w for w in out.split() if w.isdigit()]
        return int(words[-1]) if words else 0

    def connection_names(self) -> list[str]:
        """Return the connection_name of every client connection (one per line of the CLI)."""
        out = self.ctl("list_connections", "-q", "client_properties").stdout
        return re.findall(r'"connection_name","([^"]*)"', out)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.ctl("stop", check=False)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnRedis:
    """A redis-server on a port of its own: paused, restarted (keeping its data through an
    RDB snapshot) or restarted empty, as a Redis without persistence comes back."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agentq-faults-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server must be on PATH"
        # --save "": no snapshots of its own; a restart that keeps data saves on purpose.
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._answers, 15, f"redis-server on {self.port}", interval=0.05)

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "redis-server died"
        return bool(self.client().ping())

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def pause(self, seconds: float) -> None:
        """Freeze the server (SIGSTOP) for `seconds`: connections hang, nothing answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            self.process.send_signal(signal.SIGCONT)

    def restart(self, keep_data: bool, down_s: float = 1.0) -> None:
        """Stop and start again after `down_s`: with its data (SAVE, then kill) or empty."""
        assert self.process is not None
        snapshot = self.dir / "dump.rdb"
        if keep_data:
            self.client().save()
        self.process.kill()
        self.process.wait()
        if not keep_data:
            snapshot.unlink(missing_ok=True)
        time.sleep(down_s)
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
