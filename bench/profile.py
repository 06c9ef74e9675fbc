"""Sampling one process with py-spy, and reading its collapsed stacks back as tables.

py-spy samples from outside the process (``--nonblocking``: without pausing it), and
only frames that are running, not ones idle in the event loop's ``epoll``: the sample
counts are where the CPU went. ``--format raw`` writes collapsed stacks
(``frame;frame;... count``, root first, each frame ``function (file:line)``), which
speedscope and flamegraph.pl read as they are.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE = 250
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Buckets for "where did the CPU go", tried in order on the file of the innermost frame
# that belongs to a known library (a leaf in the standard library is charged to the
# nearest caller that is not, so json.dumps called by vmcp counts as vmcp's).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("vmcp", ("vmcp/",)),
    ("HTTP server (uvicorn, h11/httptools)", ("uvicorn/", "h11/", "httptools/")),
    ("starlette", ("starlette/",)),
    ("HTTP client to backends (httpx2, httpcore2)", ("httpx2/", "httpcore2/", "httpx/",
                                                     "httpcore/")),
    ("redis client", ("redis/", "hiredis/")),
    ("anyio", ("anyio/",)),
    ("pydantic", ("pydantic/", "pydantic_core/")),
    ("mcp SDK", ("mcp/", "mcp_types/")),
]


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


class Recording:
    """``py-spy record`` attached to ``pid`` until ``stop``."""

    def __init__(self, pid: int, output: Path, *, fmt: str = "raw") -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install -r bench/requirements.txt)")
        self.output = output
        self._log = Path(tempfile.gettempdir()) / f"py-spy-{os.getpid()}-{output.name}.log"
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [binary, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE),
                 "--nonblocking", "--format", fmt, "--output", str(output)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self, timeout: float = 30.0) -> None:
        """Stop sampling; py-spy writes its output on SIGINT."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait(timeout=5)
        if not self.output.exists():
            raise RuntimeError(f"py-spy wrote nothing: {self._log.read_text()[-800:]}")


@dataclass
class Frame:
    func: str
    file: str
    line: int | None

    @property
    def where(self) -> str:
        path = self.file
        if path.startswith("vmcp/"):
            path = "src/" + path
        return f"{path}:{self.line}" if self.line is not None else path


@dataclass
class ProfileSummary:
    samples: int
    categories: list[tuple[str, int]]
    paid_by_vmcp: list[tuple[str, int]]
    self_lines: list[tuple[str, str, int]]            # (function, file:line, samples)
    vmcp_inclusive: list[tuple[str, str, int]]        # (function, file, samples)
    vmcp_self_lines: list[tuple[str, str, int]]
    gateway_cpu_ms_per_call: float | None = None
    gateway_system_share: float | None = None
    notes: list[str] = field(default_factory=list)


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text)
    if match is None:
        return Frame(text, "?", None)
    line = match.group("line")
    return Frame(match.group("func"), match.group("file"), int(line) if line else None)


EVENT_LOOP = "event loop (uvloop's C code and system calls, no Python frame)"
STDLIB = "asyncio and the rest of the standard library"
_LOOP_FILES = ("asyncio/runners.py", "asyncio/base_events.py", "uvloop/")


def _library(frame: Frame) -> str | None:
    for name, prefixes in CATEGORIES:
        if frame.file.startswith(prefixes):
            return name
    return None


def _category(stack: list[Frame]) -> str:
    """The innermost frame's library; standard-library frames go to their caller's."""
    if stack[-1].file.startswith(_LOOP_FILES):
        return EVENT_LOOP
    for frame in reversed(stack):
        library = _library(frame)
        if library is not None:
            return library
    return STDLIB


def _paid_by_vmcp(stack: list[Frame]) -> str | None:
    """For a sample under vmcp code: what the innermost vmcp frame called that took it."""
    inner = max((i for i, f in enumerate(stack)
                 if f.file.startswith("vmcp/") and not _is_entry_point(f)), default=None)
    if inner is None:
        return None
    below = stack[inner + 1:]
    if not below:
        return "vmcp's own Python code"
    for frame in below:
        library = _library(frame)
        if library is not None:
            return library
    if below[0].file.startswith("asyncio/"):
        return "asyncio (tasks, futures, events)"
    return "vmcp's own Python code"  # json, uuid, re and friends, called directly


def _is_entry_point(frame: Frame) -> bool:
    """Frames under which everything runs (the CLI, ``serve``): 100% inclusive, no news."""
    return frame.file == "vmcp/cli.py" or (frame.file == "vmcp/server/app.py"
                                            and frame.func == "serve")


def summarize(raw: Path, top: int = 15) -> ProfileSummary:
    self_lines: Counter[tuple[str, str]] = Counter()
    vmcp_self: Counter[tuple[str, str]] = Counter()
    vmcp_incl: Counter[tuple[str, str]] = Counter()
    categories: Counter[str] = Counter()
    paid: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        stack = [parse_frame(part) for part in stack_text.split(";")]
        total += count
        leaf = stack[-1]
        self_lines[(leaf.func, leaf.where)] += count
        categories[_category(stack)] += count
        what = _paid_by_vmcp(stack)
        if what is not None:
            paid[what] += count
        seen: set[tuple[str, str]] = set()
        innermost_vmcp: Frame | None = None
        for frame in stack:
            if frame.file.startswith("vmcp/"):
                key = (frame.func, "src/" + frame.file)
                if key not in seen and not _is_entry_point(frame):
                    seen.add(key)
                    vmcp_incl[key] += count
                innermost_vmcp = frame if not _is_entry_point(frame) else innermost_vmcp
        if innermost_vmcp is not None:
            vmcp_self[(innermost_vmcp.func, innermost_vmcp.where)] += count
    return ProfileSummary(
        samples=total,
        categories=categories.most_common(),
        paid_by_vmcp=paid.most_common(),
        self_lines=[(f, w, n) for (f, w), n in self_lines.most_common(top)],
        vmcp_inclusive=[(f, w, n) for (f, w), n in vmcp_incl.most_common(top)],
        vmcp_self_lines=[(f, w, n) for (f, w), n in vmcp_self.most_common(top)],
    )
