"""The results: one console line per cell, the Markdown report, and issue 7's targets.

Every ratio is between two numbers of the same run (the machine is shared and noisy; absolute
numbers move run to run, ratios much less).
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from typing import Any

from bench import two_service_report

Row = dict[str, Any]
# The unary cold Verify cell of the algorithms the verify group does not cover.
ALGORITHMS_CELL = "sidecar cold (every algorithm)"


def _num(value: Any, fmt: str = "{:.0f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def clean(value: Any) -> Any:
    """NaN and infinities become null, so the JSON is strict (RFC 8259)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def median_of(runs: list[Row]) -> Row:
    """One row from several rounds: the median of each number, errors summed, and the
    per-round throughputs kept (`rounds_calls_per_s`) to show the spread."""
    merged: Row = {"rounds_calls_per_s": [r["calls_per_s"] for r in runs]}
    for key in runs[0]:
        if key == "errors":
            errors: dict[str, int] = {}
            for run in runs:
                for code, count in run["errors"].items():
                    errors[code] = errors.get(code, 0) + count
            merged["errors"] = errors
        elif key == "calls":
            merged["calls"] = sum(r["calls"] for r in runs)
        else:
            values = [r[key] for r in runs if isinstance(r[key], int | float)]
            merged[key] = statistics.median(values) if values else None
    return merged


def line(row: Row) -> str:
    errors = sum(row["errors"].values()) if row.get("errors") else 0
    return (
        f"{row['group']:10} {row['server'][:44]:44} {row['alg']:6} {row['transport']:5} "
        f"c={row['concurrency']:<3} {row['loadgen']:7} {_num(row['calls_per_s']):>7} calls/s "
        f"{_num(row['items_per_s']):>7} items/s p50 {_num(row['p50_ms'], '{:.2f}'):>6} "
        f"p99 {_num(row['p99_ms'], '{:.2f}'):>6} p999 {_num(row['p999_ms'], '{:.2f}'):>6} ms "
        f"cpu {_num(row['server_cpu_s_per_1k'], '{:.3f}')} s/1k"
        + (f" ERRORS {row['errors']}" if errors else "")
    )


def _find(rows: list[Row], **where: Any) -> Row | None:
    for row in rows:
        if all(row.get(k) == v for k, v in where.items()):
            return row
    return None


def _rate(rows: list[Row], key: str = "calls_per_s", **where: Any) -> float | None:
    row = _find(rows, **where)
    return None if row is None else float(row[key])


def _inproc(doc: dict[str, Any], name: str, alg: str) -> float | None:
    for row in doc.get("inprocess", []):
        if row["name"] == name and row["alg"] == alg:
            return float(row["per_s"])
    return None


