"""A key set on disk: configured key files, a key directory, and its `keyset.json` manifest.

The directory is the unit an operator rotates (docs/keys.md): one file per key, plus a
manifest naming the one signing key; every other key verifies only. Promoting a key is one
edit of the manifest, so a rotation step never needs a config change or a restart:

    keyset.json   {"signing_kid": "2026-03"}          (or null: a verification-only sidecar)
    2026-01.jwk.json  2026-03.jwk.json  partner.pem    (any *.json, *.jwk, *.pem)

A mounted Kubernetes Secret is such a directory, updated by an atomic swap of its `..data`
symlink. Files starting with "." (`..data`, `..2026_03_01...`, temporary files) are skipped;
the key files themselves are symlinks into `..data` and are followed. A read is retried when
`..data` changed while it ran, so a snapshot never mixes two generations of the Secret.

`read_key_set` returns the bytes it read with their fingerprint; `build_ring` parses exactly
those bytes. A reload therefore compares fingerprints without parsing, and never parses a
file that changed after it was fingerprinted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import KeyMaterialError
from sidecar.keys.generate import write_key_file
from sidecar.keys.loader import load_key_data, read_key_file, strict_json
from sidecar.keys.material import KeyMaterial
from sidecar.keys.options import KeyFile
from sidecar.keys.ring import KeyRing

__all__ = [
    "KEY_SUFFIXES",
    "MANIFEST_NAME",
    "KeySetSnapshot",
    "KeySource",
    "build_ring",
    "directory_key_files",
    "load_key_set",
    "read_key_set",
    "read_manifest",
    "write_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "keyset.json"
KEY_SUFFIXES = (".json", ".jwk", ".pem")
_KUBERNETES_DATA = "..data"
_READ_ATTEMPTS = 3


@dataclass(frozen=True)
class KeySource:
    """Where the keys come from: explicit files (with kid/alg for PEM) and/or a directory."""

    files: tuple[KeyFile, ...] = ()
    directory: Path | None = None
    # Used only when the directory has no manifest.
    signing_kid: str | None = None


@dataclass(frozen=True)
class KeySetSnapshot:
    """The raw inputs of one read: (label, bytes, kid, alg) per file, and the manifest."""

    entries: tuple[tuple[str, bytes, str | None, str | None], ...]
    manifest: bytes | None
    fingerprint: str


def directory_key_files(directory: Path) -> list[Path]:
    """The key files of `directory`, sorted by name (the manifest and dotfiles excluded)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise KeyMaterialError(f"{directory}: cannot list key directory ({exc.strerror})") from exc
    return [
        directory / name
        for name in names
        if not name.startswith(".")
        and name != MANIFEST_NAME
        and name.endswith(KEY_SUFFIXES)
        and (directory / name).is_file()
    ]


def _generation(directory: Path) -> str | None:
    with contextlib.suppress(OSError):
        return os.readlink(directory / _KUBERNETES_DATA)
    return None


def _read_once(source: KeySource) -> KeySetSnapshot:
    entries = [(str(f.path), read_key_file(f.path), f.kid, f.alg) for f in source.files]
    manifest: bytes | None = None
    if source.directory is not None:
        for path in directory_key_files(source.directory):
            entries.append((str(path), read_key_file(path), None, None))
        manifest_path = source.directory / MANIFEST_NAME
        if manifest_path.exists():
            manifest = read_key_file(manifest_path)
    digest = hashlib.sha256()
    for label, data, kid, alg in entries:
        for part in (label.encode(), data, (kid or "").encode(), (alg or "").encode()):
            digest.update(len(part).to_bytes(8, "big") + part)
    digest.update(b"manifest:" + (manifest if manifest is not None else b"\x00none"))
    digest.update(b"config-signing:" + (source.signing_kid or "").encode())
    return KeySetSnapshot(tuple(entries), manifest, digest.hexdigest())


def read_key_set(source: KeySource) -> KeySetSnapshot:
    """Read every input once; retried while a Kubernetes `..data` swap happens under us."""
    if source.directory is None:
        return _read_once(source)
    for _ in range(_READ_ATTEMPTS):
        before = _generation(source.directory)
        snapshot = _read_once(source)
        if _generation(source.directory) == before:
            return snapshot
    raise KeyMaterialError(f"{source.directory}: key directory kept changing while being read")


def read_manifest(data: bytes, name: str = MANIFEST_NAME) -> str | None:
    """The signing kid a manifest names (None: no key signs). Unknown members are refused."""
    try:
        doc = strict_json(data.decode("utf-8"))
    except (KeyMaterialError, UnicodeDecodeError) as exc:
        raise KeyMaterialError(f"{name}: not a valid JSON object") from exc
    if not isinstance(doc, dict) or "signing_kid" not in doc:
        raise KeyMaterialError(f'{name}: must be a JSON object with "signing_kid"')
    if not set(doc) <= {"signing_kid", "promoted_at"}:
        raise KeyMaterialError(f'{name}: only "signing_kid" and "promoted_at" are allowed')
    kid = doc["signing_kid"]
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise KeyMaterialError(f"{name}: signing_kid must be a non-empty string or null")
    return kid


def build_ring(snapshot: KeySetSnapshot, source: KeySource) -> KeyRing:
    """Parse a snapshot into a ring; any problem is a `KeyMaterialError` naming the file."""
    keys: list[KeyMaterial] = []
    for label, data, kid, alg in snapshot.entries:
        keys.extend(load_key_data(data, name=label, kid=kid, alg=alg))
    if not keys:
        where = source.directory if source.directory is not None else "keys.files"
        raise KeyMaterialError(f"{where}: no keys found; an empty key set is never loaded")
    signing_kid = source.signing_kid
    if snapshot.manifest is not None:
        assert source.directory is not None  # noqa: S101 - a manifest comes from a directory
        signing_kid = read_manifest(snapshot.manifest, str(source.directory / MANIFEST_NAME))
        if signing_kid is None:
            return _verification_only(keys)
    return KeyRing(keys, signing_kid=signing_kid)


def _verification_only(keys: Sequence[KeyMaterial]) -> KeyRing:
    # "signing_kid": null promises that nothing signs: a private key would contradict it.
    if any(key.can_sign for key in keys):
        raise KeyMaterialError(
            f"{MANIFEST_NAME}: signing_kid is null but the directory holds private keys; "
            "name the signing key or keep only public keys"
        )
    return KeyRing(keys)


def load_key_set(source: KeySource) -> tuple[KeyRing, str]:
    """Read and build once: the ring and the fingerprint of what it was built from."""
    snapshot = read_key_set(source)
    return build_ring(snapshot, source), snapshot.fingerprint


def write_manifest(directory: Path, signing_kid: str | None, promoted_at: int) -> None:
    """Replace `keyset.json` atomically (write + fsync + rename in the same directory)."""
    write_key_file(
        directory / MANIFEST_NAME, {"signing_kid": signing_kid, "promoted_at": promoted_at}
    )
