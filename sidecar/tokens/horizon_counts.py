"""How many entries of the revocation set end in each minute, so the set can say how many
end after a minute boundary without a scan (`count_from`: the sidecar compares it with the
store's own count to notice a store that lost writes, tokens/store_sync.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


class HorizonCounts:
    """Epoch minute -> how many entries have their horizon in it."""

    def __init__(self) -> None:
        # Read and written directly by the set's bulk paths (one dict operation per entry).
        self.by_minute: dict[int, int] = {}

    def add(self, until: int) -> None:
        minute = until // 60
        self.by_minute[minute] = self.by_minute.get(minute, 0) + 1

    def add_all(self, untils: Iterable[int]) -> None:
        by_minute = self.by_minute
        for minute, n in Counter(map((60).__rfloordiv__, untils)).items():
            by_minute[minute] = by_minute.get(minute, 0) + n

    def remove(self, until: int) -> None:
        minute = until // 60
        left = self.by_minute[minute] - 1
        if left:
            self.by_minute[minute] = left
        else:
            del self.by_minute[minute]

    def count_from(self, minute_start: int) -> int:
        """How many entries have `expires_at >= minute_start` (a multiple of 60)."""
        first = minute_start // 60
        return sum(n for minute, n in self.by_minute.items() if minute >= first)
