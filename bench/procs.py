"""Starting, watching and stopping the benchmark's processes (all on loopback).

Every process is started in a session of its own (so Ctrl-C reaches only the runner,
which then stops them in order) and is stopped by its own id, with bounded waits:
SIGTERM, then SIGKILL to its process group.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT = 8.0


class StartError(Exception):
    """A process did not come up; the message carries the end of its log."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx workers, for example)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(p) for p in path.read_text().split()]
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                raw = (entry / "stat").read_bytes()
                if int(raw[raw.rindex(b")") + 2:].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, chars: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


class Processes:
    """The runner's child processes; ``stop_all`` (also on exit) ends every one of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[Proc] = []
        self.unexpected_exits: list[tuple[str, int]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path = ROOT) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        status = proc.popen.poll()
        if status is not None:
            self.unexpected_exits.append((proc.name, status))
        else:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=STOP_TIMEOUT)
        # The group is the process's own session (start_new_session): its workers too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=STOP_TIMEOUT)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def wait_http(proc: Proc, port: int, path: str, *, timeout: float,
              ok: Sequence[int] | None = None) -> None:
    """Until something answers HTTP at ``path`` (any status, or one of ``ok``)."""
    deadline = time.monotonic() + timeout
    while True:
        status = proc.popen.poll()
        if status is not None:
            raise StartError(f"{proc.name} exited with status {status}:\n{proc.log_tail()}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            connection.request("GET", path)
            code = connection.getresponse().status
            if ok is None or code in ok:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        if time.monotonic() >= deadline:
            raise StartError(f"{proc.name} did not answer on port {port} within "
                             f"{timeout:g}s:\n{proc.log_tail()}")
        time.sleep(0.1)
