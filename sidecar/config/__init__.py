"""Settings: defaults, then one YAML or TOML file, then `AUTHSIDECAR_*` environment variables.

Parsed once at start into frozen models. A wrong value stops start-up with a `ConfigError`
naming the setting (`listen.tcp: ...`), never a traceback. Nested settings take a double
underscore in the environment: `AUTHSIDECAR_LISTEN__TCP=127.0.0.1:7000`.

Defaults are the quick start's: a dev key generated on first run into `data_dir`, the SQLite
store in `data_dir`, a public Unix socket, loopback TCP, and an owner-only admin socket.

This package is the edge: pydantic parses and checks here, one module per section
(listeners, services, keys, issuers, tokens, store; settings.py the whole, loading.py the
reading). The domain (sidecar/tokens, keys, store) never imports it: each section hands it
plain frozen values it owns (`TokenSettings.options()`, `StoreSettings.redis_options()`,
`KeySettings.key_files()`, `ExternalIssuerSettings.options()`).
"""

from sidecar.config.issuers import ExternalIssuerSettings
from sidecar.config.keys import SIGNING_ALGS, KeyFileSettings, KeySettings
from sidecar.config.listeners import HttpSettings, ListenSettings, MetricsSettings
from sidecar.config.loading import CONFIG_ENV, load_settings
from sidecar.config.services import EnvoySettings, TracingSettings, WatchSettings
from sidecar.config.settings import Settings
from sidecar.config.store import StoreSettings
from sidecar.config.tokens import TokenSettings

__all__ = [
    "CONFIG_ENV",
    "SIGNING_ALGS",
    "EnvoySettings",
    "ExternalIssuerSettings",
    "HttpSettings",
    "KeyFileSettings",
    "KeySettings",
    "ListenSettings",
    "MetricsSettings",
    "Settings",
    "StoreSettings",
    "TokenSettings",
    "TracingSettings",
    "WatchSettings",
    "load_settings",
]
