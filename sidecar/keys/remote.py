"""The key set of an external issuer (a company IdP): a JWKS URL or file, kept fresh.

One `RemoteKeySet` per configured issuer (config `issuers`, docs/keys.md "External issuers").

* **Only configured locations are read.** The URL comes from the configuration and must be
  `https://` (config/issuers.py refuses anything else); token headers never name a URL (`jku`,
  `x5u` are refused by the JWS parser). Redirects are not followed, proxies from the
  environment are not used, and the server certificate is verified against the system trust
  store or the issuer's `ca_file`.
* **Bounded.** A per-operation socket timeout plus an overall deadline, and a cap on the
  response size (`max_response_bytes`), checked before parsing.
* **Strict and hygienic.** The document is parsed by `issuer_jwks.parse_remote_jwks`: the
  parser and hygiene of our own key files, per key; an unusable key is skipped and logged.
* **Never empty, never fake.** A refused or failed fetch changes nothing: the last good key
  set stays in force (and is kept for as long as fetches fail; a log line and
  `status.failures` say so). Before the first good fetch the issuer has no keys, so its
  tokens are refused with KEY_UNKNOWN.
* **Unknown kid.** `request_refetch(kid)` (synchronous, from Verify) starts a fetch when none
  is running and the last kid-triggered fetch is at least `min_refetch_interval_s` old, and
  returns the running fetch (single flight); `refetch(kid)` awaits it. So an issuer's new
  key is trusted from the first token that names it, while a flood of tokens with made-up
  kids costs the IdP at most one request per interval.

The HTTPS GET is `urllib.request` in a worker thread (it handles chunked responses and
certificate checking, and needs no dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import math
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.errors import ConfigError, KeyMaterialError
from sidecar.keys.algorithms import PUBLIC_NAMES
from sidecar.keys.issuer_jwks import parse_remote_jwks
from sidecar.keys.loader import read_key_file
from sidecar.keys.material import KeyMaterial
from sidecar.keys.options import ExternalIssuerOptions
from sidecar.keys.ring import KeyRing

__all__ = ["RemoteKeySet", "RemoteStatus"]

log = logging.getLogger("authsidecar.keys.remote")

# After a failed fetch, retry sooner than refresh_s, but not more often than this.
_MIN_RETRY_S = 5.0


@dataclass
class RemoteStatus:
    """What the fetches did; read by tests and logs."""

    fetches: int = 0  # successful fetches (key set unchanged or replaced)
    failures: int = 0  # refused or failed fetches (the last good set stayed)
    demand_fetches: int = 0  # fetches started by a token naming an unknown kid
    version: str | None = None  # the KeyRing version in force, None before the first success
    last_error: str | None = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: only the configured URL is ever fetched."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Cutoff:
    """The sockets of one fetch, shut down when the fetch's total deadline ends it.

    `timeout_s` bounds each socket operation, not the fetch: a server (or a link) that sends
    a byte every few seconds kept the worker thread reading for hours after `wait_for` gave
    up. Those threads are the default executor's (a handful on a small machine: a few such
    fetches starved key reloads), and asyncio waits for them at exit, so SIGTERM logged
    "stopped" and the process never exited. Shutting the connection down makes the blocked
    read fail at once, whatever the peer does.

    Each socket is tracked by a duplicate of its descriptor, owned here: TLS takes the
    original over (the socket object urllib made is detached), and a duplicate can never
    name some other connection that reused a closed descriptor number.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._duplicates: list[socket.socket] = []
        self._cut = False

    def track(self, sock: socket.socket) -> socket.socket:
        duplicate = sock.dup()
        with self._lock:
            cut = self._cut
            if not cut:
                self._duplicates.append(duplicate)
        if cut:  # connected after the deadline: never read from it
            _shut(duplicate)
        return sock

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            duplicates, self._duplicates = self._duplicates, []
        for duplicate in duplicates:
            _shut(duplicate)


