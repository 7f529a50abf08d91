"""The whole configuration: every section, the checks that span sections, and the paths
derived from `data_dir` (one place decides where the quick start puts its files).

How it is read (defaults, then one YAML or TOML file, then `AUTHSIDECAR_*` variables) is
loading.py's job; this module is only the shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.config.issuers import ExternalIssuerSettings
from sidecar.config.keys import KeySettings
from sidecar.config.listeners import HttpSettings, ListenSettings, MetricsSettings
from sidecar.config.services import EnvoySettings, TracingSettings, WatchSettings
from sidecar.config.store import StoreSettings
from sidecar.config.tokens import TokenSettings


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AUTHSIDECAR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path(".authsidecar")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    listen: ListenSettings = Field(default_factory=ListenSettings)
    keys: KeySettings = Field(default_factory=KeySettings)
    tokens: TokenSettings = Field(default_factory=TokenSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    # "json": one JSON object per line with request_id; "text": the classic one-liner.
    log_format: Literal["text", "json"] = "text"
    envoy: EnvoySettings = Field(default_factory=EnvoySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    # Other issuers whose access tokens Verify accepts (docs/keys.md, "External issuers").
    issuers: tuple[ExternalIssuerSettings, ...] = ()
    watch: WatchSettings = Field(default_factory=WatchSettings)

    @model_validator(mode="after")
    def _distinct_issuers(self) -> Settings:
        seen: set[str] = set()
        for external in self.issuers:
            if external.issuer == self.tokens.issuer:
                raise ValueError(
                    f"issuers: {external.issuer!r} is tokens.issuer; our own tokens are "
                    "verified with our own keys"
                )
            if external.issuer in seen:
                raise ValueError(f"issuers: {external.issuer!r} is configured twice")
            seen.add(external.issuer)
        if self.verify_only and not self.issuers:
            raise ValueError(
                "keys: no key files, no keys.directory and keys.dev_generate is false: "
                "configure a key, or external issuers for a verify-only sidecar"
            )
        return self

    @property
    def verify_only(self) -> bool:
        """No key of our own: no key files, no key directory, no dev key (issue 14).

        Valid only with external `issuers`: Verify then accepts only their tokens (our own
        issuer has no key, so a token claiming it is KEY_UNKNOWN), and Issue and Refresh
        answer FAILED_PRECONDITION / NO_SIGNING_KEY."""
        keys = self.keys
        return not keys.files and keys.directory is None and not keys.dev_generate

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Constructed directly, arguments then the environment: never a .env or secrets
        directory. load_settings passes its own sources, the file among them."""
        return init_settings, env_settings

    # Derived paths: one place decides where the quick start puts its files.
    @property
    def public_socket(self) -> Path | None:
        return _socket(self.listen.unix_socket, self.data_dir / "run" / "auth.sock")

    @property
    def admin_socket(self) -> Path | None:
        return _socket(self.listen.admin_socket, self.data_dir / "admin" / "admin.sock")

    @property
    def sqlite_path(self) -> Path:
        return self.store.sqlite_path or self.data_dir / "state.db"

    @property
    def dev_key_path(self) -> Path:
        return self.data_dir / "keys" / f"dev-{self.keys.dev_alg.lower()}.jwk.json"


def _socket(value: str | None, default: Path) -> Path | None:
    """A Unix socket setting: "" turns the listener off, unset is the quick start's path."""
    if value == "":
        return None
    return Path(value) if value else default
