"""The configuration edge (sidecar/config/): what it reads in which order, the one loopback
rule every listener address follows, and the plain values it hands the domain."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import (
    ExternalIssuerSettings,
    KeyFileSettings,
    StoreSettings,
    TokenSettings,
    load_settings,
)
from sidecar.errors import ConfigError
from sidecar.keys.options import ExternalIssuerOptions, KeyFile
from sidecar.store.options import RedisOptions
from sidecar.tokens.options import TokenOptions


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.yaml", "listen:\n  tcp: 127.0.0.1:1\ntokens:\n  issuer: file\n  leeway_s: 7\n"),
        ("a.toml", "[listen]\ntcp = '127.0.0.1:1'\n[tokens]\nissuer = 'file'\nleeway_s = 7\n"),
    ],
)
def test_overrides_beat_the_environment_which_beats_the_file_which_beats_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    monkeypatch.setenv("AUTHSIDECAR_LISTEN__TCP", "127.0.0.1:2")
    monkeypatch.setenv("AUTHSIDECAR_TOKENS__ISSUER", "env")
    settings = load_settings(path, tokens={"issuer": "override"})
    assert settings.listen.tcp == "127.0.0.1:2"  # environment over file
    assert settings.tokens.issuer == "override"  # override over environment
    assert settings.tokens.leeway_s == 7  # file over default
    assert settings.tokens.access_ttl_s == 900  # default


def test_each_load_reads_only_the_file_it_was_given(tmp_path: Path) -> None:
    """The file reaches the parser as an argument, not through module state: loads of two
    files and of none, interleaved, each see exactly their own."""
    first, second = tmp_path / "first.yaml", tmp_path / "second.toml"
    first.write_text("tokens:\n  issuer: first\n")
    second.write_text("[tokens]\nissuer = 'second'\n")
    issuers = [
        load_settings(first).tokens.issuer,
        load_settings(second).tokens.issuer,
        load_settings(None).tokens.issuer,
        load_settings(first).tokens.issuer,
    ]
    assert issuers == ["first", "second", "urn:authsidecar:local", "first"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"listen": {"tcp": "0.0.0.0:7000"}},
            "setting listen: tcp address '0.0.0.0:7000' is not loopback; set "
            "listen.allow_non_loopback to serve plaintext gRPC beyond this host",
        ),
        (
            {"metrics": {"listen": "0.0.0.0:9100"}},
            "setting metrics: address '0.0.0.0:9100' is not loopback; set "
            "metrics.allow_non_loopback to expose metrics beyond this host",
        ),
        (
            {"http": {"listen": "10.1.2.3:8080"}},
            "setting http: address '10.1.2.3:8080' is not loopback; set "
            "http.allow_non_loopback to publish keys beyond this host",
        ),
    ],
)
def test_every_listener_address_off_loopback_is_refused_naming_its_switch(
    section: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, **section)
    assert str(refused.value) == f"invalid configuration: {message}"
    name = next(iter(section))
    allowed = {name: {**section[name], "allow_non_loopback": True}}
    load_settings(None, **allowed)  # the switch is what lets it leave the host


@pytest.mark.parametrize("name", ["metrics", "http"])
def test_a_malformed_address_is_refused_even_where_off_loopback_is_allowed(name: str) -> None:
    with pytest.raises(ConfigError, match=f"setting {name}: 'nonsense' is not host:port"):
        load_settings(None, **{name: {"listen": "nonsense", "allow_non_loopback": True}})


@pytest.mark.parametrize(
    "issuers",
    [
        {"tokens": {"issuer": "has space"}},
        {"issuers": [{"issuer": "", "audiences": ["api"], "jwks_url": "https://idp/jwks"}]},
    ],
)
def test_our_issuer_and_an_external_one_follow_one_naming_rule(issuers: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="issuer must be a non-empty string without white"):
        load_settings(None, **issuers)


def _fields(options: object) -> dict[str, Any]:
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}  # type: ignore[arg-type]


def test_each_section_hands_the_domain_the_values_it_holds(tmp_path: Path) -> None:
    """The domain's frozen dataclasses are built field by field from the sections: every
    value arrives unchanged."""
    tokens = TokenSettings(
        issuer="urn:test",
        audiences=("a",),
        default_audience=("b",),
        access_ttl_s=60,
        max_access_ttl_s=120,
        refresh_ttl_s=600,
        family_ttl_s=6000,
        leeway_s=3,
        max_token_bytes=4096,
        refresh_grace_s=2,
        verify_cache_entries=7,
        verify_cache_bytes=4096,
        max_verify_batch=9,
    )
    store = StoreSettings(
        backend="redis",
        redis_mode="sentinel",
        redis_sentinels=("10.0.0.1:26379",),
        redis_sentinel_master="tokens",
        redis_timeout_s=0.5,
        redis_wait_replicas=1,
    )
    issuer = ExternalIssuerSettings(
        issuer="https://idp",
        audiences=("api",),
        jwks_file=tmp_path / "jwks.json",
        refresh_s=60,
        min_refetch_interval_s=5,
        algorithms=("RS256",),
        timeout_s=2,
        max_response_bytes=4096,
        max_lifetime_s=600,
    )
    key_file = KeyFileSettings(path=tmp_path / "k.pem", kid="k1", alg="RS256")
    for section, options, kind in (
        (tokens, tokens.options(), TokenOptions),
        (store, store.redis_options(), RedisOptions),
        (issuer, issuer.options(), ExternalIssuerOptions),
        (key_file, key_file.options(), KeyFile),
    ):
        assert type(options) is kind
        assert _fields(options) == {name: getattr(section, name) for name in _fields(options)}
    assert (
        tokens.options().verify_cache_entries == 7
        and store.redis_options().redis_wait_replicas == 1
    )


def test_the_domain_values_cannot_be_changed_after_start() -> None:
    options = TokenSettings().options()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.issuer = "urn:other"  # type: ignore[misc]


def test_a_sync_interval_under_its_floor_is_refused_with_one_line_naming_it() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, store={"sync_interval_s": 1e-6})
    message = str(refused.value)
    assert message.startswith("invalid configuration: setting store.sync_interval_s: ")
    assert "0.05" in message and "\n" not in message
    assert load_settings(None, store={"sync_interval_s": 0.05}).store.sync_interval_s == 0.05