def _shut(duplicate: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the peer or the fetch closed it already
        duplicate.shutdown(socket.SHUT_RDWR)
    duplicate.close()


class _CutoffHTTPSHandler(urllib.request.HTTPSHandler):
    """urllib's HTTPS handler, its connections' sockets registered with a `_Cutoff`."""

    def __init__(self, context: ssl.SSLContext, cutoff: _Cutoff) -> None:
        super().__init__(context=context)
        self._tls = context
        self._cutoff = cutoff

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        cutoff = self._cutoff

        def connection(host: str, **kwargs: Any) -> http.client.HTTPSConnection:
            conn = http.client.HTTPSConnection(host, **kwargs)
            create = conn._create_connection  # type: ignore[attr-defined]  # the TCP socket

            def tracked(*args: Any, **kw: Any) -> socket.socket:
                return cutoff.track(create(*args, **kw))

            conn._create_connection = tracked  # type: ignore[attr-defined]
            return conn

        return self.do_open(connection, req, context=self._tls)


class RemoteKeySet:
    """The verification keys of one external issuer; `get` is the hot-path lookup."""

    def __init__(
        self,
        settings: ExternalIssuerOptions,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.issuer = settings.issuer
        self._monotonic = monotonic
        self._algorithms = frozenset(settings.algorithms) or PUBLIC_NAMES
        self._ring: KeyRing | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._last_demand = -math.inf
        self._last_document: bytes | None = None
        self._context: ssl.SSLContext | None = None
        if settings.jwks_url is not None:
            try:
                ca_file = str(settings.ca_file) if settings.ca_file is not None else None
                self._context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"setting issuers: {self.issuer!r}: ca_file {str(settings.ca_file)!r} "
                    "could not be loaded"
                ) from exc
        self.status = RemoteStatus()
        # Told (old ring, new ring) after a fetch replaced a key set, once the new one is in
        # force: the composition root turns dropped kids into Watch KeyRetired events.
        self.on_replace: Callable[[KeyRing, KeyRing], None] | None = None

    @property
    def source(self) -> str:
        return self.settings.jwks_url or str(self.settings.jwks_file)

    @property
    def ring(self) -> KeyRing | None:
        """The last good key set; None until a fetch succeeded."""
        return self._ring

    def get(self, kid: str) -> KeyMaterial | None:
        ring = self._ring
        return ring.get(kid) if ring is not None else None

    # -- fetching ---------------------------------------------------------------------------

    async def start(self) -> None:
        """The first fetch. A key file that does not load stops start-up (a local mistake,
        like our own key files); an unreachable URL does not: the sidecar serves its own
        tokens and keeps trying in the background."""
        if await self.refresh():
            return
        if self.settings.jwks_file is not None:
            raise KeyMaterialError(f"issuer {self.issuer!r}: {self.status.last_error}")

    async def refresh(self) -> bool:
        """Fetch now, or join the fetch already running; True when it succeeded."""
        return await asyncio.shield(self._start())

    def request_refetch(self, kid: str) -> asyncio.Task[bool] | None:
        """Verify found no key `kid`: the fetch to wait for, or None (kid known, rate-limited
        or no event loop). Never blocks; safe on the hot path."""
        if self.get(kid) is not None:
            return None
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            return inflight
        now = self._monotonic()
        if now - self._last_demand < self.settings.min_refetch_interval_s:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._last_demand = now
        self.status.demand_fetches += 1
        log.info("issuer %s: unknown kid %r, fetching its key set", self.issuer, kid[:64])
        return self._start()

    async def refetch(self, kid: str) -> bool:
        """`request_refetch`, awaited: True when `kid` is known afterwards."""
        task = self.request_refetch(kid)
        if task is not None:
            await asyncio.shield(task)
        return self.get(kid) is not None

    def _start(self) -> asyncio.Task[bool]:
        inflight = self._inflight
        if inflight is None or inflight.done():
            inflight = asyncio.get_running_loop().create_task(self._fetch())
            self._inflight = inflight
        return inflight

    async def run(self) -> None:
        """Refresh every `refresh_s` (sooner after a failure) until cancelled."""
        settings = self.settings
        retry_s = min(settings.refresh_s, max(settings.min_refetch_interval_s, _MIN_RETRY_S))
        while True:
            healthy = self.status.last_error is None and self._ring is not None
            await asyncio.sleep(settings.refresh_s if healthy else retry_s)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a bug must not stop future refreshes
                log.exception("issuer %s: key set refresh failed unexpectedly", self.issuer)

    async def close(self) -> None:
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await inflight

    async def _fetch(self) -> bool:
        deadline = self.settings.timeout_s * 2 + 1
        cutoff = _Cutoff()
        try:
            try:
                data = await asyncio.wait_for(asyncio.to_thread(self._read, cutoff), deadline)
            finally:
                cutoff.cut()  # a link still trickling bytes: its thread ends now (_Cutoff)
            keys, skipped = parse_remote_jwks(data, algorithms=self._algorithms)
            ring = KeyRing(keys)
        except TimeoutError:
            return self._failed("timed out")
        except (KeyMaterialError, ConfigError) as exc:
            return self._failed(str(exc))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return self._failed(_describe(exc))
        changed_document = data != self._last_document
        self._last_document = data
        if changed_document:
            for reason in skipped:
                log.warning("issuer %s: key skipped: %s", self.issuer, reason)
        status = self.status
        status.fetches += 1
        if status.last_error is not None:
            log.warning("issuer %s: key set fetch from %s works again", self.issuer, self.source)
        status.last_error = None
        old = self._ring
        if old is None or old.version != ring.version:
            self._ring = ring
            status.version = ring.version
            log.info(
                "issuer %s: key set %s -> %s, kids=%s",
                self.issuer,
                old.version if old is not None else None,
                ring.version,
                sorted(key.kid for key in ring.keys),
            )
            if old is not None and self.on_replace is not None:
                self.on_replace(old, ring)
        return True

    def _failed(self, reason: str) -> bool:
        status = self.status
        status.failures += 1
        if reason != status.last_error:  # the same failure is logged once, not every retry
            kept = status.version if self._ring is not None else "none (tokens refused)"
            log.error(
                "issuer %s: key set fetch from %s refused, keeping key set %s: %s",
                self.issuer,
                self.source,
                kept,
                reason,
            )
        status.last_error = reason
        return False

    def _read(self, cutoff: _Cutoff) -> bytes:
        """Blocking: runs in a worker thread, whose sockets `cutoff` shuts down at the end."""
        settings = self.settings
        limit = settings.max_response_bytes
        if settings.jwks_file is not None:
            data = read_key_file(settings.jwks_file)
        else:
            assert settings.jwks_url is not None and self._context is not None  # noqa: S101
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}),
                _NoRedirect(),
                _CutoffHTTPSHandler(self._context, cutoff),
            )
            request = urllib.request.Request(  # noqa: S310 - https:// only (config/issuers.py)
                settings.jwks_url,
                headers={
                    "Accept": "application/jwk-set+json, application/json",
                    "User-Agent": "authsidecar",
                },
            )
            with opener.open(request, timeout=settings.timeout_s) as response:
                if response.status != 200:
                    raise KeyMaterialError(f"HTTP status {response.status}")
                data = response.read(limit + 1)
        if len(data) > limit:
            raise KeyMaterialError(f"larger than max_response_bytes ({limit})")
        return data


def _describe(exc: BaseException) -> str:
    """A short reason without response bodies or key material."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP status {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({reason.verify_message})"
        return f"cannot connect ({reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason})"
    return f"{type(exc).__name__}: {exc}"[:200]
