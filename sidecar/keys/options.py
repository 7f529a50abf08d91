"""What the key code is told at start: plain frozen values, no defaults beyond "not given".

The configuration schema (sidecar/config/keys.py and config/issuers.py) validates the file
and builds these; nothing under sidecar/keys sees the parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class KeyFile:
    """One configured key file. For PEM files, which carry neither: `kid` defaults to the
    RFC 7638 thumbprint and `alg` to the one the key type implies (loader.py)."""

    path: Path
    kid: str | None = None
    alg: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalIssuerOptions:
    """One external issuer (config `issuers`, docs/keys.md "External issuers"): where its
    key set comes from, how it is fetched, and what its tokens must satisfy."""

    issuer: str
    audiences: tuple[str, ...]
    # Exactly one of the two (checked by the schema).
    jwks_url: str | None
    jwks_file: Path | None
    refresh_s: float
    min_refetch_interval_s: float
    # Empty: every asymmetric algorithm we implement.
    algorithms: tuple[str, ...]
    ca_file: Path | None
    timeout_s: float
    max_response_bytes: int
    max_lifetime_s: int
