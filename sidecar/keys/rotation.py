"""The three rotation steps on a key directory: publish the next key, promote it, retire the old.

Each step checks that the directory loads before and after it (the same `build_ring` the
sidecar's reload uses), and writes atomically, so a sidecar watching the directory sees
either the old set or the new one, and the new one always loads. See docs/keys.md for when
to run each step (the overlaps are what make rotation invisible to callers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import KeyMaterialError
from sidecar.keys.generate import generate_key, write_key_file
from sidecar.keys.keyset import (
    MANIFEST_NAME,
    KeySource,
    directory_key_files,
    load_key_set,
    write_manifest,
)
from sidecar.keys.loader import load_key_file, strict_json
from sidecar.keys.ring import KeyRing

__all__ = ["KeySetView", "describe", "init", "promote", "publish_next", "retire"]


@dataclass(frozen=True)
class KeySetView:
    """What an operator needs to see of a key directory."""

    directory: Path
    version: str
    signing_kid: str | None
    kids: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "directory": str(self.directory),
            "version": self.version,
            "signing_kid": self.signing_kid,
            "kids": list(self.kids),
        }


def _load(directory: Path) -> KeyRing:
    if not directory.is_dir() or not directory_key_files(directory):
        # The first key is not a rotation: say which command makes it (issue 14).
        raise KeyMaterialError(
            f"{directory}: no key yet; create the first signing key with: "
            f"authsidecar keys init --dir {directory}"
        )
    ring, _ = load_key_set(KeySource(directory=directory))
    return ring


def init(directory: Path, alg: str, kid: str | None = None, *, now: int) -> KeySetView:
    """The first key of an empty (or missing) key directory, signing from the start.

    Writes the key (0600, directory 0700 when created) and a `keyset.json` naming it, so
    the directory is ready for `keys.directory` and for the rotation steps. Refused when the
    directory already holds a key: a second key is `publish_next`'s job, with its overlap.
    """
    if directory.is_dir() and directory_key_files(directory):
        raise KeyMaterialError(
            f"{directory} already holds keys; publish the next one with: "
            f"authsidecar keys rotate --dir {directory}"
        )
    key, jwk = generate_key(alg, kid)
    write_key_file(directory / f"{key.kid}.jwk.json", jwk)
    write_manifest(directory, key.kid, now)
    return describe(directory)


def _promoted_at(directory: Path) -> int | None:
    """When the manifest says the signing key was promoted (Unix seconds), if it says."""
    try:
        doc = strict_json((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyMaterialError(f"{directory / MANIFEST_NAME}: cannot read it") from exc
    value = doc.get("promoted_at") if isinstance(doc, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def describe(directory: Path) -> KeySetView:
    ring = _load(directory)
    signing = ring.signing_key.kid if ring.signing_key is not None else None
    return KeySetView(directory, ring.version, signing, tuple(sorted(k.kid for k in ring.keys)))


def publish_next(
    directory: Path, alg: str, kid: str | None = None, *, now: int
) -> tuple[str, KeySetView]:
    """Add a fresh private key that verifies but does not sign yet; returns its kid.

    With no manifest yet, one naming the current signing key is written first, so the
    directory never holds two signers without saying which one signs.
    """
    current = _load(directory)
    if not (directory / MANIFEST_NAME).exists():
        signing = current.signing_key.kid if current.signing_key is not None else None
        write_manifest(directory, signing, now)
    key, jwk = generate_key(alg, kid)
    if key.kid in current:
        raise KeyMaterialError(f"key {key.kid!r} is already in {directory}")
    path = directory / f"{key.kid}.jwk.json"
    if path.exists():
        raise KeyMaterialError(f"{path} exists; refusing to overwrite a key")
    write_key_file(path, jwk)
    try:
        view = describe(directory)
    except KeyMaterialError:
        path.unlink()
        raise
    return key.kid, view


def promote(directory: Path, kid: str, *, now: int) -> tuple[str | None, KeySetView]:
    """Make `kid` the signing key (one manifest write); returns the previous signing kid."""
    current = _load(directory)
    key = current.get(kid)
    if key is None:
        raise KeyMaterialError(f"key {kid!r} is not in {directory}; publish it first")
    if not key.can_sign:
        raise KeyMaterialError(f"key {kid!r} is verification-only (no private key)")
    previous = current.signing_key.kid if current.signing_key is not None else None
    write_manifest(directory, kid, now)
    return previous, describe(directory)


def retire(directory: Path, kid: str, *, now: int, wait_s: int, force: bool = False) -> KeySetView:
    """Delete the file holding `kid`; refused for the signing key or a multi-key file, and,
    unless `force` (a compromised key), until `wait_s` after the last promotion.

    The wait is docs/keys.md step 3: a key stops signing when its successor is promoted, so
    its last token expires at most `wait_s` (the longest token lifetime plus leeway) after
    the manifest's `promoted_at`. A key that is not the signing key stopped at that
    promotion or earlier, so the check is never too short for any of them (for a key that
    never signed it is too long: `force`). A directory whose manifest records no
    `promoted_at` says nothing about when its keys stopped signing: nothing to enforce.
    """
    current = _load(directory)
    if kid not in current:
        raise KeyMaterialError(f"key {kid!r} is not in {directory}")
    if current.signing_key is not None and current.signing_key.kid == kid:
        raise KeyMaterialError(f"key {kid!r} signs; promote its successor before retiring it")
    promoted_at = _promoted_at(directory)
    if not force and promoted_at is not None and now < promoted_at + wait_s:
        raise KeyMaterialError(
            f"key {kid!r} may still have unexpired tokens: the signing key was promoted at "
            f"{promoted_at}, and tokens live up to {wait_s}s (docs/keys.md, step 3); retire "
            f"it in {promoted_at + wait_s - now}s, or now with --force for a compromised key"
        )
    for path in directory_key_files(directory):
        kids = [key.kid for key in load_key_file(path)]
        if kid in kids:
            if len(kids) > 1:
                raise KeyMaterialError(f"{path} holds several keys; edit it by hand")
            path.unlink()
            return describe(directory)
    raise KeyMaterialError(f"key {kid!r} is not in a file of {directory}")
