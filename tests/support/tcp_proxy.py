"""A loopback TCP proxy that can delay, stall or cut connections, for fault tests."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; faults are switched on by the test.

    ``delay_once(s)`` holds the next chunk from client to server for ``s`` seconds (a slow
    store call); ``stall()``/``resume()`` hold all traffic (a hung server); ``cut()``
    drops every open connection; ``lose_next_reply()`` lets the next request reach the
    server, then drops its reply and the client's connection (a server that died after
    doing the work, before answering).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pending_delays: list[float] = []
        self._lose_reply = False
        self.chunks_forwarded = 0
        self.replies_lost = 0

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.resume()
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def delay_once(self, seconds: float) -> None:
        self._pending_delays.append(seconds)

    def lose_next_reply(self) -> None:
        self._lose_reply = True

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, upstream=True),
            self._pipe(up_reader, writer, upstream=False),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await reader.read(65536):
                await self._flowing.wait()
                if upstream and self._pending_delays:
                    await asyncio.sleep(self._pending_delays.pop(0))
                if not upstream and self._lose_reply:
                    self._lose_reply = False
                    self.replies_lost += 1
                    break
                writer.write(chunk)
                await writer.drain()
                self.chunks_forwarded += 1
        writer.close()
