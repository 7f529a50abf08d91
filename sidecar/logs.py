"""Logging set-up: the classic text line, or one JSON object per line, with the request id.

Audit records (`sidecar.transport.audit`) carry their fields in `record.audit`; both formats
print them. What reaches a log is only what the code put there: tokens, keys and secrets are
never passed to a logger (a test checks a whole issue/verify/refresh/revoke run).

Where the lines go: stderr (the banner: stdout) through sidecar/log_writer.py, so a log reader
that stalls or goes away never blocks the event loop or the stop, and never ends the sidecar.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal, TextIO

from sidecar.calls import current_call
from sidecar.log_writer import LineWriter, fd_of

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def _request_id() -> str | None:
    call = current_call.get()
    return call.request_id if call is not None else None


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", "request_id"?, <audit fields>?, "exc"?}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or _request_id()
        if request_id:
            entry["request_id"] = request_id
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):
            for key, value in audit.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, plus ` request_id=...` and audit fields as `key=value` (repr'd)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras: list[str] = []
        audit = getattr(record, "audit", None)
        fields: dict[str, Any] = dict(audit) if isinstance(audit, dict) else {}
        # An audit record carries the request id among its fields too: print it once
        # (issue 14: the text line showed `request_id=` twice).
        audit_request_id = fields.pop("request_id", None)
        request_id = getattr(record, "request_id", None) or _request_id() or audit_request_id
        if request_id:
            extras.append(f"request_id={request_id}")
        extras.extend(f"{key}={value!r}" for key, value in fields.items())
        return f"{line} {' '.join(extras)}" if extras else line


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class QueuedLineHandler(logging.Handler):
    """Formats in the caller's thread (the request id is a context variable there), then only
    queues the line: the write happens on the LineWriter's thread."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a bad record must not reach the caller (logging's own rule)
            self.handleError(record)
            return
        self.writer.write(line)

    def close(self) -> None:
        self.writer.close()
        super().close()


_writers: dict[int, LineWriter] = {}


def _handler_for(stream: TextIO) -> logging.Handler:
    fd = fd_of(stream)
    if fd is None:  # an in-memory stream cannot block: write it directly
        return logging.StreamHandler(stream)
    if fd not in _writers:
        _writers[fd] = LineWriter(fd)
    return QueuedLineHandler(_writers[fd])


def configure_logging(level: str, log_format: Literal["text", "json"]) -> None:
    """One stderr handler on the root logger, in the configured format (replacing any)."""
    handler = _handler_for(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def announce(line: str) -> None:
    """One line on stdout (the serving banner) that can neither block nor raise: a harness
    or supervisor that stopped reading stdout must not stall or end the sidecar."""
    fd = fd_of(sys.stdout)
    if fd is None:
        print(line, flush=True)
        return
    if fd not in _writers:
        _writers[fd] = LineWriter(fd)
    _writers[fd].write(line)


def close_output() -> None:
    """Let queued lines out, each stream for a bounded time (log_writer.CLOSE_WAIT_S): the
    process exits on time even when nobody reads its output."""
    while _writers:
        _, writer = _writers.popitem()
        writer.close()
