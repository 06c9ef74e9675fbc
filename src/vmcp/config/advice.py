"""Valid configurations that are probably not what was meant: warnings, not errors.

``check-config`` prints them and ``serve`` logs them at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from vmcp.config.backends import EnvFrom
from vmcp.config.models import VmcpConfig


def stdio_warnings(config: VmcpConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """What to say about the ``transport: stdio`` backends.

    With a shared (Redis) store, sessions move between replicas, but a stdio backend's
    process (and whatever it remembers) is per replica: a session restored elsewhere
    meets another process. And a ``value_env`` that is unset leaves the backend down.
    """
    env = os.environ if environ is None else environ
    warnings: list[str] = []
    stdio = [(i, b) for i, b in enumerate(config.backends) if b.transport == "stdio"]
    if stdio and config.session.store != "memory":
        names = ", ".join(b.name for _, b in stdio)
        warnings.append(
            f"stdio backends ({names}) with a shared store: each replica runs its own "
            "process, so a session's state in it cannot follow the session to another "
            "replica; for a stateful stdio server run `vmcp bridge` as its own deployment "
            "and configure it as an HTTP backend")
    for index, backend in stdio:
        for key, value in backend.env.items():
            if isinstance(value, EnvFrom) and value.value_env not in env:
                warnings.append(
                    f"backends[{index}].env.{key}: environment variable {value.value_env} "
                    f"is not set, so backend {backend.name!r} will not start")
    return warnings
