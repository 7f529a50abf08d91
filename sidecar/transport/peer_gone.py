"""Streams whose caller went away while a response was being sent: one line a minute, no trace.

A streaming handler's responses are written by grpc.aio itself (for an async generator, in
`_finish_handler_with_stream_responses`), not by our code. When the caller stops reading, the
write waits on HTTP/2 flow control; when the caller then cancels the call or its process
dies, the write fails, and if that failure reaches grpc before the cancellation does, grpc
logs `ExecuteBatchError raised in core by servicer method [...]` at ERROR with a traceback
(grpc/_cython/_cygrpc/aio/server.pyx.pxi, `_handle_exceptions`): once per stream, at the will
of any local caller (a VerifyStream client that never reads, then cancels). Nothing failed on
our side and no answer can reach that caller any more, so `install()` puts a filter on grpc's
logger that turns exactly those records into a `RateLimitedLog` note (the method name only)
and lets every other record through.
"""

from __future__ import annotations

import logging

from sidecar.transport.ratelimit import RateLimitedLog

__all__ = ["PeerGoneFilter", "install"]

GRPC_LOGGER = "grpc._cython.cygrpc"
_PREFIX = "ExecuteBatchError raised in core by servicer method ["

log = logging.getLogger(__name__)


class PeerGoneFilter(logging.Filter):
    """Drops grpc's per-stream ExecuteBatchError record after counting it in `notes`."""

    def __init__(self, notes: RateLimitedLog) -> None:
        super().__init__()
        self.notes = notes

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or type(exc).__name__ != "ExecuteBatchError":
            return True
        message = record.getMessage()
        if not message.startswith(_PREFIX):
            return True
        self.notes.note(message[len(_PREFIX) :].rstrip("]"))
        return False


def install() -> PeerGoneFilter:
    """Put the filter on grpc's logger once per process (a second call returns the first)."""
    grpc_log = logging.getLogger(GRPC_LOGGER)
    for existing in grpc_log.filters:
        if isinstance(existing, PeerGoneFilter):
            return existing
    installed = PeerGoneFilter(
        RateLimitedLog(log, "stream(s) ended by a caller that went away while a response was sent")
    )
    grpc_log.addFilter(installed)
    return installed
