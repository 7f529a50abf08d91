"""A copy of a sidecar's revocation mirror kept in Redis, so a new pod (no local snapshot)
starts like a restart (issue 16: first start at 1M under 2 s on Redis too).

The value is the local snapshot file's bytes as they are (tokens/revocation_snapshot.py:
header with epoch and feed cursor, records, horizons, BLAKE2b digest), ~30 bytes per live
revocation: the reader checks it exactly as it checks a file, so nothing here has to be
trusted beyond what the store itself is.

Keys, under a hash tag of their own, `{p:snapshot}` (`KeyLayout.snapshot_tag`): the copy is
read and written by no script together with a partition's keys, so it need not share their
slot, and its own tag puts the staging key, the copy and the lease in one slot, which the
final RENAME (and the script around it) needs in a Cluster:

    {p:snapshot}:data        string  the copy; expires FEED_TTL_S after it was written (past
                                     that the feed it must be followed by may be gone)
    {p:snapshot}:lease       string  the writer of this interval, SET with PX
    {p:snapshot}:tmp:<hex>   string  a copy being written (expires by itself if abandoned)

One writer per interval: `write` first takes the lease (set when absent or already ours, for
`every_s`), and publishes its copy only if it still holds the lease (one script: RENAME onto
the copy); a sidecar that does not get it writes nothing. Every transfer is sliced
(`CHUNK_BYTES` per command), so no command comes near the store timeout and the event loop
gets a turn between slices; a copy replaced while being read fails its digest and is ignored.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterator, Sequence

from sidecar.store.redis_driver import Caller
from sidecar.store.redis_keys import KeyLayout

# Bytes per GETRANGE / APPEND: a few milliseconds of transfer on a LAN, far under a timeout.
CHUNK_BYTES = 4 << 20
# A copy being written expires by itself after this long when its writer vanished.
STAGING_TTL_MS = 600_000

# KEYS: lease. ARGV: holder, lease ms. 1 when the lease is (now) the holder's.
_LEASE = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: staging, copy, lease. ARGV: holder, copy ttl ms. Publishes only under the lease.
_PUBLISH = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""


class StoredSnapshot:
    """The snapshot key of one deployment; see the module docstring."""

    def __init__(self, caller: Caller, data: Caller, keys: KeyLayout, *, ttl_s: int) -> None:
        self._caller, self._data = caller, data  # scripts (text), the copy's bytes
        tag = keys.snapshot_tag
        self.key, self._lease_key, self._tag = f"{tag}:data", f"{tag}:lease", tag
        self._ttl_ms = ttl_s * 1000
        self._lease = caller.client.register_script(_LEASE)
        self._publish = caller.client.register_script(_PUBLISH)

    async def read(self) -> bytearray | None:
        """The copy, None when there is none; read in slices into one buffer (a copy
        replaced meanwhile comes out mixed, which its digest refuses)."""
        client = self._data.client
        size = int(await self._data.call(client.strlen(self.key)))
        if size == 0:
            return None
        found = bytearray(size)
        at = 0
        while at < size:
            end = min(at + CHUNK_BYTES, size) - 1
            part = await self._data.call(client.getrange(self.key, at, end))
            if not part:
                break  # shrunk or gone meanwhile: the zeros left fail the digest
            found[at : at + len(part)] = part if isinstance(part, bytes) else part.encode()
            at += len(part)
        return found

    async def write(
        self, make: Callable[[], Awaitable[Sequence[bytes]]], *, holder: str, every_s: float
    ) -> bool:
        """Publish the copy `make` returns when `holder` gets this interval's lease (made
        only then); False when another sidecar holds it (nothing written) or lost it
        meanwhile (its staging key deleted)."""
        lease_ms = max(int(every_s * 1000), 1)
        took = await self._caller.call(self._lease(keys=[self._lease_key], args=[holder, lease_ms]))
        if int(took) != 1:
            return False
        parts = await make()
        staging = f"{self._tag}:tmp:{secrets.token_hex(8)}"
        client = self._data.client
        first = True
        for chunk in _chunks(parts):
            if first:
                await self._data.call(client.set(staging, chunk, px=STAGING_TTL_MS))
                first = False
            else:
                await self._data.call(client.append(staging, chunk))
        if first:
            return False  # nothing to write (never: a copy has a header and a digest)
        keys = [staging, self.key, self._lease_key]
        done = await self._caller.call(self._publish(keys=keys, args=[holder, self._ttl_ms]))
        return int(done) == 1


def _chunks(parts: Sequence[bytes]) -> Iterator[memoryview]:
    """`parts` cut into slices of at most CHUNK_BYTES, without copying them (a part shorter
    than that is one slice of its own: a few more commands, no copy)."""
    for part in parts:
        view = memoryview(part)
        for at in range(0, len(view), CHUNK_BYTES):
            yield view[at : at + CHUNK_BYTES]
