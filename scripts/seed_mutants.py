"""Hand-written mutants for the three races the session layer must get right.

A mutation tool changes operators and constants; it does not write the bugs that matter
most here: a later write turned into an upsert (a session ended on another replica comes
back), a load and its write sharing one deadline (a slow load fails the write), and the
cache mistaking a stored value for its "nothing cached" marker. Each mutant below is one
such bug, applied to a copy of ``src/``; the tests named beside it must fail on it.

    .venv/bin/python scripts/seed_mutants.py          # every mutant
    .venv/bin/python scripts/seed_mutants.py a-decorate-upsert b-shared-deadline
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SET_IF_PRESENT = "tests/session/test_set_if_present.py"
DEADLINES = "tests/session/test_store_deadlines.py"
STORED_VALUES = "tests/cache/test_stored_values_are_values.py"

# Appended to manager.py by the upsert mutants: the write the store contract forbids.
UPSERT = '''

class _Upsert:
    def __init__(self, store):
        self._store = store

    async def update(self, session_id, metadata):
        if await self._store.update(session_id, metadata):
            return True
        return await self._store.create(session_id, metadata)
'''

Edit = Callable[[str], str]


@dataclass(frozen=True)
class Seed:
    name: str
    path: str
    what: str
    edit: Edit
    tests: tuple[str, ...]


def in_function(name: str, old: str, new: str) -> Edit:
    """Replace ``old`` by ``new`` inside the body of the function ``name`` only."""
    def edit(text: str) -> str:
        start = re.search(rf"^\s*(async )?def {re.escape(name)}\(", text, re.M)
        if start is None:
            raise ValueError(f"no function {name}")
        following = re.compile(r"^(    )?(async def|def|class) ", re.M)
        end = following.search(text, start.end())
        stop = end.start() if end else len(text)
        body = text[start.start():stop]
        if old not in body:
            raise ValueError(f"{old!r} not in {name}")
        return text[:start.start()] + body.replace(old, new) + text[stop:]
    return edit


def upsert_in(function: str, store: str = "self._store") -> Edit:
    inner = in_function(function, f"{store}.update(", f"_Upsert({store}).update(")
    return lambda text: inner(text) + UPSERT


def everywhere(*pairs: tuple[str, str]) -> Edit:
    def edit(text: str) -> str:
        for old, new in pairs:
            if old not in text:
                raise ValueError(f"{old!r} not found")
            text = text.replace(old, new)
        return text
    return edit


SHARED_DEADLINE = '''async def record_backend_state(store, session_id, backend, state):
    import asyncio
    async with asyncio.timeout(getattr(store, "_timeout", 2.0)):
        return await _record_backend_state_at_once(store, session_id, backend, state)


async def _record_backend_state_at_once('''

MANAGER = "src/vmcp/session/manager.py"
METADATA = "src/vmcp/session/metadata.py"
SEEDS = [
    Seed("a-decorate-upsert", MANAGER, "decorate_session writes update-else-create",
         upsert_in("decorate_session"),
         (f"{SET_IF_PRESENT}::test_a_terminate_between_decorate_load_and_write_is_not_undone",)),
    Seed("a-record-state-upsert", METADATA, "record_backend_state writes update-else-create",
         upsert_in("record_backend_state", store="store"),
         (f"{SET_IF_PRESENT}::test_a_terminate_between_record_backend_state_load_and_write"
          "_is_not_undone",)),
    Seed("a-full-record-upsert", MANAGER,
         "create_session's placeholder-to-full write is update-else-create",
         upsert_in("create_session"),
         (f"{SET_IF_PRESENT}::test_a_placeholder_gone_before_the_full_write_is_not_created",)),
    Seed("a-backend-expired-upsert", MANAGER, "notify_backend_expired writes update-else-create",
         upsert_in("notify_backend_expired"),
         (f"{SET_IF_PRESENT}::test_a_terminate_between_notify_backend_expired_load_and_write"
          "_is_not_undone",)),
    Seed("a-restore-upsert", MANAGER, "the restore's write-back is update-else-create",
         upsert_in("_restore"),
         (f"{SET_IF_PRESENT}::test_a_terminate_between_restore_load_and_write_back_closes_the"
          "_restored_copy",)),
    Seed("a-reconcile-upsert", MANAGER, "a reload's write is update-else-create",
         upsert_in("_reconcile_live_sessions"),
         (f"{SET_IF_PRESENT}::test_a_terminate_between_reconcile_load_and_write_is_not_undone",)),
    Seed("a-terminate-mark-upsert", MANAGER,
         "terminate marks a placeholder with update-else-create",
         upsert_in("terminate"),
         (f"{SET_IF_PRESENT}::test_a_placeholder_gone_before_terminate_marks_it_is_not_created",)),
    Seed("a-failed-create-mark-upsert", MANAGER,
         "a failed creation marks its placeholder with update-else-create",
         upsert_in("_mark_terminated"),
         (f"{SET_IF_PRESENT}::test_a_placeholder_gone_while_backends_fail_is_not_marked_into"
          "_existence",)),
    Seed("a-redis-update-unconditional", "src/vmcp/store/redis.py",
         "RedisStore.update is SET without XX (an unconditional set)",
         in_function("update", ", xx=True", ""), (SET_IF_PRESENT,)),
    Seed("a-memory-update-unconditional", "src/vmcp/store/memory.py",
         "MemoryStore.update sets whether or not the record is there",
         in_function("update", "        if self._live(session_id) is None:\n"
                               "            return False\n", ""), (SET_IF_PRESENT,)),
    Seed("b-shared-deadline", METADATA,
         "record_backend_state's load and write share one store deadline",
         everywhere(("async def record_backend_state(", SHARED_DEADLINE)),
         (f"{DEADLINES}::test_a_slow_load_leaves_the_write_its_own_deadline_after_a"
          "_reinitialize",)),
    Seed("b-no-deadline", "src/vmcp/store/redis.py", "Redis store calls have no deadline",
         everywhere(("async with asyncio.timeout(self._timeout):",
                     "async with asyncio.timeout(None):"),
                    ('"socket_timeout": timeout_seconds,', '"socket_timeout": None,')),
         (f"{DEADLINES}::test_a_stalled_store_under_a_reinitialize_ends_in_the_store_error"
          "_not_a_hang",)),
    Seed("c-none-is-absent", "src/vmcp/cache.py", "the cache takes a stored None for absence",
         everywhere(("_ABSENT)", "None)"), ("is not _ABSENT", "is not None"),
                    ("is _ABSENT", "is None")),
         (STORED_VALUES,)),
    Seed("c-falsy-is-absent", "src/vmcp/cache.py", "the cache takes a falsy value for absence",
         lambda text: re.sub(r"(\w+) is _ABSENT", r"not \1",
                             re.sub(r"(\w+) is not _ABSENT", r"\1", text)),
         (STORED_VALUES,)),
    Seed("c-equal-is-absent", "src/vmcp/cache.py",
         "the cache compares with its marker by equality, not identity",
         everywhere(("is not _ABSENT", "!= _ABSENT"), ("is _ABSENT", "== _ABSENT")),
         (STORED_VALUES,)),
]


def run(seed: Seed) -> tuple[str, float]:
    """Apply ``seed`` to a copy of src/ and run its tests there: 'killed' if they fail."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vmcp-seed-") as scratch:
        src = Path(scratch) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("*.egg-info",
                                                                          "__pycache__"))
        target = Path(scratch) / seed.path
        original = target.read_text()
        mutated = seed.edit(original)
        if mutated == original:
            raise ValueError(f"{seed.name}: the edit changed nothing")
        target.write_text(mutated)
        env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
        where = subprocess.run(
            [sys.executable, "-c", "import vmcp; print(vmcp.__file__)"],
            env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout
        if not where.startswith(str(src)):
            raise RuntimeError(f"the mutated copy is not the one imported: {where}")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
             "--timeout", "60", *seed.tests],
            env=env, capture_output=os.environ.get("SEED_VERBOSE") is None, text=True, cwd=ROOT)
    verdict = {0: "SURVIVED", 1: "killed"}.get(result.returncode,
                                               f"error (pytest exit {result.returncode})")
    return verdict, time.monotonic() - started


def main(argv: list[str]) -> int:
    chosen = [s for s in SEEDS if not argv or s.name in argv]
    killed = 0
    for seed in chosen:
        verdict, seconds = run(seed)
        killed += verdict == "killed"
        print(f"{verdict:9} {seed.name:30} {seconds:5.1f}s  {seed.what}", flush=True)
    print(f"seed mutants: {len(chosen)}, killed: {killed}, survived: {len(chosen) - killed}")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
