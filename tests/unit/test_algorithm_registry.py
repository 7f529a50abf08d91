"""The algorithm registry is the single source of algorithm knowledge (issue 12).

Every row of the table (sidecar/jwa.py) must work end to end through every consumer: key
generation, the JWK loader, signing, the JWS verifier, the published JWKS and an external
issuer's JWKS parser. Every key type must refuse every algorithm of another type, from a key
object, from a JWK and in a token header. Config accepts exactly the table's names. And no
module of `sidecar/` but the table holds its own list of algorithm names or tests a name's
prefix, so a new row cannot be forgotten by one of them.
"""

from __future__ import annotations

import ast
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

import sidecar
from sidecar import jwa
from sidecar.config import load_settings
from sidecar.errors import ConfigError, KeyMaterialError, UnsupportedAlgorithmError
from sidecar.jwa import ALGORITHMS
from sidecar.keys import algorithms
from sidecar.keys.generate import generate_key
from sidecar.keys.issuer_jwks import parse_remote_jwks
from sidecar.keys.loader import load_key_data, parse_jwk
from sidecar.keys.material import KeyMaterial, build_key
from sidecar.keys.ring import KeyRing
from sidecar.tokens.jws import decode_jws
from sidecar.tokens.signing import encode_jws
from tests.support.keys import make_key, make_private_jwk, private_key

CLAIMS: dict[str, Any] = {"iss": "https://issuer.test", "sub": "alice", "exp": 1_700_000_060}
NAMES = list(ALGORITHMS)
KTYS = sorted({alg.kty for alg in ALGORITHMS.values()})


def _same_computation(a: str, b: str) -> bool:
    return (ALGORITHMS[a].same_as or a) == (ALGORITHMS[b].same_as or b)


@pytest.fixture(scope="module")
def generated() -> dict[str, tuple[KeyMaterial, dict[str, Any]]]:
    """One freshly generated key per row (RSA at the registry's sizes: up to 4096 bits)."""
    return {name: generate_key(name) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_every_algorithm_round_trips_generate_load_sign_verify_publish_reload(
    name: str, generated: dict[str, tuple[KeyMaterial, dict[str, Any]]]
) -> None:
    made, private = generated[name]
    entry = ALGORITHMS[name]
    loaded = load_key_data(json.dumps(private).encode(), name="generated.jwk.json")[0]
    assert (loaded.alg, loaded.kty, loaded.can_sign) == (name, entry.kty, True)
    assert loaded.thumbprint == made.thumbprint
    token = encode_jws(CLAIMS, loaded, typ="at+jwt")
    assert decode_jws(token, KeyRing([made])).claims == CLAIMS
    published = KeyRing([loaded]).jwks()["keys"]
    if entry.symmetric:
        # A secret is never published, and never trusted from someone else's JWKS.
        assert published == [] and loaded.public_jwk() is None
        with pytest.raises(KeyMaterialError, match="symmetric"):
            parse_remote_jwks(json.dumps({"keys": [private]}).encode(), algorithms=frozenset(NAMES))
        return
    assert published == [loaded.public_jwk()]
    assert published[0]["alg"] == name and published[0]["use"] == "sig"
    assert algorithms.PRIVATE_MEMBERS.isdisjoint(published[0])
    document = json.dumps({"keys": published}).encode()
    (reloaded,), skipped = parse_remote_jwks(document, algorithms=algorithms.PUBLIC_NAMES)
    assert skipped == [] and not reloaded.can_sign
    assert (reloaded.alg, reloaded.thumbprint) == (name, made.thumbprint)
    assert decode_jws(token, KeyRing([reloaded])).claims == CLAIMS
    with pytest.raises(KeyMaterialError, match="verification-only"):
        reloaded.sign(b"x")


@pytest.mark.parametrize(
    ("kty", "name"),
    [(k, n) for k in KTYS for n in NAMES if ALGORITHMS[n].kty != k],
)
def test_each_key_type_refuses_every_algorithm_of_another_type(kty: str, name: str) -> None:
    own = next(n for n in NAMES if ALGORITHMS[n].kty == kty)
    key = private_key(own, "registry-cross")
    with pytest.raises(KeyMaterialError, match="cannot be used"):
        build_key(key, name, "cross")
    jwk = {**make_private_jwk(own, "registry-cross"), "alg": name}
    with pytest.raises(KeyMaterialError, match="cannot be used"):
        parse_jwk(jwk)


@pytest.mark.parametrize(
    ("key_alg", "header_alg"),
    [(a, b) for a, b in itertools.product(NAMES, NAMES) if not _same_computation(a, b)],
)
def test_a_key_refuses_a_token_whose_header_names_another_algorithm(
    key_alg: str, header_alg: str
) -> None:
    # The forger signs honestly with a key of `header_alg` under the victim's kid: the
    # victim's key, not the header, fixes the computation (RFC 8725 section 3.1).
    token = encode_jws(CLAIMS, make_key(header_alg, "victim"), typ="at+jwt")
    victim = make_key(key_alg, "victim")
    with pytest.raises(UnsupportedAlgorithmError):
        decode_jws(token, KeyRing([victim]))


@pytest.mark.parametrize("name", ["none", "None", "HS256 ", "PS257", "Ed448", "ES521", "RSA1_5"])
def test_names_outside_the_table_are_refused_by_keys_and_generation(name: str) -> None:
    with pytest.raises(KeyMaterialError, match="not supported"):
        algorithms.lookup(name, "k")
    with pytest.raises(KeyMaterialError):
        generate_key(name)
    with pytest.raises(KeyMaterialError):
        build_key(private_key("RS256", "registry-outside"), name, "k")


def _write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["none", "PS257", "Ed448", "A256GCM"])
def test_config_refuses_an_algorithm_not_in_the_table(tmp_path: Path, name: str) -> None:
    for text in (
        f"keys:\n  dev_alg: {name}\n",
        f"keys:\n  files:\n    - path: /k.pem\n      alg: {name}\n",
        "issuers:\n  - issuer: https://i\n    audiences: [a]\n    jwks_file: /x\n"
        f"    algorithms: [{name}]\n",
    ):
        with pytest.raises(ConfigError):
            load_settings(_write_config(tmp_path, text))


