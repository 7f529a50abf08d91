"""The `keys` section: our own signing and verification keys (docs/keys.md), and the list
of JWS algorithms a configured key or issuer may name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from sidecar.config.base import Frozen
from sidecar.jwa import algorithm_names
from sidecar.keys.options import KeyFile

SIGNING_ALGS = algorithm_names()  # the registry's table (sidecar/jwa.py)


class KeyFileSettings(Frozen):
    path: Path
    # For PEM files, which carry neither: defaults are the RFC 7638 thumbprint and the
    # algorithm the key type implies (RS256, or ES256/384/512 by curve).
    kid: str | None = None
    alg: Literal[SIGNING_ALGS] | None = None  # type: ignore[valid-type]

    def options(self) -> KeyFile:
        return self.to(KeyFile)


class KeySettings(Frozen):
    # In the environment: a comma-separated list of paths, or a JSON list.
    files: Annotated[tuple[KeyFileSettings, ...], NoDecode] = ()
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

    def key_files(self) -> tuple[KeyFile, ...]:
        """The configured key files as the key code takes them (keys/keyset.py)."""
        return tuple(file.options() for file in self.files)
