"""Log and banner output that never blocks the event loop and never raises into it.

Why: a sidecar's stdout/stderr go to a pipe read by someone else (a log collector, a
supervisor, a test harness). When that reader stalls, the pipe fills (64 KiB on Linux) and a
plain `write` blocks: written from the event loop, every call, health check and the SIGTERM
handler stop with it, and the process survives SIGTERM until it is killed. When the reader is
gone, `write` raises BrokenPipeError, which used to end the sidecar at its banner. A sidecar
must keep answering and stop within its grace period whatever its log reader does, so:

- the caller only appends the finished line to a queue (no I/O, no lock held across I/O);
- one daemon thread per stream writes the queue to the file descriptor with `os.write`, and is
  the only thing that can block on a stalled reader;
- the queue is bounded (MAX_QUEUED_BYTES): beyond it lines are dropped and counted, and the
  count is written as one line (`authsidecar: N log lines dropped ...`) as soon as the stream
  takes writes again; a write error (reader gone) drops the line the same way;
- `close` waits a bounded time for the queue to empty, then gives up (the thread is a daemon,
  so a reader that never comes back cannot hold the exit either).

The writer uses its own duplicate of the descriptor and `os.write`, not `sys.stderr`: a daemon
thread stuck inside the `sys.stderr` buffer would hold its lock at interpreter shutdown.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import TextIO

MAX_QUEUED_BYTES = 4 * 1024 * 1024
CLOSE_WAIT_S = 1.0


class LineWriter:
    """Lines queued by any thread, written to one file descriptor by a daemon thread."""

    def __init__(self, fd: int, *, max_queued_bytes: int = MAX_QUEUED_BYTES) -> None:
        self._fd = os.dup(fd)
        self._max = max_queued_bytes
        self._lines: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._dropped = 0  # not yet reported in the stream
        self._dropped_total = 0
        self._closing = False
        self._busy = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="authsidecar-log", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines lost so far (queue full or stream broken), including any not yet reported."""
        with self._cond:
            return self._dropped_total

    def write(self, line: str) -> None:
        """Queue one line (a newline is added); never blocks on I/O, never raises."""
        data = (line + "\n").encode("utf-8", "backslashreplace")
        with self._cond:
            if self._closing or self._queued + len(data) > self._max:
                self._drop(1)
                return
            self._lines.append(data)
            self._queued += len(data)
            self._cond.notify()

    def close(self, timeout_s: float = CLOSE_WAIT_S) -> bool:
        """Let the queued lines out for up to `timeout_s`; True when all of them were."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._closing = True
            self._cond.notify()
            while self._lines or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _drop(self, count: int) -> None:
        # Called with self._cond held.
        self._dropped += count
        self._dropped_total += count

    def _run(self) -> None:
        ok = True
        while True:
            with self._cond:
                while not self._lines and not self._closing:
                    self._cond.wait()
                # Closing: the queue is empty; one last batch only to report drops, once.
                if not self._lines and (not self._dropped or not ok):
                    break
                batch = b"".join(self._lines)
                count = len(self._lines)
                self._lines.clear()
                self._queued = 0
                dropped, self._dropped = self._dropped, 0
                self._busy = True
            if dropped:
                note = f"authsidecar: {dropped} log lines dropped (log output not keeping up)\n"
                batch = note.encode() + batch
            ok = self._write_all(batch)
            with self._cond:
                self._busy = False
                if not ok:
                    self._dropped += dropped  # the note was lost too: report it next time
                    self._drop(count)
                self._cond.notify_all()
        os.close(self._fd)

    def _write_all(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except OSError:  # the reader is gone (EPIPE) or the stream is unusable
                return False
            view = view[written:]
        return True


def fd_of(stream: TextIO) -> int | None:
    """The stream's file descriptor, or None when it has none (a test's in-memory stream)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
