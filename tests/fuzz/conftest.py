"""Gateways for the fuzz tests: the shared memory-store gateway of the integration tests,
and one on Redis (so that stored records can be compared before and after)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

# The session-scoped processes of the integration tests, reused as they are.
from tests.integration.conftest import demo_backends, gateway
from tests.support.processes import (
    GATEWAY_MAX_BODY_BYTES,
    ManagedProcess,
    gateway_config,
    running_gateway,
)
from tests.support.redis_server import RedisServer

__all__ = ["demo_backends", "gateway", "pytest_terminal_summary", "redis_gateway"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many fuzz cases got which status (nothing if no fuzz test ran)."""
    from tests.fuzz.test_http_surface import outcome_lines

    for line in outcome_lines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def redis_gateway(demo_backends: dict[str, ManagedProcess], redis_server: RedisServer,
                  tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[ManagedProcess, str]]:
    """One ``vmcp serve`` on the test Redis before both demo backends, and its key prefix."""
    prefix = f"fuzz:{uuid.uuid4().hex[:12]}:"
    config = gateway_config(
        demo_backends,
        server={"max_body_bytes": GATEWAY_MAX_BODY_BYTES},
        session={"store": redis_server.url, "key_prefix": prefix},
    )
    with running_gateway(config, tmp_path_factory.mktemp("fuzz-redis-gateway")) as process:
        yield process, prefix
