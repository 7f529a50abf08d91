"""Settings: defaults, then one YAML or TOML file, then `AUTHSIDECAR_*` environment variables.

Parsed once at start into frozen models. A wrong value stops start-up with a `ConfigError`
naming the setting (`listen.tcp: ...`), never a traceback. Nested settings take a double
underscore in the environment: `AUTHSIDECAR_LISTEN__TCP=127.0.0.1:7000`.

Defaults are the quick start's: a dev key generated on first run into `data_dir`, the SQLite
store in `data_dir`, a public Unix socket, loopback TCP, and an owner-only admin socket.
"""

from __future__ import annotations

import contextvars
import difflib
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
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
SIGNING_ALGS = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519",
)  # fmt: skip


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
    # After SIGTERM: health NOT_SERVING but every call still served for this long, while
    # callers move away; then new calls get UNAVAILABLE / SHUTTING_DOWN (docs/operations.md,
    # "Stopping"). 5 s: Istio's default drain; 5 + 10 s grace fits Kubernetes' default 30 s.
    drain_s: float = Field(default=5.0, ge=0, le=600)
    # Calls whose metadata is larger are refused with METADATA_TOO_LARGE.
    max_metadata_bytes: int = Field(default=16384, ge=1024, le=1 << 20)
    max_message_bytes: int = Field(default=1 << 20, ge=4096, le=64 << 20)
    # A TCP listener serving only grpc.health.v1, for kubelet gRPC probes (which dial the
    # pod IP, not loopback). It may bind any address: health reveals nothing. "" disables it.
    health_tcp: str = ""

    @field_validator("tcp", "health_tcp")
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
    # A directory of key files (a mounted Kubernetes Secret): every *.json, *.jwk and *.pem
    # not starting with ".", plus an optional keyset.json naming the signing kid, which then
    # takes precedence over signing_kid. See docs/keys.md.
    directory: Path | None = None
    # How often key files and the directory are re-read for changes (SIGHUP re-reads at
    # once); 0 disables polling.
    reload_interval_s: float = Field(default=10.0, ge=0, le=3600)

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
    # A retired refresh token presented again within this many seconds of its rotation gets
    # the same successor instead of revoking the family (a client that lost the response and
    # retries; docs/lifecycle.md). 0 disables the window: every replay is reuse.
    refresh_grace_s: int = Field(default=5, ge=0, le=300)
    # Verify's result cache (sidecar/tokens/cache.py; docs/performance.md): keyed by the
    # token's SHA-256, bounded by entries and estimated bytes; 0 entries disables it.
    verify_cache_entries: int = Field(default=10_000, ge=0, le=1_000_000)
    verify_cache_bytes: int = Field(default=32 << 20, ge=0, le=4 << 30)
    # Most tokens one VerifyBatch call may carry; more is INVALID_ARGUMENT / INVALID_REQUEST.
    max_verify_batch: int = Field(default=256, ge=1, le=10_000)
    # Threads that compute costly signatures (RSA, PS*, ES384, ES512) off the event loop's
    # thread (tokens/signing.py). Worth 1-2 only with an RSA/ES384/ES512 signing key AND a
    # spare core: each hand-off costs CPU, so on a CPU-bound host it is a loss (measured,
    # docs/performance.md). HMAC, ES256 and EdDSA keys sign in place whatever this says.
    # 0 (default): every signature on the event loop's thread.
    signing_threads: int = Field(default=0, ge=0, le=32)

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
    # "redis" for a fleet of sidecars sharing state; see docs/lifecycle.md.
    backend: Literal["sqlite", "memory", "redis"] = "sqlite"
    # Default: data_dir/state.db.
    sqlite_path: Path | None = None
    # How often the revocation mirror is reconciled with the store and the store pinged.
    sync_interval_s: float = Field(default=5.0, gt=0, le=3600)
    # While the store is unreachable: "degrade" keeps Verify answering from signatures plus
    # the last known revocations (health of AuthService/store says NOT_SERVING); "refuse"
    # fails Verify with UNAVAILABLE and reports the whole server NOT_SERVING. Refresh,
    # Revoke and Issue with a refresh token fail with UNAVAILABLE either way.
    on_unavailable: Literal["degrade", "refuse"] = "degrade"
    # standalone: redis_url is redis://, rediss:// or unix://. cluster: redis_url names any
    # node. sentinel: redis_sentinels + redis_sentinel_master (redis_url: credentials only).
    redis_mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_sentinels: Annotated[tuple[str, ...], NoDecode] = ()
    redis_sentinel_master: str = "mymaster"
    # Inside every key's Cluster hash tag ("{prefix:i:n}", redis_keys); no braces allowed.
    redis_key_prefix: str = "authsidecar"
    # Connect and read timeout of every Redis call: nothing waits longer on a dead server.
    redis_timeout_s: float = Field(default=1.0, gt=0, le=60)
    # Refresh rotations and new families are acknowledged only once this many replicas have
    # them (WAIT, issue 16); otherwise UNAVAILABLE, and the client's retry is safe. 1 with
    # Sentinel keeps a failover from losing an acknowledged rotation. Not with cluster mode.
    redis_wait_replicas: int = Field(default=0, ge=0, le=16)

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("redis_key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or any(ch in value for ch in "{} "):
            raise ValueError("redis_key_prefix must be non-empty, without braces or spaces")
        return value

    @model_validator(mode="after")
    def _redis_address(self) -> StoreSettings:
        if self.backend != "redis":
            return self
        if self.redis_mode == "sentinel":
            if not self.redis_sentinels:
                raise ValueError("redis_mode sentinel needs redis_sentinels (host:port, ...)")
            for node in self.redis_sentinels:
                parse_host_port(node)
        elif not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        elif self.redis_mode == "cluster" and self.redis_url.startswith("unix://"):
            raise ValueError("redis_mode cluster needs a redis:// or rediss:// node address")
        if self.redis_mode == "cluster" and self.redis_wait_replicas:
            raise ValueError("redis_wait_replicas is not supported with redis_mode cluster")
        return self


class EnvoySettings(_Frozen):
    """Envoy's ext_authz gRPC API (envoy.service.auth.v3.Authorization/Check) on the public
    listener, so a mesh can delegate bearer-token checks without a client library."""

    enabled: bool = False
    # claim -> request header set on allowed requests (overwriting any the client sent; a
    # header whose claim is absent is removed). In the environment: a JSON object.
    forward_claims_headers: dict[str, str] = Field(
        default_factory=lambda: {"sub": "x-authsidecar-sub", "scope": "x-authsidecar-scope"}
    )
    # Verify's audience and required scopes; a route's check_settings.context_extensions
    # `audience` / `required_scopes` (space-separated) override them for that route.
    audience: str | None = None
    required_scopes: tuple[str, ...] = ()
    # Remove the Authorization header before the request goes upstream.
    strip_authorization: bool = False

    @field_validator("forward_claims_headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for claim, header in value.items():
            if not claim or not _HEADER_NAME.fullmatch(header):
                raise ValueError(f"{header!r} is not a lower-case HTTP header name")
            if header in _RESERVED_HEADERS:
                raise ValueError(f"header {header!r} may not carry a claim")
        return value


class MetricsSettings(_Frozen):
    # "host:port" for Prometheus' text format over HTTP at /metrics; "" disables it.
    listen: str = ""
    # An address off loopback is refused unless this is set (e.g. 0.0.0.0 in a pod).
    allow_non_loopback: bool = False

    @model_validator(mode="after")
    def _loopback_only(self) -> MetricsSettings:
        if self.listen:
            host, _ = parse_host_port(self.listen)
            if not self.allow_non_loopback and not is_loopback(host):
                raise ValueError(
                    f"address {self.listen!r} is not loopback; set "
                    "metrics.allow_non_loopback to expose metrics beyond this host"
                )
        return self


class TracingSettings(_Frozen):
    # OpenTelemetry SERVER spans per RPC (sidecar/transport/tracing.py, docs/operations.md).
    # Needs opentelemetry-api (and an SDK set up by the operator); off: not even imported.
    enabled: bool = False


class HttpSettings(_Frozen):
    # "host:port" for /.well-known/jwks.json and /.well-known/openid-configuration over
    # plain HTTP; "" (the default) serves neither.
    listen: str = ""
    # An address off loopback is refused unless this is set.
    allow_non_loopback: bool = False
    # Cache-Control max-age of both documents; keep it well below the rotation overlap.
    max_age_s: int = Field(default=300, ge=0, le=86400)
    # Base URL clients reach this listener at (for jwks_uri); default http://<listen>.
    public_url: str = ""

    @model_validator(mode="after")
    def _loopback_only(self) -> HttpSettings:
        if self.listen:
            host, _ = parse_host_port(self.listen)
            if not self.allow_non_loopback and not is_loopback(host):
                raise ValueError(
                    f"address {self.listen!r} is not loopback; set "
                    "http.allow_non_loopback to publish keys beyond this host"
                )
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("public_url must start with http:// or https://")
        return self


class ExternalIssuerSettings(_Frozen):
    """A second issuer whose tokens Verify accepts (a company IdP); docs/keys.md,
    "External issuers". Its keys come from `jwks_url` (HTTPS only) or `jwks_file`."""

    # Compared exactly with the token's `iss`; never our own tokens.issuer.
    issuer: str
    # At least one: the token's `aud` must name one of them (your API's identifier at the
    # IdP, not a client id, so the IdP's ID tokens are not accepted as access tokens).
    audiences: tuple[str, ...] = Field(min_length=1)
    jwks_url: str | None = None
    jwks_file: Path | None = None
    # Background re-fetch period of the key set; the last good set stays on any failure.
    refresh_s: float = Field(default=300.0, ge=1, le=86400)
    # A token naming an unknown kid triggers at most one fetch per this many seconds.
    min_refetch_interval_s: float = Field(default=30.0, ge=0, le=3600)
    # Accepted algorithms (default: every asymmetric one we implement; never HS*).
    algorithms: tuple[Literal[SIGNING_ALGS], ...] = ()  # type: ignore[valid-type]
    # CA bundle (PEM) for a private CA; default: the system trust store.
    ca_file: Path | None = None
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    max_response_bytes: int = Field(default=512 * 1024, ge=1024, le=1 << 20)
    max_lifetime_s: int = Field(default=86400, ge=1, le=30 * 86400)

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        if not value or any(ch.isspace() for ch in value):
            raise ValueError("issuer must be a non-empty string without white space")
        return value

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not all(value):
            raise ValueError("audiences must be non-empty strings")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(alg.startswith("HS") for alg in value):
            raise ValueError("HS* algorithms need a shared secret; an issuer's JWKS is public")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ExternalIssuerSettings:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError(f"issuer {self.issuer!r}: set exactly one of jwks_url, jwks_file")
        url = self.jwks_url
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme != "https" or not parts.hostname:
                raise ValueError(
                    f"issuer {self.issuer!r}: jwks_url must be an https:// URL with a host "
                    f"(scheme {parts.scheme!r} refused): keys fetched over plain HTTP could "
                    "be replaced by anyone on the path"
                )
        return self


class WatchSettings(_Frozen):
    """The Watch stream (issue 15, docs/lifecycle.md "Watch")."""

    # A heartbeat carrying the latest sequence is sent this often on every stream;
    # subscribers derive their staleness bound from it.
    heartbeat_interval_ms: int = Field(default=1000, ge=50, le=60_000)
    # Events kept for resuming subscribers (epoch + after_sequence); one further back is a
    # reset. About 200 bytes each.
    replay_buffer_size: int = Field(default=4096, ge=0, le=1_000_000)
    # Unread live events one subscriber may hold; beyond it the subscriber is dropped
    # (its stream ends UNAVAILABLE / WATCH_SUBSCRIBER_DROPPED) and resubscribes.
    subscriber_queue_size: int = Field(default=1024, ge=1, le=1_000_000)
    # Concurrent streams over all listeners; one more is refused RESOURCE_EXHAUSTED /
    # WATCH_SUBSCRIBER_LIMIT. Each costs ~24 KiB (docs/performance.md): the default bounds
    # Watch at ~25 MiB against a local caller opening streams without end.
    max_subscribers: int = Field(default=1000, ge=1, le=100_000)


_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_RESERVED_HEADERS = frozenset({"authorization", "host", "content-length", "te", "cookie"})


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
        raise ConfigError(_one_line(f"invalid configuration: {exc}")) from None
    except (OSError, ValueError, yaml.YAMLError) as exc:  # unreadable or unparsable file
        raise ConfigError(
            _one_line(f"config file {str(path)!r} could not be read: {exc}")
        ) from None
    finally:
        _config_file.reset(token)


def _describe(exc: ValidationError) -> str:
    """Every problem on ONE line (issue 14: a log line or a `kubectl logs` tail shows it whole):
    `invalid configuration: setting a.b: why; setting c: why`. A name that is not a setting
    says so and offers the nearest valid one at that level (difflib)."""
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        where = ".".join(str(part) for part in loc) or "settings"
        if error["type"] == "extra_forbidden" and loc:
            problems.append(f"unknown setting {where}{_did_you_mean(loc)}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"setting {where}: {message}")
    return _one_line("invalid configuration: " + "; ".join(problems))


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """` (did you mean tokens.access_ttl_s?)`, or "" when no valid name is close."""
    model: type[BaseModel] | None = Settings
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue  # an element of a list of models: same model
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    if not close:
        return ""
    prefix = ".".join(str(part) for part in loc[:-1])
    return f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds, directly or as the element of a tuple."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


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
