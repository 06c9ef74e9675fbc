"""The one seam between redis-py and vmcp: its exceptions become vmcp's store errors, and a
command that met a connection which died with an old server is sent once more.

Why the retry is written here rather than configured in redis-py (8.1):

- A client built by ``Redis.from_url`` gets connections with ``Retry(NoBackoff(), 0)``:
  the ``Redis(retry=...)`` default of ten retries applies only when the client builds
  its own pool. So out of the box a dead pooled connection fails the first command.
- The pool checks a connection for EOF before handing it out, but skips that check
  whenever maintenance notifications are on, and their default (``"auto"``) counts as
  on. After a restart every pooled connection then fails once. We turn them off
  (``connection_options``): they serve managed Redis's hitless upgrades, not us, and the
  pool's own check is what replaces a connection the server closed before anything is
  sent on it.
- What that check cannot see (the server's FIN not read yet, a reply lost in flight)
  needs a retry. redis-py's ``Retry`` belongs to the connection and treats every command
  alike: it would resend ``SET NX`` after a write that landed and report a false
  conflict, and its backoff sleeps know nothing of our per-call deadline. The
  ``health_check_interval`` option only adds a PING before a command, and that PING
  fails on a dead connection just like the command unless that same retry is on.
  So redis-py's retry stays off and ``once_more_if_dropped`` retries only operations the
  caller declares safe (``GETEX``, ``DEL``, ``SET XX`` of the same value), or whose retry
  can recognise its own landed write (``SET NX``, see ``RedisStore.create``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from vmcp.errors import StoreError, StoreTimeout, StoreUnavailable

T = TypeVar("T")

# Everything redis-py raises for a store that cannot answer. Not all of it derives from
# RedisError: the Cluster client's "cannot be connected" (RedisClusterException and its
# subclasses) does not, and reached clients as a 500 before it was listed here.
REDIS_FAILURES: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    redis.exceptions.ChildDeadlockedError,
    redis.exceptions.IncorrectPolicyType,
    OSError,
)

# Connection errors that a second attempt on a fresh connection cannot cure.
_NOT_A_DEAD_CONNECTION = (
    redis.exceptions.AuthenticationError,
    redis.exceptions.AuthorizationError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.MaxConnectionsError,
)


def connection_options(timeout_seconds: float) -> dict[str, Any]:
    """Keyword arguments for every redis-py client and pool we build (see the module
    docstring): socket deadlines equal to the per-call deadline, redis-py's own retry off,
    and the pool's check of a connection before use on."""
    return {
        "socket_timeout": timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "retry": Retry(NoBackoff(), 0),
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


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
    except REDIS_FAILURES as exc:
        raise StoreUnavailable(f"redis {operation}: {type(exc).__name__}: {exc}") from exc
    except asyncio.CancelledError:
        raise


async def once_more_if_dropped(attempt: Callable[[bool], Awaitable[T]]) -> T:
    """``attempt(False)``; if its connection turned out dead, ``attempt(True)`` once.

    A ``ConnectionError`` means the command may or may not have reached the server, so
    the caller must only pass an operation that is safe to repeat, or one that checks on
    the retry (``True``) whether its first try landed. The retry gets a fresh connection:
    redis-py disconnects the failed one before pooling it again (Cluster also marks its
    slot map for a refresh, which the retry performs), and the pool replaces any other
    connection the server has closed. Run it inside the call's one deadline: the retry
    never extends it. A timeout is not retried (the server is slow, not gone).
    """
    try:
        return await attempt(False)
    except _NOT_A_DEAD_CONNECTION:
        raise
    except redis.exceptions.ConnectionError:
        return await attempt(True)
