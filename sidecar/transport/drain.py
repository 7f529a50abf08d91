"""Stopping without failing a call: the gate every call passes, and closing the sockets.

grpc's own graceful stop (`server.stop(grace)`) cancels every call that reached grpc core
but was not yet handed to a handler, and every call that arrives on an open connection once
the stop began: the caller gets CANCELLED, which no retry policy retries (grpc/grpc#41785,
fixed upstream only in an open pull request, #41786). Under a steady load some calls are
always in that state, so a stop under load failed calls (issue 13, finding 5).

So the sidecar stops in steps of its own and calls grpc's stop only when no caller can still
reach it (the App runs them; docs/operations.md, "Stopping"):

1. drain (`listen.drain_s`): health says NOT_SERVING, every call is still served;
2. refuse (`CallGate.refuse`): new calls are answered UNAVAILABLE / SHUTTING_DOWN, without
   running them; streams (Health/Watch, AuthService/Watch) end the same way; a VerifyStream
   first answers the message it is verifying (`CallGate.stop_with`);
3. `stop_accepting`: the listening sockets are closed, so a new connection is refused
   (ECONNREFUSED: the client's UNAVAILABLE), while the open ones keep being answered;
4. the calls admitted before step 2 finish, for up to `listen.grace_period_s`
   (`CallGate.wait_idle`: a call counts until grpc reports it done, which for a status sent
   by its handler is once grpc has written it; a status sent from another task, as Watch
   does, is waited for through `CallGate.track`);
5. `close_connections`: the open connections are shut (FIN after the bytes already written),
   so whatever a client still had in flight ends UNAVAILABLE at the client;
6. only then grpc's stop: what it cancels can no longer reach anyone.

Steps 3 and 5 act on the process's own sockets, found through /proc/self/fd by their local
address: grpc.aio has no API to stop accepting or to close connections without cancelling
calls. Where /proc is missing (not Linux) they do nothing and grpc's stop behaves as before.

A listening socket is not shut but replaced: its descriptor is pointed (dup2) at an idle,
non-blocking listening socket in the abstract Unix namespace that nobody connects to. The
real socket is closed by that, so the kernel refuses new connections (and resets any not yet
accepted) while grpc keeps a descriptor it can still close at its stop. `shutdown(2)` on a
TCP listener would do the same but make grpc core log "Closing acceptor. Failed accept4" at
ERROR (not JSON, on every stop); `accept` on the idle socket just finds nothing to accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import socket
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc

__all__ = ["CallGate", "Endpoint", "close_connections", "stop_accepting"]

_PROC_FDS = Path("/proc/self/fd")


class CallGate:
    """Which calls may start, how many admitted calls are still running, and the streams.

    One per process, shared by every listener. Single-threaded: only the event loop calls it.
    """

    def __init__(self) -> None:
        self.refusing = False
        self._running = 0
        # Made by `wait_idle` only: the per-call path stays two integer updates.
        self._idle: asyncio.Event | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self._ended: set[asyncio.Task[Any]] = set()
        self._tracked: set[asyncio.Task[Any]] = set()
        # Streams that stop themselves when told (VerifyStream: transport/verify_stream.py).
        self._stoppers: dict[asyncio.Task[Any], Callable[[], None]] = {}

    @property
    def running(self) -> int:
        """Admitted calls whose final status grpc has not yet written."""
        return self._running

    def admit(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Count the call until grpc reports it done (its status handed to the transport)."""
        self._running += 1
        # The stubs declare a class, not a Protocol, for the callback: any callable works.
        context.add_done_callback(cast(Any, self._finished))

    def track(self, task: asyncio.Task[Any]) -> None:
        """A task that ends a call from outside its handler (Watch's, transport/watch.py):
        the handler may be done while the status this task sends still waits behind the
        client's flow control, so the stop waits for the task too."""
        self._tracked.add(task)
        task.add_done_callback(self._tracked.discard)

    def _finished(self, _context: Any) -> None:
        self._running -= 1
        if self._running == 0 and self._idle is not None:
            self._idle.set()

    @contextlib.contextmanager
    def stream(self) -> Iterator[asyncio.Task[Any] | None]:
        """Around a streaming handler: `refuse` cancels its task, the handler's wrapper
        answers SHUTTING_DOWN (`ended` tells it the cancellation was ours)."""
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            yield task
        finally:
            if task is not None:
                self._streams.discard(task)
                self._ended.discard(task)
                self._stoppers.pop(task, None)

    def stop_with(self, task: asyncio.Task[Any], stopper: Callable[[], None]) -> None:
        """At `refuse`, call `stopper` instead of cancelling the stream `task`: for a
        stream that must finish what it is doing first (it then ends itself, or cancels
        its task when it is only waiting). Only for a task inside `stream()`."""
        self._stoppers[task] = stopper

    def ended(self, task: asyncio.Task[Any] | None) -> bool:
        return task is not None and task in self._ended

    def refuse(self) -> None:
        """From now on every call is refused; open streams are ended."""
        self.refusing = True
        for task in list(self._streams):
            if task not in self._ended:
                self._ended.add(task)
                stopper = self._stoppers.pop(task, None)
                if stopper is None:
                    task.cancel()
                else:
                    stopper()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Until every admitted call and every tracked task is done, or `timeout_s`; True
        when none is left."""
        try:
            await asyncio.wait_for(self._settled(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _settled(self) -> None:
        while self._running or self._tracked:
            if self._running:
                self._idle = asyncio.Event()
                await self._idle.wait()
            if self._tracked:
                await asyncio.wait(set(self._tracked))


@dataclass(frozen=True)
class Endpoint:
    """A local listening address: a Unix socket path, or a TCP host and port."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, address: str) -> Endpoint:
        """From a grpc address as we bind it: `unix:/path` or `host:port`."""
        if address.startswith("unix:"):
            return cls(path=address[len("unix:") :])
        host, _, port = address.rpartition(":")
        return cls(host=host.strip("[]"), port=int(port))

    def owns(self, local: Any) -> bool:
        """Whether a socket whose local address is `local` listens or was accepted here."""
        if self.path is not None:
            return isinstance(local, str) and local == self.path
        if not isinstance(local, tuple) or local[1] != self.port:
            return False
        mine, theirs = _ip(self.host), _ip(local[0])
        return mine is None or mine.is_unspecified or mine == theirs


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _own_sockets(endpoints: Sequence[Endpoint]) -> Iterator[tuple[int, socket.socket, bool]]:
    """(descriptor, a duplicate of it, whether it listens) for each of our sockets bound to
    `endpoints`. Shutting the duplicate down acts on the shared socket; closing it (the
    caller's `with`) closes only the duplicate."""
    try:
        names = os.listdir(_PROC_FDS)
    except OSError:
        return
    for name in names:
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except (OSError, ValueError):
            continue  # closed meanwhile, or not a socket Python can wrap
        try:
            if sock.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
                sock.close()
                continue
            local = sock.getsockname()
            listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError:
            sock.close()
            continue
        if any(e.owns(local) for e in endpoints):
            yield fd, sock, listening
        else:
            sock.close()


