"""The two-service section's derived numbers, issue 15's targets and its Markdown table.

Every comparison is between cells of the same run and the same token mode and concurrency:
"over the floor" is a column's CPU per call minus column (1)'s, "added" latency its p50/p99
minus column (1)'s. CPU per call is callee + sidecar (the sidecar of columns 3 and 4; the
others have none), the caller's is shown apart.
"""

from __future__ import annotations

import math
from typing import Any

Row = dict[str, Any]
_ORDER = ("none", "pyjwt", "verify", "default", "passthrough", "wrapping")
_MODES = ("reused", "one-shot")


def _us(value: float | None) -> float | None:
    return None if value is None else value * 1000.0


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def derive(rows: list[Row]) -> list[Row]:
    """The medians of each cell plus µs per call (callee + sidecar, and each apart) and the
    differences to the floor of the same token mode and concurrency, in table order."""
    floors = {(r["tokens"], r["concurrency"]): r for r in rows if r["column"] == "none"}
    out = []
    for r in sorted(
        rows,
        key=lambda r: (r["concurrency"], _MODES.index(r["tokens"]), _ORDER.index(r["column"])),
    ):
        floor = floors.get((r["tokens"], r["concurrency"]))
        cpu = _us(r["server_cpu_s_per_1k"])
        sidecar = _us(r.get("sidecar_cpu_s_per_1k"))
        floor_cpu = None if floor is None else _us(floor["server_cpu_s_per_1k"])
        out.append(
            {
                **r,
                "cpu_us_per_call": cpu,
                "sidecar_cpu_us_per_call": sidecar,
                "callee_cpu_us_per_call": _minus(cpu, sidecar or 0.0),
                "caller_cpu_us_per_call": _us(r["client_cpu_s_per_1k"]),
                "cpu_over_floor_us": _minus(cpu, floor_cpu),
                "added_p50_ms": _minus(r["p50_ms"], None if floor is None else floor["p50_ms"]),
                "added_p99_ms": _minus(r["p99_ms"], None if floor is None else floor["p99_ms"]),
            }
        )
    return out


def _cell(rows: list[Row], tokens: str, concurrency: int, column: str) -> Row | None:
    for r in rows:
        if (r["tokens"], r["concurrency"], r["column"]) == (tokens, concurrency, column):
            return r
    return None


def _get(row: Row | None, key: str) -> float | None:
    value = None if row is None else row.get(key)
    return None if value is None or not math.isfinite(value) else float(value)


