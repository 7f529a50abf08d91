"""Key directories: manifest, Kubernetes Secret layout, and the rotate/promote/retire steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sidecar.errors import KeyMaterialError
from sidecar.keys import rotation
from sidecar.keys.keyset import KeySource, load_key_set, read_manifest, write_manifest
from sidecar.keys.ring import KeyRing
from sidecar.keys.watch import KeyWatcher
from tests.support.keys import make_private_jwk, write_jwk_file


def _secret_generation(volume: Path, name: str, files: dict[str, str]) -> None:
    """What the kubelet does: write a new hidden generation, then swap `..data` atomically."""
    generation = volume / name
    generation.mkdir()
    for file, content in files.items():
        (generation / file).write_text(content)
        if not (volume / file).is_symlink():
            (volume / file).symlink_to(Path("..data") / file)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(name)
    os.replace(tmp, volume / "..data")


def test_kubernetes_secret_symlink_swap_is_picked_up_by_content(tmp_path: Path) -> None:
    k1 = json.dumps(make_private_jwk("ES256", "k1"))
    k2 = json.dumps(make_private_jwk("EdDSA", "k2"))
    manifest = json.dumps({"signing_kid": "k1"})
    _secret_generation(tmp_path, "..2026_01", {"k1.json": k1, "keyset.json": manifest})
    source = KeySource(directory=tmp_path)
    ring, fingerprint = load_key_set(source)
    swapped: list[KeyRing] = []
    watcher = KeyWatcher(
        source, ring=ring, fingerprint=fingerprint, on_change=swapped.append, interval_s=0
    )
    assert not watcher.reload_now()
    promoted = json.dumps({"signing_kid": "k2"})
    _secret_generation(
        tmp_path, "..2026_02", {"k1.json": k1, "k2.json": k2, "keyset.json": promoted}
    )
    assert watcher.reload_now()
    assert sorted(k.kid for k in swapped[-1].keys) == ["k1", "k2"]
    assert swapped[-1].signing_key is not None and swapped[-1].signing_key.kid == "k2"


def test_manifest_wins_over_configured_signing_kid(tmp_path: Path) -> None:
    write_jwk_file(tmp_path, "ES256", "a")
    write_jwk_file(tmp_path, "ES256", "b")
    write_manifest(tmp_path, "b", 0)
    ring, _ = load_key_set(KeySource(directory=tmp_path, signing_kid="a"))
    assert ring.signing_key is not None and ring.signing_key.kid == "b"


def test_dotfiles_other_suffixes_and_the_manifest_are_not_keys(tmp_path: Path) -> None:
    write_jwk_file(tmp_path, "ES256", "a")
    (tmp_path / ".a.jwk.json.tmp").write_text("{partial")
    (tmp_path / "README.txt").write_text("not a key")
    ring, _ = load_key_set(KeySource(directory=tmp_path))
    assert [k.kid for k in ring.keys] == ["a"]


@pytest.mark.parametrize(
    "manifest",
    [b"[]", b"{}", b'{"signing_kid": 1}', b'{"signing_kid": ""}', b'{"signing_kid": "a", "x": 1}'],
)
def test_malformed_manifest_is_refused(manifest: bytes) -> None:
    with pytest.raises(KeyMaterialError, match="keyset.json"):
        read_manifest(manifest)


def test_null_signing_kid_with_private_keys_is_refused(tmp_path: Path) -> None:
    write_jwk_file(tmp_path, "ES256", "a")
    write_manifest(tmp_path, None, 0)
    with pytest.raises(KeyMaterialError, match="signing_kid is null"):
        load_key_set(KeySource(directory=tmp_path))


def test_rotate_promote_retire_walks_the_runbook(tmp_path: Path) -> None:
    write_jwk_file(tmp_path, "ES256", "old")
    kid, view = rotation.publish_next(tmp_path, "EdDSA", "new", now=1)
    assert (kid, view.signing_kid, view.kids) == ("new", "old", ("new", "old"))
    with pytest.raises(KeyMaterialError, match="promote its successor"):
        rotation.retire(tmp_path, "old", now=1, wait_s=0)
    previous, view = rotation.promote(tmp_path, "new", now=2)
    assert (previous, view.signing_kid) == ("old", "new")
    assert json.loads((tmp_path / "keyset.json").read_text())["promoted_at"] == 2
    view = rotation.retire(tmp_path, "old", now=2 + 3600, wait_s=3600)
    assert (view.signing_kid, view.kids) == ("new", ("new",))
    assert not (tmp_path / "old.jwk.json").exists()


def test_retire_waits_until_the_old_keys_last_token_expired_unless_forced(
    tmp_path: Path,
) -> None:
    """docs/keys.md step 3: the old key stopped signing at the promotion (`promoted_at`),
    so its tokens may be valid until `wait_s` after it; retiring it earlier would refuse
    them. --force (a compromised key) skips the wait."""
    write_jwk_file(tmp_path, "ES256", "old")
    rotation.publish_next(tmp_path, "ES256", "new", now=1)
    rotation.promote(tmp_path, "new", now=1000)
    with pytest.raises(KeyMaterialError, match=r"unexpired tokens.*in 1s, or now with --force"):
        rotation.retire(tmp_path, "old", now=1000 + 3599, wait_s=3600)
    assert (tmp_path / "old.jwk.json").exists()
    view = rotation.retire(tmp_path, "old", now=1000 + 3599, wait_s=3600, force=True)
    assert view.kids == ("new",)


def test_retire_enforces_no_wait_where_the_directory_records_no_promotion(
    tmp_path: Path,
) -> None:
    """Without a `promoted_at` the directory says nothing about when a key stopped signing."""
    write_jwk_file(tmp_path, "ES256", "old")
    write_jwk_file(tmp_path, "ES256", "new")
    (tmp_path / "keyset.json").write_text(json.dumps({"signing_kid": "new"}))
    view = rotation.retire(tmp_path, "old", now=0, wait_s=3600)
    assert view.kids == ("new",)


def test_promote_refuses_unknown_or_public_only_keys(tmp_path: Path) -> None:
    write_jwk_file(tmp_path, "ES256", "a")
    public = {k: v for k, v in make_private_jwk("ES256", "pub").items() if k != "d"}
    (tmp_path / "pub.jwk.json").write_text(json.dumps(public))
    with pytest.raises(KeyMaterialError, match="publish it first"):
        rotation.promote(tmp_path, "missing", now=0)
    with pytest.raises(KeyMaterialError, match="verification-only"):
        rotation.promote(tmp_path, "pub", now=0)
