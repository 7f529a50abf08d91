"""Where the shared JOSE vectors are: `../shared/vectors` next to the checkout.

The vectors are not copied into the project (their README asks us not to). A run that cannot
find them fails instead of skipping, so "0 invalid tokens accepted" is never claimed on no
evidence. `AUTHSIDECAR_VECTORS_DIR` points elsewhere when the checkout lives apart from them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_CANDIDATES = (
    os.environ.get("AUTHSIDECAR_VECTORS_DIR", ""),
    str(REPO_ROOT.parent / "shared" / "vectors"),
    "/work/shared/vectors",
)


def vectors_dir() -> Path:
    for candidate in _CANDIDATES:
        if candidate and (Path(candidate) / "wycheproof").is_dir():
            return Path(candidate)
    pytest.fail(
        "JOSE vectors not found (looked in: "
        + ", ".join(c for c in _CANDIDATES if c)
        + "); set AUTHSIDECAR_VECTORS_DIR",
        pytrace=False,
    )


def load_json(relative: str) -> Any:
    return json.loads((vectors_dir() / relative).read_text(encoding="utf-8"))
