"""A real TCP proxy whose link can be cut silently and healed (asyncio, loopback).

`cut()` models a network path that drops packets without telling anyone (a partition, a
firewall dropping a flow): both directions stop forwarding, nothing is closed or reset, and
every byte sent meanwhile is held in order. `cut(replies_only=True)` holds only the server's
replies: the command arrives and runs, its answer does not (a reply lost in transit).
`heal()` delivers what was held, as TCP would deliver its retransmissions once the path is
back, including a close the client made while cut (its FIN follows its data). That is how a
command sent into a dead link reaches Redis after its client gave up on it (issue 13).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["TcpProxy", "tcp_proxy"]

_CHUNK = 65536


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._flowing = asyncio.Event()  # client -> server
        self._flowing.set()
        self._replying = asyncio.Event()  # server -> client
        self._replying.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        # Bytes that were held while cut and delivered after `heal` (client -> server).
        self.held_then_delivered = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self, *, replies_only: bool = False) -> None:
        self._replying.clear()
        if not replies_only:
            self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()
        self._replying.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.heal()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        for source, sink, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pump(source, sink, upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, upstream: bool
    ) -> None:
        gate = self._flowing if upstream else self._replying
        try:
            while True:
                chunk = await source.read(_CHUNK)
                held = not gate.is_set()
                await gate.wait()  # cut: hold the bytes (and the EOF) in order
                if not chunk:
                    if sink.can_write_eof():
                        sink.write_eof()
                    return
                if held and upstream:
                    self.held_then_delivered += len(chunk)
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError):
            sink.close()


@contextlib.asynccontextmanager
async def tcp_proxy(upstream_host: str, upstream_port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(upstream_host, upstream_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
