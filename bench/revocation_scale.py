"""The revocation set at scale (issue 16): RSS, start time and Verify latency of one sidecar
holding 0, 100,000 and 1,000,000 live revocations, on SQLite and on Redis, for two versions
of the code in the same run (before: a git ref exported with `git archive`; after: this tree).

    python -m bench --only revocation_scale [--sizes 0,100000,1000000] [--before-ref main]
    python bench/revocation_scale.py --sizes 0,100000 --stores sqlite --window 12

For each (code, store): the sidecar is started once empty (that creates the schema of its own
version), stopped, and for each size the store is filled in bulk to that many live revocations
(random 22-character jtis, as the sidecar mints them, one issuer, horizon two hours away) and
the sidecar started again with default settings (store.sync_interval_s 5 s, Redis timeout 1 s):
first with no local snapshot (a new pod), then, when that version wrote one at stop, once more
from it (a restart), and on Redis, when that version keeps a snapshot in the store (issue 16,
stop 20: written by the first of these sidecars), once more with an empty data directory (a new
pod when another sidecar already wrote the store's snapshot; "loaded from": store snapshot).
Before each size's first start the store's snapshot is deleted with the local one: the filler
bypasses the feed, so neither could be followed by what it wrote. Measured: start (spawn to the
serving banner, which comes after the load; and the CPU seconds the process had used by then,
which a machine shared with other work inflates less than the wall time; on Redis also the CPU
seconds the server spent meanwhile, most of it the scan's pages; the load average is recorded),
RSS after start and after the window, and Verify latency from 8 concurrent callers over TCP for
`--window` seconds (about two reconciliations at the default interval), p50 / p99 / worst.
Redis runs in a private `redis-server` on a free port (nothing on disk). A sidecar that does
not start is reported as such, with what it printed.

Results: bench/results/revocation_scale.md keeps every run, the newest on top (with its
command, commit and time); revocation_scale.json holds the newest run's rows.

Bytecode: an installed sidecar (the image's `pip install`) starts from compiled bytecode, so
the sidecars here may write and read theirs, in a cache of this run (PYTHONPYCACHEPREFIX; the
empty start above fills it), whatever PYTHONDONTWRITEBYTECODE says: otherwise every measured
start would also compile each tree's ~150 modules from source (about 0.13 CPU-s, issue 16).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from authsidecar.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402  (needs the path above)
from sidecar.store.redis_keys import KeyLayout, encode_member  # noqa: E402  (same in both)

ISSUER = "https://authsidecar.local"
PREFIX = "bench-scale"
CALLERS = 8
SNAPSHOT = "revocations.snapshot"  # where this version keeps its snapshot in the data dir


def _jtis(count: int) -> list[str]:
    raw = os.urandom(16 * count)
    return [
        base64.urlsafe_b64encode(raw[i : i + 16]).rstrip(b"=").decode()
        for i in range(0, len(raw), 16)
    ]


def _which(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found on PATH")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """utime + stime of the process so far (all threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_cpu_s(url: str) -> float:
    """CPU seconds the Redis server has used so far (INFO cpu, user + system)."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Sidecar:
    def __init__(self, code: Path, data: Path, env: dict[str, str]) -> None:
        self.code, self.data, self.env = code, data, env
        self.proc: subprocess.Popen[str] | None = None
        self.tcp = self.admin = ""
        self.start_s = 0.0
        self.failure = ""

    def start(self) -> bool:
        full = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AUTHSIDECAR_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        full.update(
            PYTHONPYCACHEPREFIX=str(self.data.parent / "pycache"),
            # Both packages of that tree (the sidecar, and the client package it imports).
            PYTHONPATH=os.pathsep.join((str(self.code), str(self.code / "clients" / "python"))),
            AUTHSIDECAR_DATA_DIR=str(self.data),
            AUTHSIDECAR_LISTEN__TCP="127.0.0.1:0",
            AUTHSIDECAR_LOG_LEVEL="WARNING",
            AUTHSIDECAR_TOKENS__ISSUER=ISSUER,
            **self.env,
        )
        began = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve"],
            cwd=self.code,
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.start_s = time.perf_counter() - began
        if "authsidecar serving" not in line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=30)
            tail = [x for x in err.splitlines() if x.strip()][-1:] or [line.strip()]
            self.failure = tail[0][:200]
            return False
        for part in line.split():
            if part.startswith("tcp="):
                self.tcp = part[4:]
            if part.startswith("admin="):
                self.admin = part[6:]
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate(timeout=10)


async def _verify_load(sidecar: Sidecar, window_s: float) -> dict[str, float]:
    async with (
        grpc.aio.insecure_channel(f"unix:{sidecar.admin}") as admin,
        grpc.aio.insecure_channel(sidecar.tcp) as public,
    ):
        issue = auth_pb2_grpc.AuthServiceStub(admin).Issue
        tokens = [
            (
                await issue(auth_pb2.IssueRequest(subject=f"u{i}", audience=["svc"]), timeout=30)
            ).access_token
            for i in range(64)
        ]
        verify = auth_pb2_grpc.AuthServiceStub(public).Verify
        for token in tokens[:8]:  # warm up the channel and the code paths
            await verify(auth_pb2.VerifyRequest(token=token, audience="svc"), timeout=30)
        latencies: list[float] = []
        errors = 0
        end = time.perf_counter() + window_s

        async def caller(n: int) -> None:
            nonlocal errors
            i = n
            while time.perf_counter() < end:
                request = auth_pb2.VerifyRequest(token=tokens[i % len(tokens)], audience="svc")
                i += CALLERS
                began = time.perf_counter()
                try:
                    await verify(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                latencies.append(time.perf_counter() - began)

        await asyncio.gather(*(caller(n) for n in range(CALLERS)))
    latencies.sort()
    return {
        "calls_per_s": len(latencies) / window_s,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "worst_ms": latencies[-1] * 1000,
        "errors": errors,
    }


class Filler:
    """Brings a store to N live revocations in bulk (both versions' layouts)."""

    def __init__(self, store: str, data: Path, redis_url: str, prefix: str, code: Path) -> None:
        self.store, self.data, self.redis_url, self.prefix = store, data, redis_url, prefix
        self.count = 0
        keys_module = code / "sidecar" / "store" / "redis_keys.py"
        self.partitioned = "def partition_of" in keys_module.read_text()

    def _revoked_key(self, jti: str) -> str:
        """Where the code under test keeps this jti's revocation: one partition per hash tag
        since issue 16's sharding (`KeyLayout.partition_of`), one set `{prefix}:revoked`
        before (which the partitioned code also reads, as the old layout)."""
        if self.partitioned:
            return KeyLayout(self.prefix).partition_of(jti).revoked
        return "{" + self.prefix + "}:revoked"

    def fill(self, jtis: list[str], until: int) -> None:
        new = jtis[self.count :]
        if not new:
            return
        if self.store == "sqlite":
            db = sqlite3.connect(self.data / "state.db")
            columns = {row[1] for row in db.execute("PRAGMA table_info(revocations)")}
            with db:
                if "seq" in columns:  # issue 16's schema: positions, and the sequence
                    base = db.execute("SELECT value FROM sequence").fetchone()[0]
                    db.executemany(
                        "INSERT INTO revocations (kind, issuer, key, expires_at, seq)"
                        " VALUES ('jti', ?, ?, ?, ?)",
                        ((ISSUER, jti, until, base + i + 1) for i, jti in enumerate(new)),
                    )
                    db.execute("UPDATE sequence SET value = ?", (base + len(new),))
                else:
                    db.executemany(
                        "INSERT INTO revocations (kind, issuer, key, expires_at)"
                        " VALUES ('jti', ?, ?, ?)",
                        ((ISSUER, jti, until) for jti in new),
                    )
            db.close()
        else:
            client = redis.Redis.from_url(self.redis_url, socket_timeout=60)
            for start in range(0, len(new), 50_000):
                batch = new[start : start + 50_000]
                by_key: dict[str, dict[str, int]] = {}
                for jti in batch:
                    by_key.setdefault(self._revoked_key(jti), {})[
                        encode_member("jti", ISSUER, jti)
                    ] = until
                for key, members in by_key.items():
                    client.zadd(key, members)
            client.close()
        self.count = len(jtis)


def _run_store(
    label: str, code: Path, store: str, sizes: list[int], jtis: list[str], work: Path,
    redis_url: str, window_s: float,
) -> list[dict[str, Any]]:  # fmt: skip
    data = work / f"{label}-{store}"
    data.mkdir(parents=True)
    prefix = f"{PREFIX}-{label}"
    env = {"AUTHSIDECAR_STORE__BACKEND": store}
    if store == "redis":
        env.update(
            AUTHSIDECAR_STORE__REDIS_URL=redis_url, AUTHSIDECAR_STORE__REDIS_KEY_PREFIX=prefix
        )
    filler = Filler(store, data, redis_url, prefix, code)
    until = int(time.time()) + 7200
    rows = []
    primer = Sidecar(code, data, env)  # creates the store's schema, as that version has it
    if primer.start():
        primer.stop()
    snapshot = data / SNAPSHOT
    for size in sizes:
        filler.fill(jtis[:size], until)
        # First start of a new pod: no snapshot (the filler bypasses the store's feed, so an
        # older snapshot would not be followed by what it wrote). Then, where the version
        # left one at stop, the restart from it.
        snapshot.unlink(missing_ok=True)
        stored = _drop_store_snapshot(redis_url, prefix) if store == "redis" else ""
        for start in ("full", "snapshot", "store snapshot"):
            if start == "snapshot" and not snapshot.exists():
                continue
            if start == "store snapshot" and not (stored and _exists(redis_url, stored)):
                continue
            # A new pod's data directory is empty; the other starts share the version's.
            home = data if start != "store snapshot" else work / f"{label}-{store}-{size}-new"
            home.mkdir(exist_ok=True)
            sidecar = Sidecar(code, home, env)
            row: dict[str, Any] = {
                "code": label,
                "store": store,
                "revocations": size,
                "start": start,
                "loadavg": os.getloadavg()[0],
            }
            redis_cpu = _redis_cpu_s(redis_url) if store == "redis" else 0.0
            try:
                if not sidecar.start():
                    row["failed"] = sidecar.failure
                else:
                    assert sidecar.proc is not None
                    row["start_s"] = sidecar.start_s
                    row["start_cpu_s"] = _cpu_s(sidecar.proc.pid)
                    if store == "redis":  # what the server spent on this start (its reads)
                        row["redis_cpu_s"] = _redis_cpu_s(redis_url) - redis_cpu
                    row["rss_start_mib"] = _rss(sidecar.proc.pid) / 2**20
                    row.update(asyncio.run(_verify_load(sidecar, window_s)))
                    row["rss_end_mib"] = _rss(sidecar.proc.pid) / 2**20
            finally:
                sidecar.stop()
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _drop_store_snapshot(url: str, prefix: str) -> str:
    """Delete the store-served snapshot of `prefix` (this tree's key: the older code keeps
    none) and its writer's lease; returns the snapshot's key."""
    tag = KeyLayout(prefix).snapshot_tag
    client = redis.Redis.from_url(url)
    client.delete(f"{tag}:data", f"{tag}:lease")
    client.close()
    return f"{tag}:data"


def _exists(url: str, key: str) -> bool:
    client = redis.Redis.from_url(url)
    found = bool(client.exists(key))
    client.close()
    return found


def _table(rows: list[dict[str, Any]]) -> str:
    base = {
        (r["code"], r["store"], r["start"]): r
        for r in rows
        if r["revocations"] == 0 and "failed" not in r
    }
    lines = [
        "| code | store | revocations | loaded from | start s (CPU s; Redis CPU s) | load avg |"
        " RSS after start MiB (+ vs 0) | RSS after window MiB (+ vs 0) | Verify/s | p50 ms |"
        " p99 ms | worst ms |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        head = (
            f"| {r['code']} | {r['store']} | {r['revocations']:,} |"
            f" {'store' if r['start'] == 'full' else r['start']} |"
        )
        if "failed" in r:
            lines.append(f"{head} did not start: {r['failed']} | {r['loadavg']:.1f} | | | | | | |")
            continue
        redis_cpu = f"; {r['redis_cpu_s']:.2f}" if "redis_cpu_s" in r else ""
        b = base.get((r["code"], r["store"], r["start"]))
        d1 = r["rss_start_mib"] - b["rss_start_mib"] if b else float("nan")
        d2 = r["rss_end_mib"] - b["rss_end_mib"] if b else float("nan")
        lines.append(
            f"{head} {r['start_s']:.2f} ({r['start_cpu_s']:.2f}{redis_cpu}) | {r['loadavg']:.1f} |"
            f" {r['rss_start_mib']:.0f} (+{d1:.0f}) |"
            f" {r['rss_end_mib']:.0f} (+{d2:.0f}) | {r['calls_per_s']:.0f} |"
            f" {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['worst_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0,100000,1000000")
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--before-ref", default="main", help="git ref of the 'before' code")
    parser.add_argument("--no-before", action="store_true", help="measure this tree only")
    parser.add_argument("--window", type=float, default=12.0, help="seconds of Verify load")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    stores = args.stores.split(",")
    jtis = _jtis(max(sizes))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rscale-", dir="/tmp") as tmp:
        work = Path(tmp)
        codes = [("after", ROOT)]
        if not args.no_before:
            before = work / "before-code"
            before.mkdir()
            archive = subprocess.run(
                [_which("git"), "-C", str(ROOT), "archive", args.before_ref],
                check=True,
                capture_output=True,
            ).stdout
            subprocess.run([_which("tar"), "-x", "-C", str(before)], input=archive, check=True)
            codes.insert(0, ("before", before))
        redis_proc = None
        redis_url = ""
        if "redis" in stores:
            port = _free_port()
            redis_proc = subprocess.Popen(
                [_which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", tmp],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            redis_url = f"redis://127.0.0.1:{port}/0"
            for _ in range(100):
                try:
                    redis.Redis.from_url(redis_url).ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
        try:
            for store in stores:
                for label, code in codes:
                    rows += _run_store(
                        label, code, store, sizes, jtis, work, redis_url, args.window
                    )
        finally:
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(timeout=30)
    table = _table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "revocation_scale.json").write_text(json.dumps(rows, indent=1))
    _record(args.out / "revocation_scale.md", argv, table)
    print(table)
    return 0


def _record(path: Path, argv: list[str] | None, table: str) -> None:
    """Put this run on top of the runs already recorded in `path`: a start is one process's
    start, so one run alone says little, and the comparisons in docs/performance.md cite
    earlier runs by number (the JSON beside it holds this run only)."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    ref = subprocess.run(
        [_which("git"), "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        [
            _which("git"),
            "-C",
            str(ROOT),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!bench/results",
        ],  # this run's own JSON is written by now
        capture_output=True,
        text=True,
    ).stdout.strip()
    command = " ".join(["python -m bench --only revocation_scale", *(argv or sys.argv[1:])])
    head = f"Run of {when}: `{command}` at {ref or 'an unknown commit'}"
    head += " (with uncommitted changes)" if dirty else ""
    earlier = path.read_text() if path.exists() else ""
    path.write_text(f"{head}.\n\n{table}\n" + (f"\n{earlier}" if earlier else ""))


if __name__ == "__main__":
    sys.exit(main())
