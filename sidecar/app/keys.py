"""The keys a sidecar starts with: our own (configured files and directory, or the
development key made on first run) and the external issuers' key sets with their rules."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from sidecar.config import Settings
from sidecar.errors import ConfigError
from sidecar.keys.generate import generate_key, write_key_file
from sidecar.keys.keyset import KeySource
from sidecar.keys.options import KeyFile
from sidecar.keys.remote import RemoteKeySet
from sidecar.tokens.claims import EXTERNAL_ACCESS_TYPS, ClaimsPolicy
from sidecar.tokens.issuers import Issuer, Issuers

log = logging.getLogger("authsidecar")


def key_source(settings: Settings) -> KeySource:
    """Configured key files and directory; with neither, the development key (made on first
    run). The same source is re-read on reload (docs/keys.md)."""
    keys = settings.keys
    files = keys.key_files()
    if not files and keys.directory is None:
        if not keys.dev_generate:  # verify-only: start_app never asks
            raise ConfigError("setting keys.files: no key files configured")
        _dev_key(settings.dev_key_path, keys.dev_alg)
        files = (KeyFile(path=settings.dev_key_path),)
    return KeySource(files=files, directory=keys.directory, signing_kid=keys.signing_kid)


def _dev_key(path: Path, alg: str) -> None:
    if not path.exists():
        _, jwk = generate_key(alg)
        try:
            write_key_file(path, jwk)
        except OSError as exc:  # data_dir is a file, read-only, on /proc...: say so, no trace
            raise ConfigError(
                f"setting data_dir: cannot write the development key {str(path)!r} "
                f"({exc.strerror or type(exc).__name__}); make data_dir a writable directory "
                "or configure keys.files"
            ) from None
        log.warning("generated a development signing key at %s: do not use it in production", path)


async def external_issuers(settings: Settings) -> tuple[Issuers | None, list[RemoteKeySet]]:
    """Each configured issuer's key set after its first fetch (started concurrently), and
    the routing TokenService uses; (None, []) when no issuer is configured."""
    if not settings.issuers:
        return None, []
    remotes = [RemoteKeySet(external.options()) for external in settings.issuers]
    try:
        await asyncio.gather(*(remote.start() for remote in remotes))
    except BaseException:
        for remote in remotes:
            await remote.close()
        raise
    leeway = settings.tokens.leeway_s
    issuers = Issuers(
        settings.tokens.issuer,
        (
            Issuer(
                remote.issuer,
                remote,
                ClaimsPolicy(
                    issuer=remote.issuer,
                    audiences=remote.settings.audiences,
                    leeway_s=leeway,
                    max_lifetime_s=remote.settings.max_lifetime_s,
                    accepted_typs=EXTERNAL_ACCESS_TYPS,
                ),
            )
            for remote in remotes
        ),
    )
    return issuers, remotes
