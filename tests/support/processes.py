"""Real processes for end-to-end tests: ``vmcp serve`` gateways and the example backends.

Every process listens on a free loopback port, writes its output to a log file in the
test's temporary directory and is stopped with SIGTERM (killed if it does not stop in
time). Processes that are running are remembered in :data:`RUNNING`, so a failing test
can show the tail of their logs next to its own traceback.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.redis_server import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VMCP_EXECUTABLE = Path(sys.executable).parent / "vmcp"

HOST = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_LINES = 40
_POLL_SECONDS = 0.05
_PORT_ATTEMPTS = 3

GATEWAY_MAX_BODY_BYTES = 64 * 1024
"""``server.max_body_bytes`` of the shared test gateway: small, so a test can exceed it."""

NOTES_MODULE = "examples.backends.notes"
WEATHER_MODULE = "examples.backends.weather"
CONFORMANCE_MODULE = "examples.backends.conformance"


class ProcessStartError(RuntimeError):
    """A process exited or did not answer in time; the message carries its log tail."""


@dataclass
class ManagedProcess:
    """One subprocess on ``HOST:port`` whose output goes to ``log_path``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    ready_path: str
    stopped: bool = field(default=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The MCP endpoint."""
        return f"{self.base_url}/mcp"

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def rss_bytes(self) -> int:
        """Resident set size now, from ``/proc/<pid>/status``."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"{self.name} has no VmRSS")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"<log {self.log_path} unreadable: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"{self.name} on port {self.port} ({state}), log {self.log_path}"

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self.stopped = True
        with contextlib.suppress(ValueError):
            RUNNING.remove(self)
        return self.process.returncode


RUNNING: list[ManagedProcess] = []
"""Processes started here and not yet stopped, in start order."""


def wait_for(condition: Callable[[], Any], what: str,
             timeout: float = STARTUP_TIMEOUT_SECONDS) -> Any:
    """Poll ``condition`` (something another process changes) until it is true, within
    ``timeout``; its value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(_POLL_SECONDS)
    return value


def processes_with(marker: str, exclude: ManagedProcess | None = None
                   ) -> list[tuple[int, str]]:
    """(pid, state) of every process whose command line names ``marker`` (a stdio
    server's argument), but ``exclude``'s own (a bridge names it too)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and (
                exclude is None or int(proc.name) != exclude.process.pid):
            found.append((int(proc.name), state))
    return found

STARTED: list[ManagedProcess] = []
"""Every process started here, in start order (for the logs of a failed test)."""


def _answers(port: int, path: str) -> bool:
    """Whether ``GET path`` gets a 2xx answer (any answer if ``path`` is an MCP endpoint)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        connection.request("GET", path, headers={"Accept": "text/event-stream"})
        response = connection.getresponse()
        status = response.status
        response.close()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return path == "/mcp" or 200 <= status < 300


def _launch(name: str, command: Sequence[str], port: int, log_path: Path,
            ready_path: str) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(command), cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    managed = ManagedProcess(name, port, process, log_path, ready_path)
    RUNNING.append(managed)
    STARTED.append(managed)
    return managed


def _lost_port_race(managed: ManagedProcess) -> bool:
    return "address already in use" in managed.log_tail(200).lower()


def wait_until_ready(processes: Sequence[ManagedProcess],
                     timeout: float = STARTUP_TIMEOUT_SECONDS) -> list[ManagedProcess]:
    """Poll every process until it answers; return those that lost the race for their port.

    Raises :class:`ProcessStartError` (with the log tail) if one exits for another reason
    or does not answer within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    waiting = list(processes)
    lost: list[ManagedProcess] = []
    while waiting:
        for managed in list(waiting):
            if managed.returncode is not None:
                waiting.remove(managed)
                managed.stop()
                if _lost_port_race(managed):
                    lost.append(managed)
                    continue
                raise ProcessStartError(
                    f"{managed.describe()} exited before it answered:\n{managed.log_tail()}")
            if _answers(managed.port, managed.ready_path):
                waiting.remove(managed)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(m.describe() for m in waiting)
            tails = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in waiting)
            raise ProcessStartError(f"not answering within {timeout:g}s: {names}\n{tails}")
        if waiting:
            time.sleep(_POLL_SECONDS)
    return lost


def _start_all(names: Iterable[str], launch: Callable[[str, int], ManagedProcess],
               timeout: float) -> dict[str, ManagedProcess]:
    """Launch one process per name on a free port, all at once, and wait for them all.

    A process that lost its port to another one between ``free_port`` and ``bind`` is
    started again on a new port; if anything fails, everything started is stopped.
    """
    started: dict[str, ManagedProcess] = {}
    pending = list(names)
    try:
        for _ in range(_PORT_ATTEMPTS):
            batch = {name: launch(name, free_port()) for name in pending}
            started.update(batch)
            pending = [m.name for m in wait_until_ready(list(batch.values()), timeout)]
            if not pending:
                return started
        raise ProcessStartError(f"no free port after {_PORT_ATTEMPTS} attempts: {pending}")
    except BaseException:
        for managed in started.values():
            managed.stop()
        raise


# -- backends -------------------------------------------------------------------------


def _backend_command(module: str, port: int) -> list[str]:
    """``module`` may carry the backend's own flags after its name (``"pkg.mod --flag"``)."""
    name, *flags = module.split()
    return [sys.executable, "-m", name, "--host", HOST, "--port", str(port), *flags]


def start_backends(modules: Mapping[str, str], log_dir: Path,
                   timeout: float = STARTUP_TIMEOUT_SECONDS) -> dict[str, ManagedProcess]:
    """Start ``{name: module}`` backends at once and wait until all of them answer.

    A module may name the backend's flags after it: ``"examples.backends.notes --stateless"``.
    """
    def launch(name: str, port: int) -> ManagedProcess:
        return _launch(name, _backend_command(modules[name], port), port,
                       log_dir / f"{name}.log", "/mcp")

    return _start_all(modules, launch, timeout)


@contextlib.contextmanager
def running_backends(modules: Mapping[str, str], log_dir: Path) -> Iterator[dict[str,
                                                                             ManagedProcess]]:
    """The backends for the duration of the block, stopped on the way out."""
    backends = start_backends(modules, log_dir)
    try:
        yield backends
    finally:
        for managed in backends.values():
            managed.stop()


def restart_backend(managed: ManagedProcess, module: str,
                    timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
    """Start a stopped backend again on its own port (it remembers nothing) and wait."""
    with managed.log_path.open("ab") as log:
        managed.process = subprocess.Popen(
            _backend_command(module, managed.port), cwd=PROJECT_ROOT, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    managed.stopped = False
    RUNNING.append(managed)
    if wait_until_ready([managed], timeout):
        raise ProcessStartError(f"{managed.describe()} did not start again:\n"
                                f"{managed.log_tail()}")


# -- bridges --------------------------------------------------------------------------


@contextlib.contextmanager
def running_bridge(command: Sequence[str], workdir: Path, *bridge_args: str,
                   name: str = "bridge") -> Iterator[ManagedProcess]:
    """``vmcp bridge [bridge_args] -- command`` for the duration of the block (ready once
    it answers ``/healthz``: the stdio server may still be starting)."""
    def launch(_: str, port: int) -> ManagedProcess:
        argv = [str(VMCP_EXECUTABLE), "bridge", "--host", HOST, "--port", str(port),
                "--log-format", "json", *bridge_args, "--", *command]
        return _launch(name, argv, port, workdir / f"{name}.log", "/healthz")

    bridge = _start_all([name], launch, STARTUP_TIMEOUT_SECONDS)[name]
    try:
        yield bridge
    finally:
        bridge.stop()


# -- gateways -------------------------------------------------------------------------


def gateway_config(backends: Mapping[str, ManagedProcess], **sections: Any) -> dict[str, Any]:
    """A configuration with one backend per entry; keyword sections are merged in."""
    config: dict[str, Any] = {
        "backends": [{"name": name, "url": managed.url} for name, managed in backends.items()],
    }
    for section, values in sections.items():
        config[section] = values
    return config


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path


def _with_port(config: Mapping[str, Any], port: int) -> dict[str, Any]:
    copy = dict(config)
    copy["server"] = {**dict(copy.get("server") or {}), "host": HOST, "port": port}
    return copy


def start_gateways(configs: Mapping[str, Mapping[str, Any]], workdir: Path,
                   timeout: float = STARTUP_TIMEOUT_SECONDS,
                   args: Sequence[str] = ()) -> dict[str, ManagedProcess]:
    """Start ``vmcp serve`` once per ``{name: config}``, all at once, and wait for ``/healthz``.

    Each configuration is written to ``workdir/<name>.yaml`` with a free port filled in;
    output goes to ``workdir/<name>.log``; ``args`` are added to each command line.
    """
    def launch(name: str, port: int) -> ManagedProcess:
        path = write_config(workdir / f"{name}.yaml", _with_port(configs[name], port))
        command = [str(VMCP_EXECUTABLE), "serve", "--config", str(path), *args]
        return _launch(name, command, port, workdir / f"{name}.log", "/healthz")

    return _start_all(configs, launch, timeout)


def restart_gateway(managed: ManagedProcess, config: Mapping[str, Any], workdir: Path,
                    timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
    """Start a stopped gateway again on its own port with ``config`` and wait for it.

    The balancer in front keeps the replica's port, so the new process must take it again.
    """
    path = write_config(workdir / f"{managed.name}.yaml", _with_port(config, managed.port))
    with managed.log_path.open("ab") as log:
        managed.process = subprocess.Popen(
            [str(VMCP_EXECUTABLE), "serve", "--config", str(path)], cwd=PROJECT_ROOT,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    managed.stopped = False
    RUNNING.append(managed)
    if wait_until_ready([managed], timeout):
        raise ProcessStartError(f"{managed.describe()} did not start again:\n"
                                f"{managed.log_tail()}")


@contextlib.contextmanager
def running_gateways(configs: Mapping[str, Mapping[str, Any]], workdir: Path,
                     args: Sequence[str] = (), timeout: float = STARTUP_TIMEOUT_SECONDS
                     ) -> Iterator[dict[str, ManagedProcess]]:
    """The gateways for the duration of the block, stopped on the way out."""
    gateways = start_gateways(configs, workdir, timeout, args)
    try:
        yield gateways
    finally:
        for managed in gateways.values():
            managed.stop()


@contextlib.contextmanager
def running_gateway(config: Mapping[str, Any], workdir: Path, name: str = "gateway",
                    args: Sequence[str] = (), timeout: float = STARTUP_TIMEOUT_SECONDS
                    ) -> Iterator[ManagedProcess]:
    with running_gateways({name: config}, workdir, args, timeout) as gateways:
        yield gateways[name]


__all__ = [
    "CONFORMANCE_MODULE",
    "GATEWAY_MAX_BODY_BYTES",
    "HOST",
    "NOTES_MODULE",
    "RUNNING",
    "STARTED",
    "WEATHER_MODULE",
    "ManagedProcess",
    "ProcessStartError",
    "gateway_config",
    "processes_with",
    "restart_backend",
    "restart_gateway",
    "running_backends",
    "running_bridge",
    "running_gateway",
    "running_gateways",
    "start_backends",
    "start_gateways",
    "wait_for",
    "wait_until_ready",
    "write_config",
]
