"""The composition root: the one place that picks implementations and wires them together.

start.py    start_app (the start-up order), the banner, serve (signals)
running.py  App: what a started sidecar holds, its background tasks, drain and stop
keys.py     our own key source (dev key on first run) and the external issuers
store.py    which store is opened; following its revocations and reachability
ports.py    a fixed port already in use is refused before anything is made
"""

from sidecar.app.keys import external_issuers, key_source
from sidecar.app.running import App
from sidecar.app.start import banner, serve, start_app
from sidecar.app.store import STORE_HEALTH_SERVICE, open_store, set_store_health

__all__ = [
    "STORE_HEALTH_SERVICE",
    "App",
    "banner",
    "external_issuers",
    "key_source",
    "open_store",
    "serve",
    "set_store_health",
    "start_app",
]
