"""Logging set-up: the classic text line, or one JSON object per line, with the request id.

Audit records (`sidecar.transport.audit`) carry their fields in `record.audit`; both formats
print them. What reaches a log is only what the code put there: tokens, keys and secrets are
never passed to a logger (a test checks a whole issue/verify/refresh/revoke run).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

from sidecar.calls import current_call

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


def configure_logging(level: str, log_format: Literal["text", "json"]) -> None:
    """One stderr handler on the root logger, in the configured format (replacing any)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
