"""Reload the key set without a restart and without failing a call.

Every `interval_s` (and at once on SIGHUP, `request_reload`) the key files, the key directory
and its manifest are read and fingerprinted (`keyset.read_key_set`). An unchanged fingerprint
costs a few small reads and nothing else; a changed one builds a new `KeyRing` and hands it
to `on_change` (`TokenService.replace_ring`: one attribute store, so a call sees the old
ring or the new one, never a mix).

Why polling and not inotify: a Kubernetes Secret volume is updated by re-pointing its
`..data` symlink; a watch on a key file's inode never fires, and a watch on the directory
sees a rename of a hidden entry. Re-reading the resolved content every few seconds is
correct for every way a file can change (editor, `mv`, symlink swap, network file system),
needs no dependency, and costs microseconds for a handful of small files.

A key set that does not load (bad JSON, weak key, unknown signing kid, an empty directory,
or one that would drop the signing key while the current set has one) is refused: one
ERROR log line naming the file and the problem (never key material), `status.failures`
counts it, and the last good ring stays in force. The same broken input is not retried or
logged again until it changes (or SIGHUP forces a retry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.errors import KeyMaterialError
from sidecar.keys.keyset import KeySource, build_ring, read_key_set
from sidecar.keys.ring import KeyRing

__all__ = ["KeyWatcher", "ReloadStatus"]

log = logging.getLogger("authsidecar.keys")


@dataclass
class ReloadStatus:
    """What the last reloads did; read by tests, health and metrics."""

    version: str
    reloads: int = 0  # key sets swapped in
    failures: int = 0  # key sets refused (the last good one stayed)
    last_error: str | None = None  # None after a successful or unchanged read

    @property
    def healthy(self) -> bool:
        return self.last_error is None


class KeyWatcher:
    def __init__(
        self,
        source: KeySource,
        *,
        ring: KeyRing,
        fingerprint: str,
        on_change: Callable[[KeyRing], None],
        interval_s: float,
    ) -> None:
        self._source = source
        self._ring = ring
        self._seen = fingerprint  # the last input tried, good or bad
        self._on_change = on_change
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self.status = ReloadStatus(version=ring.version)

    @property
    def ring(self) -> KeyRing:
        return self._ring

    def request_reload(self) -> None:
        """SIGHUP: re-read now, even if the inputs look unchanged."""
        self._wake.set()

    def reload_now(self, *, force: bool = False) -> bool:
        """Re-read the inputs; True when a new ring was swapped in. Never raises for bad keys."""
        try:
            snapshot = read_key_set(self._source)
        except KeyMaterialError as exc:
            return self._is_new(f"unreadable: {exc}", force) and self._refuse(exc)
        if not self._is_new(snapshot.fingerprint, force):
            return False
        try:
            ring = build_ring(snapshot, self._source)
            self._check_succession(ring)
        except KeyMaterialError as exc:
            return self._refuse(exc)
        self.status.last_error = None
        if ring.version == self._ring.version and _signer(ring) == _signer(self._ring):
            return False  # same keys, same signer: e.g. a file rewritten with equal content
        self._swap(ring)
        return True

    def _is_new(self, fingerprint: str, force: bool) -> bool:
        new = force or fingerprint != self._seen
        self._seen = fingerprint
        return new

    def _refuse(self, exc: KeyMaterialError) -> bool:
        self.status.failures += 1
        self.status.last_error = str(exc)
        # The message is the diagnosis (file, kid, member; never key material): no traceback.
        log.error("key reload refused, keeping key set %s: %s", self._ring.version, exc)
        return False

    def _check_succession(self, ring: KeyRing) -> None:
        if self._ring.signing_key is not None and ring.signing_key is None:
            raise KeyMaterialError(
                "the new key set has no signing key; name one in keyset.json or keys.signing_kid"
            )

    def _swap(self, ring: KeyRing) -> None:
        old = self._ring
        self._on_change(ring)
        self._ring = ring
        self.status.reloads += 1
        self.status.version = ring.version
        old_signer, new_signer = _signer(old), _signer(ring)
        log.info(
            "key set reloaded: version %s -> %s, kids=%s, signing_kid=%s",
            old.version,
            ring.version,
            sorted(key.kid for key in ring.keys),
            new_signer,
        )
        if old_signer is not None and old_signer != new_signer and old_signer not in ring:
            log.warning(
                "previous signing key %r was removed in the same reload that replaced it: "
                "tokens it signed are refused from now on",
                old_signer,
            )

    async def run(self) -> None:
        """Poll until cancelled; file reads and key parsing run off the event loop."""
        while True:
            timeout = self._interval_s if self._interval_s > 0 else None
            forced = False
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                forced = True
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await asyncio.to_thread(self.reload_now, force=forced)
            except Exception:  # noqa: BLE001 - a watcher bug must not stop future reloads
                log.exception("key reload failed unexpectedly; keeping the current key set")


def _signer(ring: KeyRing) -> str | None:
    # The version names the set of keys, not which one signs: a promotion keeps the version.
    return ring.signing_key.kid if ring.signing_key is not None else None