def targets(section: dict[str, Any]) -> list[Row]:
    """Issue 15's targets, each with its value, goal, met (None: not measured) and the two
    numbers it compares."""
    rows: list[Row] = section["rows"]
    out: list[Row] = []

    def add(name: str, value: float | None, goal: str, met: bool | None, detail: str) -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": met, "detail": detail})

    def fmt(value: float | None, unit: str) -> str:
        return "-" if value is None else f"{value:.1f} {unit}"

    for c in sorted({r["concurrency"] for r in rows}):
        for tokens in _MODES:
            new = _cell(rows, tokens, c, "default")
            ref = _cell(rows, tokens, c, "pyjwt")
            ov_new, ov_ref = _get(new, "cpu_over_floor_us"), _get(ref, "cpu_over_floor_us")
            cpu_detail = f"(4) {fmt(ov_new, 'µs')} vs (2) {fmt(ov_ref, 'µs')} over the floor"
            if tokens == "reused":
                ratio = _ratio(ov_new, ov_ref)
                add(
                    f"reused tokens, {c} in flight: (4) CPU/call over floor / (2)'s",
                    ratio,
                    "<= 0.5",
                    None if ratio is None else ratio <= 0.5,
                    cpu_detail,
                )
                floor = _cell(rows, tokens, c, "none")
                p99 = _ratio(_get(new, "p99_ms"), _get(floor, "p99_ms"))
                add(
                    f"reused tokens, {c} in flight: (4) p99 / floor p99",
                    p99,
                    "<= 1.10",
                    None if p99 is None else p99 <= 1.10,
                    f"(4) {fmt(_get(new, 'p99_ms'), 'ms')} vs floor "
                    f"{fmt(_get(floor, 'p99_ms'), 'ms')}",
                )
            elif c >= 16:
                ratio = _ratio(ov_new, ov_ref)
                add(
                    f"one-shot tokens, {c} in flight: (4) CPU/call over floor / (2)'s",
                    ratio,
                    "<= 1.5",
                    None if ratio is None else ratio <= 1.5,
                    cpu_detail,
                )
    goals = {
        "refused": "Revoke returns -> first refusal at every callee",
        AT_CALLEE: "Revoke returns -> first refusal at every callee, timed at the callee",
        "dropped": "Revoke returns -> every interceptor dropped the decision (the push alone)",
    }
    for result in section["revocation"]:
        if result["column"] != "default":
            continue
        for what, numbers in _measured(result["passes"]):
            if what not in goals:
                continue  # the probe-round floor: context, not a target
            p99 = _get(numbers, "p99_ms")
            add(
                f"revocation, {result['interceptors']} subscribed interceptors: "
                f"{goals[what]}, p99 ms",
                p99,
                "< 50 (and none never)",
                None if p99 is None else p99 < 50 and numbers["never"] == 0,
                f"{numbers['revocations']} revocations, p50 {fmt(_get(numbers, 'p50_ms'), 'ms')}, "
                f"max {fmt(_get(numbers, 'max_ms'), 'ms')}, never {numbers['never']}",
            )
    return out


# The `refused` pass timed where each callee refused (bench/propagation.py `callee_*`).
AT_CALLEE = "refused, timed at the callee"


