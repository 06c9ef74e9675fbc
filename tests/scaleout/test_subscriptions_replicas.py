"""List changes travel between replicas: a listener on one hears a change seen on another.

Two replicas share one real Redis. Only the second is reloaded (SIGHUP) with one more
backend, so only it sees that change; the listener is on the first.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx2
import pytest
import yaml

from tests.scaleout.conftest import running_cluster
from tests.support.mcp_http import ListenStream
from tests.support.processes import (
    NOTES_MODULE,
    WEATHER_MODULE,
    ManagedProcess,
    running_backends,
)
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.slow

SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"


def test_a_change_seen_on_one_replica_reaches_a_listener_on_another(
        redis_server: RedisServer, tmp_path: Path) -> None:
    modules = {"notes": f"{NOTES_MODULE} --stateless", "weather": WEATHER_MODULE}
    backends: dict[str, ManagedProcess]
    with running_backends(modules, tmp_path / "backends") as backends, \
            running_cluster({"notes": backends["notes"]}, redis_server, tmp_path,
                            replicas=2) as cluster:
        first, second = cluster.replicas
        with ListenStream(first.url, {"toolsListChanged": True}, request_id=7) as stream:
            stream.wait_for(lambda s: s.messages, "the acknowledgement")
            config_file = tmp_path / f"{second.name}.yaml"
            config = yaml.safe_load(config_file.read_text())
            config["backends"].append({"name": "weather", "url": backends["weather"].url})
            config_file.write_text(yaml.safe_dump(config))
            second.process.send_signal(signal.SIGHUP)

            stream.wait_for(lambda s: "notifications/tools/list_changed" in s.methods(),
                            "tools list_changed from the other replica")
            change = stream.messages[-1]
            assert change["params"]["_meta"][SUBSCRIPTION_ID] == 7, change
        # The first replica's own configuration did not change: the news came over Redis.
        status = httpx2.get(f"{first.base_url}/status", timeout=5).json()
        assert "weather" not in {b["name"] for b in status["backends"]}, status["backends"]
