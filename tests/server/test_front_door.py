"""The front door's limits on a real ``vmcp serve``: a head or body dribbled too slowly is
answered 408 and closed, an oversized head 431 at once, a connection beyond the cap 503;
the gateway answers others meanwhile and its file descriptors stay bounded."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from tests.support.processes import HOST, ManagedProcess, running_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.timing]

MAX_CONNECTIONS = 40
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_HEADER_BYTES = 8 * 1024
FD_SLACK = 40
"""Descriptors a gateway holds besides client connections (listeners, event loop, logs)."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagedProcess]:
    config = {"backends": [], "server": {
        "max_connections": MAX_CONNECTIONS, "max_header_bytes": MAX_HEADER_BYTES,
        "header_timeout_seconds": HEADER_TIMEOUT, "body_timeout_seconds": BODY_TIMEOUT}}
    with running_gateway(config, Path(tmp_path_factory.mktemp("front-door"))) as managed:
        yield managed


def open_fds(managed: ManagedProcess) -> int:
    return len(os.listdir(f"/proc/{managed.process.pid}/fd"))


async def read_answer(stream: anyio.abc.ByteStream) -> tuple[int, dict[str, str], bytes]:
    """Everything the gateway writes until it closes the connection."""
    data = b""
    with anyio.fail_after(HEADER_TIMEOUT + BODY_TIMEOUT + 5):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def assert_jsonrpc_error(body: bytes) -> None:
    message = json.loads(body)
    assert message["jsonrpc"] == "2.0"
    assert message["error"]["message"]


async def healthz_seconds(port: int) -> float:
    started = time.perf_counter()
    async with await anyio.connect_tcp(HOST, port) as stream:
        await stream.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status, _, _ = await read_answer(stream)
    assert status == 200
    return time.perf_counter() - started


async def dribble(stream: anyio.abc.ByteStream, data: bytes,
                  results: list[tuple[int, dict[str, str], bytes, float]]) -> None:
    """Send ``data`` a byte every 50 ms until the gateway answers and hangs up."""
    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        async def send_slowly() -> None:
            for byte in data:
                try:
                    await stream.send(bytes([byte]))
                except (anyio.BrokenResourceError, OSError):
                    return
                await anyio.sleep(0.05)

        group.start_soon(send_slowly)
        status, headers, body = await read_answer(stream)
        group.cancel_scope.cancel()
    results.append((status, headers, body, time.perf_counter() - started))


async def flood(managed: ManagedProcess, count: int, data: bytes,
                ) -> tuple[list[tuple[int, dict[str, str], bytes, float]], int, float]:
    """``count`` dribbling connections at once; their answers, the gateway's most open
    descriptors seen and the slowest /healthz meanwhile."""
    results: list[tuple[int, dict[str, str], bytes, float]] = []
    most_fds, slowest = 0, 0.0
    streams = [await anyio.connect_tcp(HOST, managed.port) for _ in range(count)]
    async with anyio.create_task_group() as group:
        for stream in streams:
            group.start_soon(dribble, stream, data, results)
        while len(results) < count:
            most_fds = max(most_fds, open_fds(managed))
            slowest = max(slowest, await healthz_seconds(managed.port))
            await anyio.sleep(0.1)
    for stream in streams:
        await stream.aclose()
    return results, most_fds, slowest


HEAD = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


async def test_a_head_dribbled_too_slowly_is_answered_408_and_closed(
        gateway: ManagedProcess) -> None:
    results, most_fds, slowest = await flood(gateway, 30, HEAD + b"X-Slow: " + b"a" * 400)
    assert [status for status, *_ in results] == [408] * 30
    assert max(seconds for *_, seconds in results) < HEADER_TIMEOUT + 1.0
    for _, _, body, _ in results:
        assert_jsonrpc_error(body)
    assert most_fds <= MAX_CONNECTIONS + FD_SLACK
    assert slowest < 1.0


async def test_a_body_dribbled_too_slowly_is_answered_408(gateway: ManagedProcess) -> None:
    request = HEAD + b"Content-Length: 400\r\n\r\n" + b"{" * 400
    results, _, _ = await flood(gateway, 10, request)
    assert [status for status, *_ in results] == [408] * 10
    for _, headers, body, _ in results:
        assert headers["connection"] == "close"
        assert_jsonrpc_error(body)


async def test_an_oversized_head_is_answered_431_before_it_is_read(
        gateway: ManagedProcess) -> None:
    async with await anyio.connect_tcp(HOST, gateway.port) as stream:
        started = time.perf_counter()
        await stream.send(HEAD + b"X-Big: ")
        async with anyio.create_task_group() as group:
            async def send_megabytes() -> None:
                chunk = b"b" * 65536
                for _ in range(16 * 64):  # up to 64 MB, cut off by the answer
                    try:
                        await stream.send(chunk)
                    except (anyio.BrokenResourceError, OSError):
                        return

            group.start_soon(send_megabytes)
            status, _, body = await read_answer(stream)
            group.cancel_scope.cancel()
        assert status == 431
        assert_jsonrpc_error(body)
        assert time.perf_counter() - started < 1.0
    assert await healthz_seconds(gateway.port) < 1.0


async def test_a_connection_beyond_the_cap_is_answered_503(gateway: ManagedProcess) -> None:
    extra = 10
    streams = [await anyio.connect_tcp(HOST, gateway.port)
               for _ in range(MAX_CONNECTIONS + extra)]
    refused: list[tuple[int, dict[str, str], bytes]] = []
    try:
        with anyio.move_on_after(HEADER_TIMEOUT / 2):
            for stream in streams[MAX_CONNECTIONS:]:
                refused.append(await read_answer(stream))
        assert len(refused) == extra
        for status, headers, body in refused:
            assert status == 503
            assert headers["retry-after"] == "1"
            assert_jsonrpc_error(body)
        assert open_fds(gateway) <= MAX_CONNECTIONS + FD_SLACK
    finally:
        for stream in streams:
            await stream.aclose()


def test_the_private_parts_of_uvicorn_the_front_door_relies_on() -> None:
    for name in ("on_message_begin", "on_headers_complete", "on_message_complete",
                 "data_received", "connection_made", "connection_lost"):
        assert callable(getattr(HttpToolsProtocol, name))
    init = HttpToolsProtocol.__init__.__code__.co_names
    for name in ("transport", "loop", "connections", "cycle"):
        assert name in init, name
    cycle = RequestResponseCycle.__init__.__code__.co_names
    for name in ("response_started", "response_complete", "disconnected", "message_event"):
        assert name in cycle, name
