"""Settings: defaults, then one YAML or TOML file, then `AUTHSIDECAR_*` environment variables.

Parsed once at start into frozen models. A wrong value stops start-up with a `ConfigError`
naming the setting (`listen.tcp: ...`), never a traceback. Nested settings take a double
underscore in the environment: `AUTHSIDECAR_LISTEN__TCP=127.0.0.1:7000`.

Defaults are the quick start's: a dev key generated on first run into `data_dir`, the SQLite
store in `data_dir`, a public Unix socket, loopback TCP, and an owner-only admin socket.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from sidecar.errors import ConfigError

CONFIG_ENV = "AUTHSIDECAR_CONFIG"
# The file load_settings was asked to read; falls back to $AUTHSIDECAR_CONFIG.
_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "config_file", default=None
)
SIGNING_ALGS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ListenSettings(_Frozen):
    # Public listener for Verify, Introspect, Refresh, Revoke, GetJwks. Empty: no Unix socket.
    unix_socket: str | None = None
    # File mode of the public socket: open to every local user by default, since Verify is.
    unix_socket_mode: int = Field(default=0o666, ge=0, le=0o777)
    # "host:port" on loopback; "" disables TCP; port 0 picks a free port.
    tcp: str = "127.0.0.1:50051"
    # A TCP address off loopback is refused unless this is set (the sidecar is plaintext).
    allow_non_loopback: bool = False
    # The only listener that serves Issue. Lives in its own owner-only (0700) directory.
    admin_socket: str | None = None
    # In-flight calls get this long to finish after SIGTERM.
    grace_period_s: float = Field(default=10.0, ge=0, le=600)
    # Calls whose metadata is larger are refused with METADATA_TOO_LARGE.
    max_metadata_bytes: int = Field(default=16384, ge=1024, le=1 << 20)
    max_message_bytes: int = Field(default=1 << 20, ge=4096, le=64 << 20)

    @field_validator("tcp")
    @classmethod
    def _tcp_address(cls, value: str) -> str:
        if value:
            parse_host_port(value)
        return value

    @model_validator(mode="after")
    def _loopback_only(self) -> ListenSettings:
        if self.tcp and not self.allow_non_loopback:
            host, _ = parse_host_port(self.tcp)
            if not is_loopback(host):
                raise ValueError(
                    f"tcp address {self.tcp!r} is not loopback; set listen.allow_non_loopback "
                    "to serve plaintext gRPC beyond this host"
                )
        return self


class KeyFile(_Frozen):
    path: Path
    # For PEM files, which carry neither: defaults are the RFC 7638 thumbprint and the
    # algorithm the key type implies (RS256, or ES256/384/512 by curve).
    kid: str | None = None
    alg: Literal[SIGNING_ALGS] | None = None  # type: ignore[valid-type]


class KeySettings(_Frozen):
    # In the environment: a comma-separated list of paths, or a JSON list.
    files: Annotated[tuple[KeyFile, ...], NoDecode] = ()
    # Which key signs; may be omitted when exactly one loaded key can sign.
    signing_kid: str | None = None
    # With no key files: generate a development key into data_dir/keys on first run.
    dev_generate: bool = True
    dev_alg: Literal[SIGNING_ALGS] = "ES256"  # type: ignore[valid-type]

    @field_validator("files", mode="before")
    @classmethod
    def _paths_as_files(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError:
                    raise ValueError("not a JSON list of key files") from None
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value


class TokenSettings(_Frozen):
    issuer: str = "urn:authsidecar:local"
    # Verify accepts a token only if its `aud` names one of these (when any are set).
    audiences: tuple[str, ...] = ()
    # Issue uses this audience when the request names none.
    default_audience: tuple[str, ...] = ()
    access_ttl_s: int = Field(default=900, ge=1, le=86400)
    max_access_ttl_s: int = Field(default=3600, ge=1, le=86400)
    refresh_ttl_s: int = Field(default=86400, ge=60, le=90 * 86400)
    # No refresh token of a family is honoured after this, however often it rotated.
    family_ttl_s: int = Field(default=30 * 86400, ge=60, le=365 * 86400)
    leeway_s: int = Field(default=30, ge=0, le=300)
    max_token_bytes: int = Field(default=8192, ge=512, le=65536)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not value or any(ch.isspace() for ch in value):
            raise ValueError("issuer must be a non-empty string without white space")
        return value

    @model_validator(mode="after")
    def _ttls(self) -> TokenSettings:
        if self.access_ttl_s > self.max_access_ttl_s:
            raise ValueError("access_ttl_s may not exceed max_access_ttl_s")
        if self.refresh_ttl_s > self.family_ttl_s:
            raise ValueError("refresh_ttl_s may not exceed family_ttl_s")
        return self


class StoreSettings(_Frozen):
    backend: Literal["sqlite", "memory"] = "sqlite"
    # Default: data_dir/state.db.
    sqlite_path: Path | None = None
    # How often the revocation mirror is reconciled with the store and the store pinged.
    sync_interval_s: float = Field(default=5.0, gt=0, le=3600)


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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file.get()
        if path is not None:
            suffix = path.suffix.lower()
            if suffix == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    # Derived paths: one place decides where the quick start puts its files.
    @property
    def public_socket(self) -> Path | None:
        value = self.listen.unix_socket
        if value == "":
            return None
        return Path(value) if value else self.data_dir / "run" / "auth.sock"

    @property
    def admin_socket(self) -> Path | None:
        value = self.listen.admin_socket
        if value == "":
            return None
        return Path(value) if value else self.data_dir / "admin" / "admin.sock"

    @property
    def sqlite_path(self) -> Path:
        return self.store.sqlite_path or self.data_dir / "state.db"

    @property
    def dev_key_path(self) -> Path:
        return self.data_dir / "keys" / f"dev-{self.keys.dev_alg.lower()}.jwk.json"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate; every failure is a ConfigError whose message names the setting."""
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = os.environ[CONFIG_ENV]
    path = Path(config_file) if config_file is not None else None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist or is not a file")
        if path.suffix.lower() not in (".yaml", ".yml", ".toml"):
            raise ConfigError(f"config file {str(path)!r} must end in .yaml, .yml or .toml")
    token = _config_file.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:  # an AUTHSIDECAR_* variable that is not valid JSON
        raise ConfigError(f"invalid configuration: {exc}") from None
    except (OSError, ValueError) as exc:  # unreadable or unparsable file
        raise ConfigError(f"config file {str(path)!r} could not be read: {exc}") from None
    finally:
        _config_file.reset(token)


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"setting {where}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_host_port(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
