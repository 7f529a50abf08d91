"""A warning logged at most once per interval, with the count of what it covers.

For events any caller can trigger at will (a request that does not parse, a token whose
claims a response cannot carry): one line per event would let a local caller flood the log,
so the first is logged at once and the rest are counted into the next line, at most one per
`interval_s`. Metrics still count every one (by reason).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """`note(subject)` logs "<count> <what>, latest: <subject>" at most once per interval.

    `subject` must be ours to print (a method name, a reason code): never request bytes,
    token text or exception text.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self._logger = logger
        self._what = what
        self._clock = clock
        self._count = 0
        self._last: float | None = None

    def note(self, subject: str) -> None:
        self._count += 1
        now = self._clock()
        if self._last is not None and now - self._last < self.interval_s:
            return
        self._logger.warning(
            "%d %s, latest: %s (at most one such line per %.0f s)",
            self._count,
            self._what,
            subject,
            self.interval_s,
        )
        self._count = 0
        self._last = now
