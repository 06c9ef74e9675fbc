"""A Cluster failover seen from one replica's store: the node its pub/sub connection is
on dies, and the messages of the session relay and the ended-session broadcast, sent by
another replica, still arrive once another node has taken over. Redialling the old node
would wait forever; so would a new pub/sub made from the listening replica's slot map,
which no failed command of its own has marked stale. A store whose URL names only the
node that died carries on with the nodes it discovered."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.redis_ha import ClusterSetup, running
from vmcp.errors import StoreError
from vmcp.store import RedisStore
from vmcp.store.pubsub import RedisEndedSessionBus, RedisSessionRelay

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timing]

DELIVERY_BOUND = 20.0


async def published_until_seen(publish: Any, seen: anyio.Event) -> None:
    """Publish every 0.2 s until ``seen``: pub/sub drops what is sent while a subscriber
    is between connections, and when it is back is what the test is about. A publish
    that fails (its own client meets the failover) is tried again like any 503."""
    with anyio.fail_after(DELIVERY_BOUND):
        while not seen.is_set():
            with contextlib.suppress(StoreError):
                await publish()
            with anyio.move_on_after(0.2):
                await seen.wait()


async def loaded_within_bound(store: RedisStore, session_id: str) -> dict[str, str]:
    """The record, once the store answers again (a 503 meanwhile is the client's retry)."""
    with anyio.fail_after(DELIVERY_BOUND):
        while True:
            with contextlib.suppress(StoreError):
                return await store.load(session_id)
            await anyio.sleep(0.1)


async def test_after_a_cluster_failover_pubsub_moves_to_a_live_node_and_a_lost_seed_is_no_outage(
        tmp_path: Path, key_prefix: str) -> None:
    with running(ClusterSetup(tmp_path / "cluster")) as setup:
        stores = [RedisStore.from_url(setup.url, key_prefix=key_prefix, ttl_seconds=60,
                                      timeout_seconds=1.0) for _ in range(2)]
        store, other = stores
        relay, sender = (RedisSessionRelay(s.client, key_prefix + "relay:", timeout_seconds=1.0)
                         for s in (store, other))
        bus, announcer = (RedisEndedSessionBus(s.client, key_prefix + "ended",
                                               timeout_seconds=1.0) for s in (store, other))
        relayed, announced = anyio.Event(), anyio.Event()

        async def follow_bus() -> None:
            async for session_id in bus.subscribe():
                if session_id == "after":
                    announced.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(relay.run)
                tg.start_soon(follow_bus)
                async with relay.listen("s1", lambda payload: relayed.set()):
                    node = relay._pubsub.node      # the node this replica listens on
                    seeded = RedisStore.from_url(
                        f"redis+cluster://127.0.0.1:{node.port}", key_prefix=key_prefix,
                        ttl_seconds=60, timeout_seconds=1.0)
                    stores.append(seeded)
                    assert await seeded.create("kept", {"k": "v"}) is True
                    killed = setup.kill_master(port=node.port)
                    watcher = threading.Thread(target=setup.wait_failover, args=(killed,))
                    watcher.start()
                    await anyio.to_thread.run_sync(watcher.join)
                    await published_until_seen(lambda: sender.publish("s1", {"n": 1}),
                                               relayed)
                    await published_until_seen(lambda: announcer.publish("after"), announced)
                    kept = await loaded_within_bound(seeded, "kept")
                tg.cancel_scope.cancel()
        finally:
            await relay.aclose()
            for each in stores:
                await each.aclose()
    assert relay.delivered >= 1
    assert kept == {"k": "v"}
