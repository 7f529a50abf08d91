"""Generated keys: every algorithm, hygiene-clean, round-trip through their files."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest

from sidecar.errors import KeyMaterialError
from sidecar.jwa import HEADER_NAMES as SUPPORTED_ALGS
from sidecar.keys.generate import RSA_BITS, generate_key, write_key_file
from sidecar.keys.loader import load_key_file, parse_jwk
from sidecar.keys.material import KeyMaterial

Generated = dict[str, tuple[KeyMaterial, dict[str, Any]]]


@pytest.fixture(scope="module")
def generated() -> Generated:
    # RS512 makes a 4096-bit key (about a second): generate each algorithm once per module.
    return {alg: generate_key(alg) for alg in sorted(SUPPORTED_ALGS)}


@pytest.mark.parametrize("alg", sorted(SUPPORTED_ALGS))
def test_generated_key_signs_and_its_jwks_verify(alg: str, generated: Generated) -> None:
    key, jwk = generated[alg]
    assert key.alg == alg and key.can_sign and jwk["alg"] == alg and jwk["use"] == "sig"
    signature = key.sign(b"signing input")
    reloaded = parse_jwk(jwk)
    assert reloaded.can_sign and reloaded.thumbprint == key.thumbprint
    assert reloaded.verify(b"signing input", signature)
    if not key.symmetric:
        public = parse_jwk(key.public_jwk() or {})
        assert not public.can_sign and public.verify(b"signing input", signature)


@pytest.mark.parametrize("alg", sorted(RSA_BITS))
def test_rsa_key_size_grows_with_hash(alg: str, generated: Generated) -> None:
    n = base64.urlsafe_b64decode(generated[alg][1]["n"] + "==")
    assert int.from_bytes(n, "big").bit_length() == RSA_BITS[alg]


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_asymmetric_kid_defaults_to_rfc7638_thumbprint(alg: str, generated: Generated) -> None:
    key, jwk = generated[alg]
    assert key.kid == key.thumbprint == jwk["kid"]


def test_hmac_kid_defaults_to_random_value_not_derived_from_secret() -> None:
    first, second = generate_key("HS256")[0], generate_key("HS256")[0]
    assert first.kid != second.kid
    assert first.kid != first.thumbprint


def test_explicit_kid_is_used() -> None:
    key, jwk = generate_key("ES384", kid="2026-01")
    assert key.kid == jwk["kid"] == "2026-01"


@pytest.mark.parametrize("alg", ["none", "PS257", "Ed448", "ES256K", "hs256"])
def test_unsupported_algorithm_is_refused(alg: str) -> None:
    with pytest.raises(KeyMaterialError, match="cannot generate"):
        generate_key(alg)


def test_write_key_file_is_owner_only_and_loads_back(tmp_path: Path, generated: Generated) -> None:
    key, jwk = generated["ES256"]
    path = tmp_path / "new" / "dir" / "signing.jwk.json"
    write_key_file(path, jwk)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    [loaded] = load_key_file(path)
    assert loaded.kid == key.kid and loaded.can_sign
    assert key.verify(b"m", loaded.sign(b"m"))


def test_write_key_file_replaces_atomically_leaving_no_temp_files(
    tmp_path: Path, generated: Generated
) -> None:
    path = tmp_path / "k.json"
    path.write_text("old")
    path.chmod(0o644)
    write_key_file(path, generated["HS384"][1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]
    assert load_key_file(path)[0].alg == "HS384"
