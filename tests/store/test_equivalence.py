"""Random operation sequences give identical answers on MemoryStore and RedisStore."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from tests.store.conftest import TTL, ManualClock, StoreUnderTest
from tests.support.redis_server import RedisServer
from vmcp.errors import SessionNotFound
from vmcp.store import MemoryStore, RedisStore

IDS = st.sampled_from(["a", "b", "c"])
RECORDS = st.dictionaries(st.sampled_from(["k", "identity", "backends"]),
                          st.text(max_size=5), max_size=3)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def test_memory_and_redis_agree_on_random_sequences(redis_url: str) -> None:
    class Equivalence(RuleBasedStateMachine):
        """Each rule runs on both stores; their answers must match exactly."""

        @initialize()
        def open_stores(self) -> None:
            self.loop = asyncio.new_event_loop()
            prefix = f"eq:{uuid.uuid4().hex[:8]}:"
            clock = ManualClock()
            memory = MemoryStore(ttl_seconds=TTL, clock=clock)
            redis = RedisStore.from_url(redis_url, key_prefix=prefix, ttl_seconds=TTL,
                                        timeout_seconds=2.0)
            self.subjects = [
                StoreUnderTest(memory, "memory", clock, None, prefix),
                StoreUnderTest(redis, "redis", None, None, prefix),
            ]

        def both(self, op: str, *args: object) -> list[object]:
            async def run(subject: StoreUnderTest) -> object:
                try:
                    return await getattr(subject.store, op)(*args)
                except SessionNotFound:
                    return "not-found"

            return [self.loop.run_until_complete(run(s)) for s in self.subjects]

        @rule(session_id=IDS, record=RECORDS)
        def create(self, session_id: str, record: dict[str, str]) -> None:
            memory, redis = self.both("create", session_id, record)
            assert memory == redis

        @rule(session_id=IDS, record=RECORDS)
        def update(self, session_id: str, record: dict[str, str]) -> None:
            memory, redis = self.both("update", session_id, record)
            assert memory == redis

        @rule(session_id=IDS)
        def load(self, session_id: str) -> None:
            memory, redis = self.both("load", session_id)
            assert memory == redis

        @rule(session_id=IDS)
        def delete(self, session_id: str) -> None:
            self.both("delete", session_id)

        @rule(seconds=st.sampled_from([1.0, TTL / 2, TTL - 1, TTL + 1]))
        def advance(self, seconds: float) -> None:
            for subject in self.subjects:
                self.loop.run_until_complete(subject.advance(seconds))

        def teardown(self) -> None:
            if hasattr(self, "subjects"):
                for subject in self.subjects:
                    self.loop.run_until_complete(subject.store.aclose())
                self.loop.close()

    Equivalence.TestCase.settings = settings(
        max_examples=40, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    Equivalence.TestCase().runTest()
