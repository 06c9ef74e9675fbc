"""Attacks on what one client may cost a gateway: full size, with figures, not for CI.

```sh
.venv/bin/python -m bench.slow_clients                       # this work tree's vmcp
.venv/bin/python -m bench.slow_clients --vmcp OTHER/bin/vmcp --before   # another build
```

Each attack starts a real ``vmcp serve`` (and Redis where it matters) on loopback, with
the default limits, and prints its figures as JSON lines:

* ``slow_reader``: a tool floods a million progress notifications (100-character
  messages, as fast as ``bench.flood_backend`` sends them) while the client reads 4 KB/s;
  the gateway's RSS, and how the stream ended once the client reads at full speed.
* ``never_read``: a 30 MB result the client never reads; the gateway's RSS after 10 s.
* ``hang_up``: with Redis, the client hangs up mid-flood, then DELETEs the session;
  ``XADD`` calls (``INFO commandstats``) during the call and in the 10 s after DELETE.
* ``expiry``: 20 sessions left to expire (TTL 2 s); upstream DELETEs seen by the backend.
* ``caps``: 1,000 initializes by one identity; statuses.

``--before`` leaves out the configuration keys older builds do not know (new limits keep
their defaults either way) and caps the slow-reader attack at 15 s, which on an
unbounded gateway is already a gigabyte.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import redis

from tests.support import processes
from tests.support.mcp_http import BASE_HEADERS, RawSession, initialize_body, raw_post
from tests.support.processes import ManagedProcess, running_backends, running_gateway
from tests.support.recording_backend import RecordingBackend
from tests.support.redis_server import RedisServer

TOKEN = "attack-token-0123456789"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vmcp", type=Path, help="the vmcp executable (default: this venv's)")
    parser.add_argument("--before", action="store_true",
                        help="a build without the new configuration keys")
    parser.add_argument("--only", nargs="*", help="attack names to run")
    args = parser.parse_args()
    if args.vmcp is not None:
        processes.VMCP_EXECUTABLE = args.vmcp
    attacks = {"slow_reader": slow_reader, "never_read": never_read, "hang_up": hang_up,
               "expiry": expiry, "caps": caps}
    workdir = Path(tempfile.mkdtemp(prefix="vmcp-attack-"))
    with RecordingBackend() as recorder, running_redis(workdir) as store, \
            running_backends({"flood": "bench.flood_backend"}, workdir) as flooding:
        backends = Backends(recorder, flooding["flood"].url)
        for name, attack in attacks.items():
            if args.only and name not in args.only:
                continue
            figures = attack(backends, store, workdir / name, args.before)
            print(json.dumps({"attack": name, **figures}), flush=True)


@dataclass(frozen=True)
class Backends:
    """The recording backend (it counts upstream sessions) and the flooding one."""

    recorder: RecordingBackend
    flood_url: str


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def config(url: str, **sections: Any) -> dict[str, Any]:
    return {"backends": [{"name": "up", "url": url}], "health": {"enabled": False},
            **sections}


def flood(session: RawSession, count: int, size: int) -> dict[str, Any]:
    return session.message("tools/call", {
        "name": "up_flood", "arguments": {"count": count, "size": size},
        "_meta": {"progressToken": 1}})


def mib(n: int) -> float:
    return round(n / 2**20, 1)


def slow_reader(backends: Backends, store: RedisServer, workdir: Path,
                before: bool) -> dict[str, Any]:
    seconds = 15.0 if before else 45.0
    with running_gateway(config(backends.flood_url), workdir) as gateway, \
            httpx2.Client(timeout=30) as http:
        session = RawSession.open(http, gateway.url)
        baseline = peak = gateway.rss_bytes
        message = flood(session, 1_000_000, 100)
        sock = raw_post(gateway.url, session.headers(), message)
        received = 0
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            received += len(sock.recv(4096))
            peak = max(peak, gateway.rss_bytes)
            time.sleep(1.0)
        end = read_until_end(sock, seconds=60)
        sock.close()
        peak = max(peak, gateway.rss_bytes)
    return {"read_slowly_s": seconds, "rss_baseline_mib": mib(baseline),
            "rss_growth_mib": mib(peak - baseline), **end}


def read_until_end(sock: socket.socket, *, seconds: float) -> dict[str, Any]:
    """Read at full speed until the server closes; how the stream ended."""
    sock.settimeout(seconds)
    tail = b""
    total = 0
    began = time.monotonic()
    with contextlib.suppress(OSError):
        while time.monotonic() - began < seconds:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            total += len(chunk)
            tail = (tail + chunk)[-4096:]
    lines = [line for line in tail.split(b"\n") if line.startswith(b"data: {")]
    last: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        last = json.loads(lines[-1][6:]) if lines else {}
    ending = ("error " + str(last["error"].get("code")) if "error" in last
              else "result" if "result" in last else "cut")
    return {"end": ending, "drained_mib": mib(total),
            "drain_s": round(time.monotonic() - began, 1)}


def never_read(backends: Backends, store: RedisServer, workdir: Path,
               before: bool) -> dict[str, Any]:
    with running_gateway(config(backends.flood_url), workdir) as gateway, \
            httpx2.Client(timeout=30) as http:
        session = RawSession.open(http, gateway.url)
        baseline = gateway.rss_bytes
        message = session.message("tools/call", {"name": "up_big",
                                                 "arguments": {"size": 30_000_000}})
        sock = raw_post(gateway.url, session.headers(), message)
        peak = baseline
        for _ in range(10):
            time.sleep(1.0)
            peak = max(peak, gateway.rss_bytes)
        settled = gateway.rss_bytes
        sock.close()
    return {"rss_baseline_mib": mib(baseline), "rss_peak_growth_mib": mib(peak - baseline),
            "rss_growth_after_10s_mib": mib(settled - baseline)}


def xadds(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_xadd", {}).get("calls", 0))


def hang_up(backends: Backends, store: RedisServer, workdir: Path,
            before: bool) -> dict[str, Any]:
    client = redis.Redis.from_url(store.url)
    session_config = {"store": store.url, "key_prefix": "attack:hangup:"}
    with running_gateway(config(backends.flood_url, session=session_config),
                         workdir) as gateway, httpx2.Client(timeout=30) as http:
        session = RawSession.open(http, gateway.url)
        start = xadds(client)
        cpu_before = cpu_seconds(gateway)
        sock = raw_post(gateway.url, session.headers(), flood(session, 1_000_000, 100))
        time.sleep(2.0)  # a backlog builds up behind the slow start
        sock.recv(4096)
        with probing(gateway) as stalls:
            sock.close()
            time.sleep(5.0)  # the call runs on, its stream copied for a resume
        during = xadds(client) - start
        deleted_at = xadds(client)
        assert session.delete().status_code == 200
        samples = []
        for _ in range(10):
            time.sleep(1.0)
            samples.append(xadds(client) - deleted_at)
        cpu = cpu_seconds(gateway) - cpu_before
    client.close()
    last_write = next((i + 1 for i in range(len(samples) - 1, 0, -1)
                       if samples[i] != samples[i - 1]), 0)
    return {"slowest_healthz_ms_after_hang_up": round(max(stalls, default=0) * 1000),
            "xadds_in_5s_after_hang_up": during, "xadds_10s_after_delete": samples[-1],
            "writes_went_on_for_s": last_write, "gateway_cpu_s": round(cpu, 1)}


@contextlib.contextmanager
def probing(gateway: ManagedProcess) -> Iterator[list[float]]:
    """``/healthz`` latencies every 20 ms while the block runs: how long the gateway's
    event loop could not answer (a stall shows as one slow probe)."""
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx2.Client(timeout=10) as http:
            while not stop.is_set():
                began = time.monotonic()
                http.get(f"{gateway.base_url}/healthz")
                latencies.append(time.monotonic() - began)
                stop.wait(0.02)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join(timeout=15)


def cpu_seconds(gateway: ManagedProcess) -> float:
    fields = Path(f"/proc/{gateway.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def expiry(backends: Backends, store: RedisServer, workdir: Path,
           before: bool) -> dict[str, Any]:
    sessions = 20
    session_config = {"store": store.url, "key_prefix": "attack:expiry:", "ttl_seconds": 2.0,
                      "sweep_interval_seconds": 0.5}
    backend = backends.recorder
    backend.clear()
    with running_gateway(config(backend.url, session=session_config), workdir) as gateway, \
            httpx2.Client(timeout=30) as http:
        for _ in range(sessions):
            RawSession.open(http, gateway.url).tool_names()
        time.sleep(10.0)  # well past the TTL and many sweeps
        deletes = [seen for seen in backend.seen if seen.http_method == "DELETE"]
    return {"sessions": sessions,
            "upstream_initializes": len(backend.calls("initialize")),
            "upstream_deletes_after_expiry": len(deletes)}


def caps(backends: Backends, store: RedisServer, workdir: Path,
         before: bool) -> dict[str, Any]:
    auth = {"incoming": {"type": "static", "tokens": [{
        "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "issuer": "static",
        "subject": "mallory"}]}}
    statuses: collections.Counter[int] = collections.Counter()
    with running_gateway(config(backends.recorder.url, auth=auth), workdir) as gateway, \
            httpx2.Client(timeout=30) as http:
        for _ in range(1000):
            response = http.post(gateway.url, json=initialize_body(1), headers={
                **BASE_HEADERS, "Authorization": f"Bearer {TOKEN}"})
            statuses[response.status_code] += 1
    return {"initializes": 1000, "statuses": dict(statuses)}


if __name__ == "__main__":
    main()
