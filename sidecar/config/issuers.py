"""The `issuers` list: other issuers whose access tokens Verify accepts (docs/keys.md,
"External issuers"), each with its key set's source and its tokens' rules."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from sidecar.config.base import Frozen, IssuerName
from sidecar.config.keys import SIGNING_ALGS
from sidecar.jwa import check_issuer_algorithms
from sidecar.keys.options import ExternalIssuerOptions


class ExternalIssuerSettings(Frozen):
    """A second issuer whose tokens Verify accepts (a company IdP); docs/keys.md,
    "External issuers". Its keys come from `jwks_url` (HTTPS only) or `jwks_file`."""

    # Compared exactly with the token's `iss`; never our own tokens.issuer.
    issuer: IssuerName
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

    @field_validator("audiences")
    @classmethod
    def _audiences(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not all(value):
            raise ValueError("audiences must be non-empty strings")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_issuer_algorithms(value)

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

    def options(self) -> ExternalIssuerOptions:
        """What keys/remote.py fetches and tokens/issuers.py enforces for this issuer."""
        return self.to(ExternalIssuerOptions)
