"""The one seam where redis-py's exceptions become vmcp's store errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions

from vmcp.errors import StoreError, StoreTimeout, StoreUnavailable


@contextmanager
def translated_store_errors(operation: str) -> Iterator[None]:
    """Re-raise anything redis-py (or the socket below it) raises as a ``StoreError``.

    Timeouts of either kind (redis-py's socket timeout, our own per-call deadline) become
    ``StoreTimeout``; every other failure, including replies the contract does not allow,
    becomes ``StoreUnavailable``. Nothing here may ever become ``SessionNotFound``: an
    outage must not look like a dead session.
    """
    try:
        yield
    except StoreError:
        raise
    except (redis.exceptions.TimeoutError, TimeoutError) as exc:
        raise StoreTimeout(f"redis {operation}: timed out") from exc
    except (redis.exceptions.RedisError, OSError) as exc:
        raise StoreUnavailable(f"redis {operation}: {type(exc).__name__}: {exc}") from exc
    except asyncio.CancelledError:
        raise