def _measured(passes: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each pass, and after `refused` its `callee_*` figures as a row of their own."""
    rows = []
    for what, numbers in passes.items():
        rows.append((what, numbers))
        if "callee_p50_ms" in numbers:
            timed = {k[len("callee_") :]: v for k, v in numbers.items() if k.startswith("callee_")}
            timed.update(revocations=numbers["revocations"], never=numbers["never"])
            rows.append((AT_CALLEE, timed))
    return rows


def _num(value: Any, fmt: str = "{:.0f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def _stats(stats: dict[str, float]) -> str:
    shown = [f"{k} {v:g}" for k, v in sorted(stats.items()) if v and k != "staleness_s"]
    return ", ".join(shown) or "all zero"


def _hit_ratio(row: Row) -> float | None:
    """Share of the cell's calls the interceptor answered from its decision cache."""
    hits = row.get("decision_hits")
    if hits is None:
        return None
    seen = hits + row.get("decision_misses", 0) + row.get("decision_bypassed", 0)
    return hits / seen if seen else None


def markdown(section: dict[str, Any]) -> str:
    labels = {c["kind"]: c["label"] for c in section["columns"] + section["diagnostics"]}
    plan = section["plan"]
    parts = [
        "## Two services (issue 15)\n\n",
        f"`{section.get('command', 'python -m bench --only two_service')}` "
        f"({section['elapsed_s']:.0f} s). A caller (bench/load.py processes) calls a grpc.aio "
        f"callee with a trivial handler over loopback TCP, every call with a bearer token "
        f"({section['alg']}): reused = {section['identities']} identities, one token each; "
        f"one-shot = every token used once (minted before the clock starts). "
        f"{plan['duration_s']:g} s per cell, {plan['rounds']} interleaved rounds, medians. "
        "CPU µs/call = callee + sidecar (columns 3 and 4 each have their own sidecar); "
        "added latency and CPU over floor are against column (1) of the same row group; "
        "from cache = the interceptor's decision hits / its calls in the cell (warm-up "
        "included, from its `stats()`). Rows (d1) and (d2) split what any interceptor costs "
        "(reused tokens, 16 in flight): grpc.aio's interceptor path alone, then with the "
        "handler wrapped per call as (3) and (4) do, checking nothing.\n\n",
        "| tokens | in flight | column | calls/s | p50 ms | p99 ms | added p50 ms "
        "| added p99 ms | CPU µs/call | over floor µs | callee µs | sidecar µs | caller µs "
        "| from cache | errors |\n",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    ]
    for r in section["rows"]:
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items())
        parts.append(
            f"| {r['tokens']} | {r['concurrency']} | {labels[r['column']]} | "
            f"{_num(r['calls_per_s'])} | {_num(r['p50_ms'], '{:.2f}')} | "
            f"{_num(r['p99_ms'], '{:.2f}')} | {_num(r['added_p50_ms'], '{:+.2f}')} | "
            f"{_num(r['added_p99_ms'], '{:+.2f}')} | {_num(r['cpu_us_per_call'])} | "
            f"{_num(r['cpu_over_floor_us'], '{:+.0f}')} | {_num(r['callee_cpu_us_per_call'])} | "
            f"{_num(r['sidecar_cpu_us_per_call'])} | {_num(r['caller_cpu_us_per_call'])} | "
            f"{_num(_hit_ratio(r), '{:.1%}')} | {errors} |\n"
        )
    parts.append(revocation_markdown(section["revocation"]))
    for r in section["revocation"]:
        if r.get("interceptor_stats"):
            parts.append(
                f"\n{r['label']}, revocation callees' stats() summed: "
                f"{_stats(r['interceptor_stats'])}\n"
            )
    for kind, stats in section.get("interceptor_stats", {}).items():
        parts.append(f"\n{labels[kind]}, callee's stats() at the end: {_stats(stats)}\n")
    parts.append("\n| target | value | goal | met | compares |\n|---|---:|---|---|---|\n")
    for t in section["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        parts.append(
            f"| {t['target']} | {_num(t['value'], '{:.2f}')} | {t['goal']} | {met} "
            f"| {t['detail']} |\n"
        )
    if section["notes"]:
        parts.append("\n" + "".join(f"- {n}\n" for n in section["notes"]))
    return "".join(parts)


def revocation_markdown(revocation: list[dict[str, Any]]) -> str:
    """The propagation table (two-service section, or `--only propagation` alone)."""
    parts = []
    parts.append(
        "\nRevocation propagation, from Revoke returning (bench/propagation.py): `refused` = "
        "until every callee's refusal of a probe call with the token has reached the prober "
        "(issue 15's definition, timed by the prober: includes each probe's round trip, the "
        "prober's own queue and, for column 3, the Verify that refuses), "
        f"`{AT_CALLEE}` = the same probes, but each callee's time is when its interceptor "
        "refused (timed in the callee process on CLOCK_MONOTONIC: no way back, no prober "
        "queue after the refusal; still the wait for the next probe to arrive), "
        "`dropped` = until every interceptor's watcher has dropped the decision on the "
        "Watch event (the push alone; each drop timed in its own process on CLOCK_MONOTONIC, "
        "no polling in the figure). `first` = the first callee's (or interceptor's) time.\n\n"
        "| column | interceptors | layout | measured | revocations | first p50 ms | "
        "first p99 ms | p50 ms | p99 ms | max ms | never |\n"
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for r in revocation:
        for what, n in _measured(r["passes"]):
            parts.append(
                f"| {r['label']} | {r['interceptors']} | {r['layout']} | {what} | "
                f"{n['revocations']} | {_num(n.get('first_p50_ms'), '{:.2f}')} | "
                f"{_num(n.get('first_p99_ms'), '{:.2f}')} | {_num(n['p50_ms'], '{:.2f}')} | "
                f"{_num(n['p99_ms'], '{:.2f}')} | {_num(n['max_ms'], '{:.2f}')} | "
                f"{n['never']} |\n"
            )
    return "".join(parts)
