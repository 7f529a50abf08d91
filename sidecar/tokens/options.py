"""What the token engine is told at start: plain frozen values, no defaults.

The configuration file's schema (sidecar/config/tokens.py, `TokenSettings.options()`) owns
the defaults and the bounds and builds one of these; the engine never sees the file, the
environment or the parser, so a test or a benchmark hands it exactly the values it means.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenOptions:
    """The `tokens` section as the engine uses it (docs: README, "Configuration")."""

    issuer: str
    # Verify accepts a token only if its `aud` names one of these (when any are set).
    audiences: tuple[str, ...]
    # Issue uses this audience when the request names none.
    default_audience: tuple[str, ...]
    access_ttl_s: int
    max_access_ttl_s: int
    refresh_ttl_s: int
    family_ttl_s: int
    leeway_s: int
    max_token_bytes: int
    refresh_grace_s: int
    verify_cache_entries: int
    verify_cache_bytes: int
    max_verify_batch: int
