"""Whether the store keeps its data across a restart, and one warning line when it does not.

Revocations survive a store restart without persistence only in running sidecars (they write
back what the store lost, tokens/store_sync.py); refresh families do not survive at all. So
the sidecar reads the store's persistence mode (`TokenStore.persistence`) at start and on
every poll, and warns once per change to a mode that loses data.
"""

from __future__ import annotations

import logging

from sidecar.store.base import TokenStore

log = logging.getLogger("sidecar.tokens.store_sync")  # where operators have always seen it

# What each risky persistence mode loses when the store restarts; other modes are fine.
RISKY_PERSISTENCE = {
    "none": "Redis keeps nothing on disk: a restart loses every refresh family, and revocations"
    " survive only in running sidecars",
    "rdb": "Redis saves snapshots only: a restart loses every write since the last one",
    "aof-no": "Redis AOF without fsync (appendfsync no): a host crash loses the writes the OS"
    " had not flushed (up to ~30 s)",
    "unknown": "Redis will not say how it persists (CONFIG refused or renamed)",
}


async def check_persistence(store: TokenStore, previous: str) -> str:
    """The store's persistence mode now; warns (one line) when it differs from `previous`
    and is a risky one."""
    mode = await store.persistence()
    if mode != previous and mode in RISKY_PERSISTENCE:
        log.warning(
            "token store persistence=%s: %s; production needs appendonly yes with"
            " appendfsync everysec or always (docs/operations.md)",
            mode,
            RISKY_PERSISTENCE[mode],
        )
    return mode