def _at_least(goal: float, value: float) -> bool:
    return value >= goal


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def targets(doc: dict[str, Any]) -> list[Row]:
    """Issue 7's targets, each with the measured value and whether it is met."""
    rows: list[Row] = doc["rows"]
    out: list[Row] = []

    def add(name: str, value: float | None, goal: str, met: Callable[[float], bool]) -> None:
        out.append(
            {
                "target": name,
                "value": value,
                "goal": goal,
                "met": None if value is None else bool(met(value)),
            }
        )

    uds16: dict[str, Any] = {"transport": "uds", "concurrency": 16, "loadgen": "python"}
    floor = _rate(rows, server="no-op (grpc.aio)", **uds16)
    for alg in ("HS256", "RS256", "ES256"):
        cold = _rate(rows, server="sidecar cold", alg=alg, **uds16)
        naive = _rate(rows, server="naive jose.jwt.decode", alg=alg, **uds16)
        add(
            f"cold Verify {alg} / naive sidecar (UDS, c=16)",
            _ratio(cold, naive),
            ">= 1.5",
            lambda v: v >= 1.5,
        )
        add(
            f"cold Verify {alg} / no-op floor (UDS, c=16)",
            _ratio(cold, floor),
            ">= 0.80",
            lambda v: v >= 0.8,
        )
    # The same two ratios with a C load generator (h2load, TCP): the server gets a whole core
    # instead of sharing it with a Python client, so its own costs weigh more.
    h2: dict[str, Any] = {"loadgen": "h2load"}
    h2_floor = _rate(rows, server="no-op (grpc.aio)", **h2)
    for alg in ("HS256", "RS256", "ES256"):
        off = _rate(rows, server="sidecar cache off", alg=alg, **h2)
        naive = _rate(rows, server="naive jose.jwt.decode", alg=alg, **h2)
        if off is None:
            continue
        add(
            f"Verify {alg}, cache off / naive sidecar (h2load, TCP)",
            _ratio(off, naive),
            ">= 1.5",
            lambda v: v >= 1.5,
        )
        add(
            f"Verify {alg}, cache off / no-op floor (h2load, TCP)",
            _ratio(off, h2_floor),
            ">= 0.80",
            lambda v: v >= 0.8,
        )
    warm = _rate(rows, server="sidecar warm", alg="HS256", **uds16)
    add(
        "warm Verify HS256 / no-op floor (UDS, c=16)",
        _ratio(warm, floor),
        ">= 0.95",
        lambda v: v >= 0.95,
    )
    p99 = _find(rows, server="sidecar warm", alg="HS256", transport="uds", concurrency=1)
    add(
        "warm Verify p99 ms, 1 connection, UDS",
        None if p99 is None else p99["p99_ms"],
        "< 1.0",
        lambda v: v < 1.0,
    )
    for alg, goal in (("HS256", 30_000), ("RS256", 15_000)):
        best = max(
            (r["items_per_s"] for r in rows if r["group"] == "batch" and r["alg"] == alg),
            default=None,
        )
        add(f"VerifyBatch {alg} tokens/s", best, f">= {goal}", functools.partial(_at_least, goal))
        jose = _inproc(doc, "python-jose decode", alg)
        add(
            f"in-process python-jose {alg} / VerifyBatch per token",
            _ratio(jose, best),
            "<= 1.3",
            lambda v: v <= 1.3,
        )
    es = _rate(rows, server="Issue (access token)", alg="ES256")
    add("Issue ES256 /s", es, ">= 10000", lambda v: v >= 10_000)
    rs = _rate(rows, server="Issue (access token)", alg="RS256")
    add(
        "Issue RS256 / raw RS256 sign primitive",
        _ratio(rs, _inproc(doc, "raw RS256 sign primitive", "RS256")),
        ">= 0.80",
        lambda v: v >= 0.8,
    )
    add(
        "Refresh (redis) /s",
        _rate(rows, server="Refresh (redis store)"),
        ">= 1500",
        lambda v: v >= 1500,
    )
    return out


def _us(doc: dict[str, Any], alg: str, **where: Any) -> float | None:
    """µs/call of the in-process row of `alg` matching `where`; None if not measured."""
    row = _find(doc.get("inprocess", []), alg=alg, **where)
    return None if row is None else float(row["us_per_call"])


def _cold(rows: list[Row], alg: str) -> Row | None:
    """The unary cold Verify cell of `alg` (UDS, 16 in flight, Python load): the verify
    group's for its algorithms, the algorithms group's for the rest."""
    uds16: dict[str, Any] = {"transport": "uds", "concurrency": 16, "loadgen": "python"}
    for server in ("sidecar cold", ALGORITHMS_CELL):
        row = _find(rows, server=server, alg=alg, **uds16)
        if row is not None:
            return row
    return None


def algorithms(doc: dict[str, Any], algs: tuple[str, ...]) -> list[Row]:
    """One row per algorithm, in `algs`' order: the in-process µs/call of the sidecar, the
    references and the raw primitives, and the unary cold Verify. None where not measured:
    a library without the algorithm, HMAC signing (its MAC is the raw verify), --quick."""
    out: list[Row] = []
    for alg in algs:
        primitive = _find(doc.get("inprocess", []), alg=alg, kind="primitive verify")
        cold = _cold(doc["rows"], alg)
        cpu = None if cold is None else cold["server_cpu_s_per_1k"]
        out.append(
            {
                "alg": alg,
                "verify_cache_off_us": _us(doc, alg, name="sidecar verify (cache off)"),
                "python_jose_us": _us(doc, alg, name="python-jose decode"),
                "pyjwt_us": _us(doc, alg, name="PyJWT decode"),
                "primitive": None if primitive is None else primitive["name"],
                "raw_verify_us": _us(doc, alg, kind="primitive verify"),
                "sign_us": _us(doc, alg, name="sidecar sign (encode_jws)"),
                "raw_sign_us": _us(doc, alg, kind="primitive sign"),
                "cold_calls_per_s": None if cold is None else cold["calls_per_s"],
                "cold_server_cpu_us": None if cpu is None else cpu * 1000,
            }
        )
    return out


