"""A/B of in-process `Verifier.verify` (cache off) between two checkouts, interleaved.

    python -m bench.verify_ab BEFORE_ROOT AFTER_ROOT [ROUNDS]

Each checkout runs in its own worker process (its tree first on PYTHONPATH), which builds
HS256, ES256 and RS256 keys and 64 tokens each once, then answers every round with the CPU
time (`time.process_time`, so a loaded machine's scheduling matters less than wall time) per
call of `Verifier.verify` with a zero-entry verify cache. Rounds alternate which checkout
goes first. Reported: each side's median and the median of per-round after/before ratios
with its quartiles. Run it A/A (the same root twice) to see the noise floor (issue 12:
"in-process Verify cost must not get slower").
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALGS = ("HS256", "ES256", "RS256")
CALLS = {"HS256": 20000, "ES256": 6000, "RS256": 6000}


def worker() -> None:
    import sidecar
    from bench.tokens import make_key

    tmp = Path(tempfile.mkdtemp())
    verifiers = {}
    for alg in ALGS:
        minted = make_key(tmp, alg, 64)
        verifier = minted.service(cache_entries=0)._verifier
        for token in minted.tokens:
            verifier.verify(token)  # warm-up; every token must verify
        verifiers[alg] = (verifier, minted.tokens)
    print(json.dumps({"ready": sidecar.__file__}), flush=True)
    for _ in sys.stdin:
        out = {}
        for alg in ALGS:
            verifier, pool = verifiers[alg]
            n, k, verify = CALLS[alg], len(pool), verifier.verify
            began = time.process_time()
            for i in range(n):
                verify(pool[i % k])
            out[alg] = (time.process_time() - began) / n * 1e6
        print(json.dumps(out), flush=True)


def main(before: str, after: str, rounds: int) -> None:
    trees = {"before": before, "after": after}
    procs = {}
    for name, root in trees.items():
        env = dict(os.environ, PYTHONPATH=f"{root}:{root}/clients/python")
        procs[name] = subprocess.Popen(
            # This file, by path: the "before" checkout may not have it.
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        print(name, procs[name].stdout.readline().strip(), flush=True)  # type: ignore[union-attr]
    results: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for r in range(rounds):
        for name in list(trees) if r % 2 == 0 else list(reversed(trees)):
            proc = procs[name]
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            for alg, us in json.loads(proc.stdout.readline()).items():  # type: ignore[union-attr]
                results[name].setdefault(alg, []).append(us)
    for proc in procs.values():
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait()
    print(f"alg    before_us  after_us  change  after/before per round: median [q1, q3] ({rounds})")
    for alg in ALGS:
        a, b = results["before"][alg], results["after"][alg]
        ratios = sorted(y / x for x, y in zip(a, b, strict=True))
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        ma, mb = statistics.median(a), statistics.median(b)
        print(
            f"{alg}  {ma:9.2f} {mb:9.2f}  {100 * (mb - ma) / ma:+5.1f}%  "
            f"{statistics.median(ratios):.3f} [{q1:.3f}, {q3:.3f}]"
        )


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 31)
