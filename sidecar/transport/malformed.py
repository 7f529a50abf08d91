"""Request messages that do not parse: a marker instead of grpc's exception.

grpc.aio runs the handler's `request_deserializer` before any handler code; when it raises,
grpc answers UNKNOWN with the exception's text ("Unexpected <class 'DecodeError'>: Error
parsing message ...") and logs a traceback, once per request. The handlers are therefore
registered with `tolerant(deserializer)`, which returns `MALFORMED` where the parser raises;
the call layers' guard (transport/guard.py) refuses it INVALID_ARGUMENT / INVALID_REQUEST
and notes it in `malformed_log()`, one line a minute at most.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sidecar.transport.ratelimit import RateLimitedLog

__all__ = ["MALFORMED", "malformed_log", "tolerant"]

log = logging.getLogger(__name__)


class _Malformed:
    """The request the tolerant deserializer hands over when the bytes do not parse."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MALFORMED"


MALFORMED = _Malformed()


def malformed_log() -> RateLimitedLog:
    """The log budget for unparseable requests: one per process, shared by its servers."""
    return RateLimitedLog(log, "request(s) refused because the message did not parse")


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning `MALFORMED` where it would raise."""
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # any parser failure (DecodeError, invalid UTF-8, ...) is bad input
            return MALFORMED

    return deserialize
