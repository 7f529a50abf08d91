"""In-process cold and warm Verify of whichever source tree is on sys.path (issue 12).

bench/verify_compare.py runs this file's source with `python -c`, from the tree under test
(this tree, or one exported with `git archive`), so every import below is that tree's own.
It uses only what both trees of issue 12's comparison share (bench.tokens.make_key,
bench.inprocess.per_second and MISS_CACHE_ENTRIES, TokenService.verify through
Minted.service), exactly as bench/inprocess.py measures its "cache miss" and "cache hit"
rows. A tree without them prints {"error": ...}: not comparable in-process, and the compare
says so instead of guessing.

argv[1]: JSON {"algs": [...], "seconds": s, "pool": n, "dir": path}; one JSON line out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _rates(
    service_of: Any, tokens: list[str], seconds: float, per_second: Any, miss_entries: int
) -> dict[str, Any]:
    """Calls per second of a missing and a hitting verify; `service_of(entries)` builds a
    TokenService with that verify cache."""
    small, warm = service_of(miss_entries), service_of(1024)
    counter = iter(range(1 << 62))
    return {
        "cold": per_second(lambda: small.verify(tokens[next(counter) % len(tokens)]), seconds),
        "warm": per_second(lambda: warm.verify(tokens[next(counter) % 8]), seconds),
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        from bench.inprocess import MISS_CACHE_ENTRIES, per_second
        from bench.tokens import make_key
    except ImportError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    rows: dict[str, dict[str, float]] = {}
    for alg in spec["algs"]:
        minted = make_key(Path(spec["dir"]), alg, spec["pool"])
        try:
            rows[alg] = _rates(
                lambda entries, m=minted: m.service(cache_entries=entries),
                minted.tokens, spec["seconds"], per_second, MISS_CACHE_ENTRIES,
            )  # fmt: skip
        except (AttributeError, TypeError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
    return {"rows": rows}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))), flush=True)
