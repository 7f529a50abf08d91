"""Per-call context: the request id, method and caller of the RPC being served, and its outcome.

The observing call layer (transport/metrics.py) opens a `CallInfo` for every call and puts it
in a ContextVar; handlers record the refusal reason on it, the log formatter reads the request
id from it, and the layer labels its metrics with the reason when the call ends. A ContextVar,
not a parameter, because the log formatter and the error boundary sit far apart.
"""

from __future__ import annotations

import contextvars
import re
import secrets
from dataclasses import dataclass

# A caller-supplied id is kept only if it is short and plain, so it cannot forge log lines.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


@dataclass(slots=True)
class CallInfo:
    request_id: str
    method: str
    peer: str
    # The AuthSidecarError reason of a refused call ("" while the call is fine).
    reason: str = ""
    # What the domain did, in its own words (tokens/refresh.py: rotated, grace, reused,
    # revoked), so metrics count outcomes instead of guessing them; "" when not reported.
    outcome: str = ""


current_call: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "authsidecar_call", default=None
)


def request_id_from(supplied: str | None) -> str:
    """The caller's `x-request-id` when it is well formed, else a fresh random one."""
    if supplied and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return secrets.token_hex(8)


def record_reason(reason: str) -> None:
    """Note why the current call was refused, for its metrics and access log."""
    call = current_call.get()
    if call is not None:
        call.reason = reason


def record_outcome(outcome: str) -> None:
    """Note what the domain decided for the current call (issue 12), for its metrics."""
    call = current_call.get()
    if call is not None:
        call.outcome = outcome