@pytest.mark.parametrize("name", NAMES)
def test_config_accepts_every_algorithm_in_the_table(tmp_path: Path, name: str) -> None:
    text = f"keys:\n  dev_alg: {name}\n  files:\n    - path: /k.pem\n      alg: {name}\n"
    settings = load_settings(_write_config(tmp_path, text))
    assert settings.keys.dev_alg == name and settings.keys.files[0].alg == name
    issuer = "issuers:\n  - issuer: https://i\n    audiences: [a]\n    jwks_file: /x\n"
    path = _write_config(tmp_path, issuer + f"    algorithms: [{name}]\n")
    if ALGORITHMS[name].symmetric:
        with pytest.raises(ConfigError, match="shared secret"):
            load_settings(path)
    else:
        assert load_settings(path).issuers[0].algorithms == (name,)


def test_an_ed25519_key_answers_to_both_of_its_names_and_nothing_else() -> None:
    for name in ("EdDSA", "Ed25519"):
        assert make_key(name, "ed").header_algs == {"EdDSA", "Ed25519"}
    assert {n for n in NAMES if ALGORITHMS[n].kty == "OKP"} == {"EdDSA", "Ed25519"}
    assert jwa.DISTINCT_NAMES == set(NAMES) - {"Ed25519"}


# --- no second list -----------------------------------------------------------------------

_FAMILY_PREFIXES = {"HS", "RS", "PS", "ES", "Ed"}


def _offences(path: Path) -> list[str]:
    """Collections of two or more algorithm names, and prefix tests on a name, in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        items: list[ast.expr] = []
        if isinstance(node, ast.Set | ast.List | ast.Tuple):
            items = list(node.elts)
        elif isinstance(node, ast.Dict):
            items = [key for key in node.keys if key is not None]
        names = {i.value for i in items if isinstance(i, ast.Constant) and i.value in ALGORITHMS}
        if len(names) >= 2:
            found.append(f"line {getattr(node, 'lineno', 0)}: a list of algorithms {sorted(names)}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "startswith"
        ):
            args = [a for arg in node.args for a in ast.walk(arg) if isinstance(a, ast.Constant)]
            if any(a.value in _FAMILY_PREFIXES for a in args):
                found.append(f"line {node.lineno}: a prefix test on an algorithm name")
    return found


def test_no_module_but_the_table_lists_algorithms_or_tests_their_prefix() -> None:
    package = Path(sidecar.__file__).parent
    modules = sorted(p for p in package.rglob("*.py") if p != package / "jwa.py")
    assert len(modules) > 30  # the whole package was scanned, not an empty directory
    offences = {str(p.relative_to(package)): o for p in modules if (o := _offences(p))}
    assert offences == {}


def test_the_scan_finds_a_second_list_and_a_prefix_test(tmp_path: Path) -> None:
    # The scanner itself must be able to fail: the code issue 12 replaced had both.
    sample = tmp_path / "old.py"
    sample.write_text(
        'SIGNING_ALGS = ("HS256", "RS256")\n'
        "def f(value):\n"
        '    return any(alg.startswith("HS") for alg in value)\n',
        encoding="utf-8",
    )
    assert len(_offences(sample)) == 2
