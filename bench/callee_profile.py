"""Where the CPU of a two-service cell goes: `python -m bench.callee_profile KIND`.

    .venv/bin/python -m bench.callee_profile default --tokens reused --concurrency 16

Starts the processes of one cell of bench/two_service.py exactly as it does (a sidecar for
`verify` and `default`, the callee, the caller's load processes), drives the cell, and
samples the callee and the sidecar with py-spy over the measured window (`--nonblocking`, so
the sampled process is never paused; `--native` adds grpc's Cython/C frames, pausing it).
Prints, per process, the functions holding the largest share of the samples, inclusive (on
the stack) and self (on top), and the share of samples inside the client library
(`authsidecar/client`). Not part of `python -m bench`: it is how the reason for a missed
target is measured (docs/performance.md, "Two services").
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import callee, procs, two_service
from bench.tokens import make_key


def _spy(pid: int, seconds: float, out: Path, native: bool) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args = [py_spy, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-f", "raw"]
    args += ["--function", "-o", str(out)]
    args += ["--native"] if native else ["--nonblocking"]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise(raw: str, top: int) -> str:
    """Inclusive and self shares of the collapsed stacks py-spy wrote."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = client = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        if "authsidecar/client" in stack:
            client += count
    if not total:
        return "  no samples"
    lines = [f"  {total} samples; inside authsidecar/client: {client / total:.1%}"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        lines.append(f"  top {top} {title}:")
        for frame, count in counter.most_common(top):
            lines.append(f"    {count / total:6.1%}  {frame}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callee_profile", description=__doc__)
    parser.add_argument("kind", choices=callee.KINDS)
    parser.add_argument("--tokens", choices=two_service.TOKEN_MODES, default="reused")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--native", action="store_true", help="also grpc's C/Cython frames (pauses the process)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="asb-prof-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        minted = make_key(workdir, two_service.ALG, 0)
        minter = two_service.Minter(minted)
        servers: list[procs.Server] = []
        try:
            sidecar = None
            if args.kind in ("verify", "default"):
                sidecar = two_service.start_sidecar(workdir, minted, "sidecar")
                servers.append(sidecar)
            target = two_service.start_callee(workdir, args.kind, minted, sidecar)
            servers.append(target)
            rate = 4000.0
            count = two_service.IDENTITIES
            if args.tokens == "one-shot":
                count = int(rate * (args.seconds + args.warmup + 1) * 1.5)
            tokens = minter.mint(count)
            box: dict[str, Any] = {}

            def load() -> None:
                box.update(
                    procs.drive(
                        target,
                        transport="tcp",
                        method=callee.METHOD,
                        payloads=[two_service.PAYLOAD],
                        concurrency=args.concurrency,
                        duration_s=args.seconds,
                        warmup_s=args.warmup,
                        tokens=tokens,
                        one_shot=args.tokens == "one-shot",
                        sidecars=(sidecar,) if sidecar is not None else (),
                    )
                )

            worker = threading.Thread(target=load)
            worker.start()
            time.sleep(args.warmup + 1.0)  # the load processes start, then the warm-up
            spies = [
                (server, out, _spy(server.pid, args.seconds - 1.5, out, args.native))
                for i, server in enumerate(servers)
                for out in [workdir / f"{i}.raw"]
            ]
            worker.join()
            for _, _, spy in spies:
                spy.wait(timeout=60)
            print(f"{args.kind}, {args.tokens} tokens, {args.concurrency} in flight:")
            cell = {"tokens": args.tokens, "concurrency": args.concurrency, "column": args.kind}
            print("  " + two_service.line({**cell, **box}))
            for server, out, _ in spies:
                print(f"{server.name} (pid {server.pid}):")
                print(summarise(out.read_text() if out.exists() else "", args.top))
        finally:
            for server in reversed(servers):
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