def stop_accepting(endpoints: Sequence[Endpoint]) -> int:
    """Close the listening sockets under grpc (module docstring): new connections are
    refused, open ones are untouched. Returns how many were closed."""
    count = 0
    for fd, sock, listening in list(_own_sockets(endpoints)):
        inode = os.fstat(sock.fileno()).st_ino
        sock.close()  # ours must go first, or the socket outlives the dup2 below
        if listening and _replace(fd, inode):
            count += 1
    return count


def _replace(fd: int, inode: int) -> bool:
    """Point `fd` at an idle listening socket, if it still is the socket `inode`."""
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        idle.bind(b"\0authsidecar-stopped-" + secrets.token_hex(8).encode())
        idle.listen(1)
        idle.setblocking(False)
        if os.fstat(fd).st_ino != inode:
            return False  # closed and reused meanwhile: not ours to touch
        os.dup2(idle.fileno(), fd, inheritable=False)
        return True
    except OSError:
        return False
    finally:
        idle.close()  # `fd` keeps the idle socket open until grpc closes it


def close_connections(endpoints: Sequence[Endpoint]) -> int:
    """Shut every accepted connection: bytes already written go out, then FIN; a call the
    client still waits on ends UNAVAILABLE there. Returns how many were shut."""
    count = 0
    for _fd, sock, listening in _own_sockets(endpoints):
        with sock:
            if not listening:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    count += 1
    return count