def algorithms_table(rows: list[Row]) -> str:
    out = [
        "| alg | sidecar verify, cache off µs | python-jose µs | PyJWT µs | raw verify µs "
        "| primitive | sidecar sign µs | raw sign µs | cold Verify calls/s "
        "| server CPU µs/call |\n",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|\n",
    ]
    for r in rows:
        us = [
            _num(r[k], "{:.1f}")
            for k in ("verify_cache_off_us", "python_jose_us", "pyjwt_us", "raw_verify_us")
        ]
        out.append(
            f"| {r['alg']} | {' | '.join(us)} | {r['primitive'] or '-'} | "
            f"{_num(r['sign_us'], '{:.1f}')} | {_num(r['raw_sign_us'], '{:.1f}')} | "
            f"{_num(r['cold_calls_per_s'])} | {_num(r['cold_server_cpu_us'])} |\n"
        )
    return "".join(out)


_HEADER = (
    "| group | server | alg | transport | conc | load | calls/s | tokens/s | p50 ms | p99 ms "
    "| p999 ms | server CPU s / 1k calls | errors |\n"
    "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|\n"
)


def summary(doc: dict[str, Any]) -> str:
    """The key rows (UDS, 16 in flight, Python load generator; medians over the rounds) as
    throughput relative to the no-op floor (tokens/s for a batch), plus the targets."""
    rows: list[Row] = doc["rows"]
    floor = _rate(rows, server="no-op (grpc.aio)", transport="uds", concurrency=16)
    out = [
        "| server | alg | calls/s | tokens/s | x floor | p99 ms | server CPU µs/call |\n",
        "|---|---|---:|---:|---:|---:|---:|\n",
    ]
    for r in rows:
        if r["transport"] not in ("uds", "admin") or r["loadgen"] != "python":
            continue
        if r["concurrency"] != (4 if r["group"] == "batch" else 16):
            continue
        cpu = r["server_cpu_s_per_1k"]
        out.append(
            f"| {r['server']} | {r['alg']} | {_num(r['calls_per_s'])} | "
            f"{_num(r['items_per_s'])} | {_num(_ratio(r['items_per_s'], floor), '{:.2f}')} | "
            f"{_num(r['p99_ms'], '{:.1f}')} | {_num(None if cpu is None else cpu * 1000)} |\n"
        )
    out.append("\n| target | value | goal | met |\n|---|---:|---|---|\n")
    for t in doc["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        out.append(f"| {t['target']} | {_num(t['value'], '{:.2f}')} | {t['goal']} | {met} |\n")
    return "".join(out)


def markdown(doc: dict[str, Any]) -> str:
    """The whole report; a document holding only sections (two-service, verify cache)
    renders those."""
    two = doc.get("two_service")
    cache = doc.get("verify_cache")
    parts = [_suite_markdown(doc)] if "rows" in doc else []
    if cache is not None and cache.get("rows"):
        parts.append(verify_cache_markdown(cache))
    if two is not None:
        parts.append(two_service_report.markdown(two))
    propagation = doc.get("propagation")
    if propagation is not None:
        load = propagation["load_average"]
        parts.append(
            f"## Revocation propagation alone\n\nCommand: `{propagation['command']}`; load "
            f"average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the start.\n"
            + two_service_report.revocation_markdown(propagation["revocation"])
        )
    return "\n".join(parts)


def verify_cache_markdown(cell: dict[str, Any]) -> str:
    """The sidecar verify cache's paths against no cache: thread CPU per Verify."""
    rows = cell["rows"]
    load = cell.get("load_average")
    first = rows[0]
    out = [
        "## Sidecar verify cache: CPU per Verify on each path (issue 15)\n\n",
        f"Command: `{cell['command']}`"
        + (f"; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}" if load else "")
        + f". In-process, thread CPU µs per Verify over {first['tokens']} distinct tokens, "
        f"the paths interleaved in each of {first['rounds']} rounds: median (minimum).\n\n",
        "| alg | cache off | miss, first sighting | miss, stored | hit | first miss - off |\n",
        "|---|---:|---:|---:|---:|---:|\n",
    ]
    by_alg: dict[str, dict[str, Row]] = {}
    for row in rows:
        by_alg.setdefault(row["alg"], {})[row["path"]] = row
    for alg, paths in by_alg.items():
        cells = [
            f"{paths[p]['cpu_us_median']:.1f} ({paths[p]['cpu_us_min']:.1f})"
            for p in ("off", "miss", "insert", "hit")
        ]
        off, miss = paths["off"]["cpu_us_median"], paths["miss"]["cpu_us_median"]
        delta = f"{miss - off:+.1f} µs ({(miss - off) / off:+.0%})"
        out.append(f"| {alg} | " + " | ".join(cells) + f" | {delta} |\n")
    shared = cell.get("shared") or []
    if shared:
        out.append(
            "\nWith decision caches in the interceptors (bench/sidecar_cache.py): one callee "
            "process of N grpc.aio servers, each with its own interceptor defaults (decision "
            "cache, Watch, VerifyBatch), every token sent once to every server; the sidecar's "
            f"CPU (/proc) per token it was asked about, {shared[0]['alg']}, median of "
            f"{shared[0]['rounds']} interleaved rounds:\n\n"
            "| interceptors sharing each token | tokens | asked | sidecar cache | "
            "sidecar µs CPU per token asked |\n|---:|---:|---:|---|---:|\n"
        )
        for r in shared:
            out.append(
                f"| {r['interceptors']} | {r['tokens']} | {r['asked']:.0f} | "
                f"{r['sidecar_cache']} | {r['sidecar_cpu_us_per_asked']:.0f} |\n"
            )
    return "".join(out)


def _suite_markdown(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    parts = [
        f"Command: `{doc['command']}` ({doc['elapsed_s']:.0f} s); Python {env['python']}, "
        f"{env['cpus']} CPUs, grpcio {env['grpcio']}, protobuf {env['protobuf']}, "
        f"python-jose {env['python-jose']}, PyJWT {env['PyJWT']}.\n\n",
        "## Summary (UDS, 16 calls in flight; batch: 4)\n\n",
        summary(doc),
        "\n## Every cell\n\n",
        _HEADER,
    ]
    for r in doc["rows"]:
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or ""
        parts.append(
            f"| {r['group']} | {r['server']} | {r['alg']} | {r['transport']} | "
            f"{r['concurrency']} | {r['loadgen']} | {_num(r['calls_per_s'])} | "
            f"{_num(r['items_per_s'])} | {_num(r['p50_ms'], '{:.2f}')} | "
            f"{_num(r['p99_ms'], '{:.2f}')} | {_num(r['p999_ms'], '{:.2f}')} | "
            f"{_num(r['server_cpu_s_per_1k'], '{:.3f}')} | {errors} |\n"
        )
    parts.append(
        "\nIn-process, one thread, pre-built keys:\n\n| alg | what | calls/s | µs/call |\n"
    )
    parts.append("|---|---|---:|---:|\n")
    for r in doc["inprocess"]:
        parts.append(f"| {r['alg']} | {r['name']} | {r['per_s']:.0f} | {r['us_per_call']:.1f} |\n")
    parts.append(
        "\nVerify cache, memory per entry (tracemalloc) vs the estimate the byte bound uses:\n\n"
    )
    parts.append("| alg | entries | token chars | measured B/entry | estimated B/entry |\n")
    parts.append("|---|---:|---:|---:|---:|\n")
    for r in doc["cache_cost"]:
        parts.append(
            f"| {r['alg']} | {r['entries']} | {r['token_chars']} | "
            f"{r['measured_bytes_per_entry']} | {r['estimated_bytes_per_entry']} |\n"
        )
    parts.append(
        "\n## Every supported algorithm\n\n"
        "In-process µs/call (one thread, pre-built keys) and unary cold Verify (UDS, 16 in "
        "flight, Python load; distinct tokens, so every call misses the cache). `-`: not "
        "measured (the notes say why; HMAC signing is its MAC, the raw verify figure).\n\n"
    )
    parts.append(algorithms_table(doc["algorithms"]))
    if doc["notes"]:
        parts.append("\nNotes:\n\n" + "".join(f"- {n}\n" for n in doc["notes"]))
    return "".join(parts)


def soak_text(soak: dict[str, Any]) -> str:
    rss = soak["rss"]
    if not rss:
        return "soak: no samples"
    mib = [b / (1 << 20) for _, b in rss]
    settled = mib[min(len(mib) - 1, 5) :]  # after the cache has filled (a few seconds in)
    return (
        f"soak {soak['seconds']:.0f} s, {soak['calls_per_s']:.0f} Verify/s: RSS start "
        f"{mib[0]:.1f} MiB, after 5 s {settled[0]:.1f} MiB, end {mib[-1]:.1f} MiB, "
        f"max {max(mib):.1f} MiB"
    )
