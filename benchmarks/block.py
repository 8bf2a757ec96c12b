"""Benchmark the non-local operation: ours vs the naive N x N forms, in one run.

Every case runs in its own process, so its peak memory is its own: peak extra memory is the
process's peak resident set size minus its resident size once the inputs exist. Times are
medians. The machine's fp32 matmul throughput is measured in the same run and each fused
softmax case reports the fraction of it that it achieves.

    python benchmarks/block.py                      # full table (about 20 minutes on 2 cores)
    python benchmarks/block.py --quick              # seconds, small sizes (smoke test)

Writes JSON (``--out``, default ``benchmarks/results/block.json``) and prints a Markdown table.

The softmax algorithms, point by point (every exact algorithm and ``auto``, round-robin in one
process per group of points, so drift hits all alike; peak extra memory per call):

    python benchmarks/block.py --grid               # B, N, M, Ck, mode, pass, dtype: 512 points
    python benchmarks/block.py --grid --ns 784 3136 --dtypes fp32   # a part; reruns append
    python benchmarks/block.py --calibrate          # the cost model's measurements
    python benchmarks/block.py --fit                # refit ops/dispatch.py's COSTS from them
    python benchmarks/block.py --mmcv               # the block against mmcv's NonLocal3d

``--grid`` appends to ``results/block_grid.json`` (points already there are skipped), so it
runs in parts; the N x M ``naive`` form is skipped where its matrix exceeds 8 GiB or its predicted
peak 16 GiB (or 2/3 of the memory), and ``auto`` is not called separately where a call takes
over a second (its pick's column times it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _harness import hold_write_lock, machine, measure, measure_in_turn, spawn, write_json

from nonlocalnet.ops import dispatch, nonlocal_op

NAIVE = {"gaussian": "naive", "embedded_gaussian": "naive", "dot_product": "quadratic"}


def run_case(case: dict) -> dict:
    """One measurement in this process."""
    torch.manual_seed(0)
    b, n, m, ck, cv = case["batch"], case["n"], case["m"], case["ck"], case["cv"]
    if case["kind"] == "matmul":
        a, w = torch.randn(n, ck), torch.randn(ck, m)
        fn = lambda: a @ w  # noqa: E731
        flops = 2.0 * n * m * ck
    else:
        grad = case["backward"]
        # channel-major, as the block passes them: transposed views of (B, C, positions) maps
        theta = (torch.randn(b, ck, n) * ck**-0.25).transpose(1, 2).requires_grad_(grad)
        phi = (torch.randn(b, ck, m) * ck**-0.25).transpose(1, 2).requires_grad_(grad)
        g = torch.randn(b, cv, m).transpose(1, 2).requires_grad_(grad)
        w = (torch.randn(2 * ck) * ck**-0.5).requires_grad_(grad)
        leaves = (theta, phi, g, w)

        def fn():
            y = nonlocal_op(case["mode"], theta, phi, g, weight=w, algorithm=case["algorithm"])
            if grad:
                y.backward(torch.ones_like(y))
                for t in leaves:
                    t.grad = None
            return y

        # FLOPs (2 per multiply-add) of the quadratic form, which the fused kernel also does;
        # backward counted as twice the forward
        flops = 2.0 * b * n * m * (ck + cv) * (3 if grad else 1)
    result = measure(fn, case["warmup"], case["repeats"])
    return {**case, **result, "gflops_per_s": flops / result["median_s"] / 1e9}


def matmul_case(n: int, c: int) -> dict:
    """The fp32 product (n x c) @ (c x n) that measures this machine's GEMM rate (median of 7)."""
    return {"kind": "matmul", "batch": 1, "n": n, "m": n, "ck": c, "cv": 0, "warmup": 2, "repeats": 7}


def plan(quick: bool) -> list[dict]:
    batch, cin, cinter = (2, 64, 32) if quick else (2, 1024, 512)
    sizes = (64, 256) if quick else (784, 3136, 12544)
    mid = sizes[1]
    cases = [{**matmul_case(mid, cinter), "mode": "matmul", "algorithm": "sgemm", "backward": False}]
    for n in sizes:
        reps = {sizes[0]: 5, mid: 3}.get(n, 2)
        for backward in (False, True):
            for mode in ("gaussian", "embedded_gaussian", "dot_product", "concatenation"):
                ck = cin if mode == "gaussian" else cinter
                refs = ["pairwise", "explicit"] if n == sizes[0] else ["pairwise"]
                algos = ["auto", *(refs if mode == "concatenation" else [NAIVE[mode]])]
                for algorithm in algos:
                    heavy = algorithm == "explicit"
                    cases.append(
                        {
                            "kind": "op",
                            "mode": mode,
                            "algorithm": algorithm,
                            "batch": batch,
                            "n": n,
                            "m": n,
                            "ck": ck,
                            "cv": cinter,
                            "backward": backward,
                            "warmup": 0 if heavy or n == sizes[-1] else 1,
                            "repeats": 1 if heavy else reps,
                        }
                    )
    big = (1024, 64) if quick else (16 * 56 * 56, 128)
    cases.append(
        {
            "kind": "op",
            "mode": "embedded_gaussian",
            "algorithm": "auto",
            "batch": 2,
            "n": big[0],
            "m": big[0],
            "ck": big[1],
            "cv": big[1],
            "backward": True,
            "warmup": 0,
            "repeats": 1,
            "large": True,
        }
    )
    return cases


def _fmt_case(r: dict) -> str:
    return f"{r['mode']} {r['algorithm']} N={r['n']} {'fwd+bwd' if r['backward'] else 'fwd'}"


def _ms(r: dict) -> str:
    return "-" if "error" in r else f"{1e3 * r['median_s']:.1f}"


def _mib(r: dict) -> str:
    return "-" if "error" in r else f"{r['peak_extra_mib']:.0f}"


def summarise(results: list[dict]) -> tuple[str, list[dict]]:
    """Markdown table: ours vs each quadratic form of the same case, with ratios."""
    mm = next(r for r in results if r["kind"] == "matmul")
    ops = [r for r in results if r["kind"] == "op" and not r.get("large")]
    key = lambda r: (r["mode"], r["n"], r["backward"])  # noqa: E731
    rows, table = (
        [],
        [
            f"fp32 matmul throughput ({mm['n']}x{mm['ck']} @ {mm['ck']}x{mm['m']}): "
            f"{mm['gflops_per_s']:.1f} GFLOP/s",
            "",
            "| mode | N = M | pass | ours ms | ours peak MiB | reference | ref ms | ref peak MiB "
            "| speed-up | memory ratio | ours % of matmul |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ],
    )
    for r in ops:
        if r["algorithm"] != "auto":
            continue
        for ref in (o for o in ops if key(o) == key(r) and o is not r):
            row = {"mode": r["mode"], "n": r["n"], "backward": r["backward"], "reference": ref["algorithm"]}
            frac = ""
            if "error" not in r and not r["backward"] and r["mode"] in ("gaussian", "embedded_gaussian"):
                row["matmul_fraction"] = r["gflops_per_s"] / mm["gflops_per_s"]
                frac = f"{100 * row['matmul_fraction']:.0f}%"
            if "error" in r or "error" in ref:
                bad = r if "error" in r else ref
                speed, mem = f"{bad['algorithm']} failed: {bad['error']}", "-"
            else:
                row["speedup"] = ref["median_s"] / r["median_s"]
                row["memory_ratio"] = r["peak_extra_mib"] / max(ref["peak_extra_mib"], 1e-9)
                speed, mem = f"{row['speedup']:.2f}x", f"{row['memory_ratio']:.3f}"
            rows.append(row)
            table.append(
                f"| {r['mode']} | {r['n']} | {'fwd+bwd' if r['backward'] else 'fwd'} | {_ms(r)} "
                f"| {_mib(r)} | {ref['algorithm']} | {_ms(ref)} | {_mib(ref)} | {speed} | {mem} | {frac} |"
            )
    for r in results:
        if r.get("large"):
            need = 2 * r["batch"] * r["n"] * r["m"] * 4 / 2**30
            status = r.get("error") or f"{r['median_s']:.1f} s, peak extra {r['peak_extra_mib']:.0f} MiB"
            rows.append(
                {
                    "mode": r["mode"],
                    "n": r["n"],
                    "backward": True,
                    "large": True,
                    "seconds": r.get("median_s"),
                    "peak_extra_mib": r.get("peak_extra_mib"),
                    "naive_needs_gib": need,
                }
            )
            table += [
                "",
                f"Large case: embedded Gaussian fwd+bwd, B={r['batch']}, N=M={r['n']}, "
                f"Ck=Cv={r['ck']} (in_channels {2 * r['ck']}): ours {status}; the naive form needs "
                f"at least {need:.0f} GiB for the logits and the softmax alone.",
            ]
    return "\n".join(table), rows


# ---------------------------------------------------------------------------------------------
# The softmax algorithms on a grid of shapes (--grid, --calibrate, --fit)

GRID_ALGOS = ("fused", "flash", "chunked", "naive")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
NAIVE_LIMIT_BYTES = 8 * 2**30  # the naive form's (B, N, M) float32 matrix
NAIVE_PEAK_LIMIT_BYTES = 16 * 2**30  # its predicted peak (see _naive_peak_bytes), at most 2/3 of RAM
AUTO_OWN_CALLS_BELOW_S = 1.0  # longer points time auto by its pick's column (the same code, + microseconds)


def grid_points(
    batches=(1, 2),
    ns=(784, 3136, 12544, 50176),
    ms=("N", "N/4"),
    cks=(64, 128, 256, 512),
    modes=("gaussian", "embedded_gaussian"),
    passes=("fwd", "fwd+bwd"),
    dtypes=("fp32", "bf16"),
) -> list[dict]:
    """Grid points; Gaussian: Ck raw feature channels, Cv = Ck / 2; embedded: Cv = Ck."""
    points = []
    for n in ns:
        for b in batches:
            for m in ms:
                for ck in cks:
                    for mode in modes:
                        for p in passes:
                            for dt in dtypes:
                                points.append(
                                    {
                                        "batch": b,
                                        "n": n,
                                        "m": n if m == "N" else n // 4,
                                        "ck": ck,
                                        "cv": ck // 2 if mode == "gaussian" else ck,
                                        "mode": mode,
                                        "backward": p == "fwd+bwd",
                                        "dtype": dt,
                                    }
                                )
    return points


def point_key(p: dict) -> tuple:
    return (p["batch"], p["n"], p["m"], p["ck"], p["cv"], p["mode"], p["backward"], p["dtype"])


def _naive_peak_bytes(p: dict) -> int:
    """The naive form's predicted peak: 3 (B, N, M) matrices of the point's dtype in a forward,
    6 in a forward + backward. Not a bound: at N = 50176, M = 12544 the grid measured 2.0-3.1 and
    3.1-6.2 matrices; the limits' margin (16 GiB, or 2/3 of the memory) absorbs the excess."""
    size = torch.finfo(DTYPES[p["dtype"]]).bits // 8
    return (6 if p["backward"] else 3) * p["batch"] * p["n"] * p["m"] * size


_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_limit_files(root: Path = _CGROUP_ROOT, proc: Path = Path("/proc/self/cgroup")) -> list[Path]:
    """The memory-limit files of this process's cgroup and of its ancestors, v2 and v1.

    ``/proc/self/cgroup`` names the cgroup (``0::/path`` for v2, ``N:memory:/path`` for v1's
    memory controller); without a cgroup namespace (a host, a Slurm job) the limit sits in that
    nested cgroup, not at the root of the hierarchy.
    """
    files = [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:  # a blank or foreign line: not a cgroup entry
            continue
        _, controllers, path = fields
        if controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [x for x in path.split("/") if x]
        files += [base.joinpath(*parts[:i], name) for i in range(len(parts), 0, -1)]
    return files


def _memory_bytes() -> int:
    """This machine's memory, or its cgroup's (or an ancestor's) memory limit where that is lower."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not POSIX: trust the fixed limit
        total = 2**62
    for path in _cgroup_limit_files():
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) is no limit; v1's "no limit" is a huge number, which min drops
            total = min(total, int(text))
    return total


def _naive_skip(p: dict) -> str | None:
    """Why the naive form is not run at a point (None: it is). Its matrix, sized in float32
    whatever the dtype, over 8 GiB, or its predicted peak over 16 GiB or 2/3 of this machine's
    memory (the OOM killer would take the whole point, every other algorithm's measurement with it)."""
    if p["batch"] * p["n"] * p["m"] * 4 > NAIVE_LIMIT_BYTES:
        return "out of memory range (N x M matrix over 8 GiB in float32)"
    limit = min(NAIVE_PEAK_LIMIT_BYTES, 2 * _memory_bytes() // 3)
    if (peak := _naive_peak_bytes(p)) > limit:
        return f"out of memory range (predicted peak {peak / 2**30:.1f} GiB over {limit / 2**30:.1f} GiB)"
    return None


def _naive_fits(p: dict) -> bool:
    return _naive_skip(p) is None


def run_point(p: dict, algos: tuple[str, ...], repeats: int, warmup: int) -> dict:
    """Every algorithm of ``algos`` on one point, round-robin; per-call peak extra memory."""
    from _harness import peak_rss, reset_peak, rss

    torch.manual_seed(0)
    b, n, m, ck, cv, grad = p["batch"], p["n"], p["m"], p["ck"], p["cv"], p["backward"]
    dt = DTYPES[p["dtype"]]
    theta = (torch.randn(b, ck, n) * ck**-0.25).to(dt).transpose(1, 2).requires_grad_(grad)
    phi = (torch.randn(b, ck, m) * ck**-0.25).to(dt).transpose(1, 2).requires_grad_(grad)
    g = torch.randn(b, cv, m).to(dt).transpose(1, 2).requires_grad_(grad)
    scale = 1.0 if p["mode"] == "gaussian" else ck**-0.5

    def call(algorithm):
        with torch.set_grad_enabled(grad):
            y = nonlocal_op(p["mode"], theta, phi, g, scale=scale, algorithm=algorithm)
            if grad:
                y.backward(torch.ones_like(y))
                theta.grad = phi.grad = g.grad = None

    out: dict = {}
    skip = _naive_skip(p) if "naive" in algos else None
    run = [a for a in algos if a != "naive" or skip is None]
    if _point_cost(p) >= AUTO_OWN_CALLS_BELOW_S:
        run = [a for a in run if a != "auto"]  # its pick's own column times it (seconds per call)
    if skip is not None:
        out["naive"] = {"skipped": skip}
    times: dict[str, list[float]] = {a: [] for a in run}
    peaks: dict[str, float] = {a: 0.0 for a in run}
    for _ in range(warmup):
        for a in run:
            call(a)
    for _ in range(repeats):
        for a in run:
            reset_peak()
            base = rss()
            start = time.perf_counter()
            call(a)
            times[a].append(time.perf_counter() - start)
            peaks[a] = max(peaks[a], max(peak_rss() - base, 0) / 2**20)
    for a in run:
        out[a] = {"median_s": statistics.median(times[a]), "times_s": times[a], "peak_extra_mib": peaks[a]}
    choice = dispatch.choose_softmax_algorithm(
        batch=b, n=n, m=m, ck=ck, cv=cv, dtype=dt, device_type="cpu", training=grad
    )
    return {**p, "auto_choice": choice, "algorithms": out}


def _point_cost(p: dict) -> float:
    """A rough seconds estimate of one call (for grouping points and for planning)."""
    flops = 2.0 * p["batch"] * p["n"] * p["m"] * (p["ck"] + p["cv"]) * (3.5 if p["backward"] else 1.0)
    return flops / 80e9


def run_group(args: dict) -> list[dict]:
    """The points of one process. Its first point is always warmed up: a fresh process's first
    call is cold (first-touch page faults, one-time set-up), and without this the algorithm
    measured first, ``fused``, paid for it at every point that runs alone without warm-up."""
    algos, repeats, warmup = tuple(args["algos"]), args["repeats"], args["warmup"]
    points = args["points"]
    return [run_point(p, algos, repeats, warmup if i else max(1, warmup)) for i, p in enumerate(points)]


def _groups(points: list[dict], budget_s: float = 60.0) -> list[list[dict]]:
    groups, cur, cost = [], [], 0.0
    for p in points:
        c = _point_cost(p) * 5 * 4
        if cur and cost + c > budget_s:
            groups.append(cur)
            cur, cost = [], 0.0
        cur.append(p)
        cost += c
    return groups + ([cur] if cur else [])


def _reps(p: dict) -> tuple[int, int]:
    """(warmup, repeats): fewer for the long points."""
    c = _point_cost(p)
    if c < 0.05:  # milliseconds: enough calls for about 0.3 s per algorithm, against noise
        return (2, min(31, max(7, int(0.3 / max(c, 1e-4)) | 1)))
    return (1, 3) if c < 1.0 else (0, 2) if c < 5.0 else (0, 1)


def run_grid(
    points: list[dict], out: Path, algos: tuple[str, ...], timeout: float, kind: str, redo: bool = False
) -> dict:
    """Run the points not yet in ``out``, or there only as failures, and append them (the file is
    rewritten after each group); ``redo``: measure the given points again, replacing their rows.
    A second run on the same ``out`` while this one runs is refused (it would drop our points)."""
    with hold_write_lock(out):
        return _run_grid(points, out, algos, timeout, kind, redo)


def _run_grid(
    points: list[dict], out: Path, algos: tuple[str, ...], timeout: float, kind: str, redo: bool
) -> dict:
    data = json.loads(out.read_text()) if out.exists() else {"kind": kind, "meta": machine(), "points": []}
    # the requested points measured again: all of them with ``redo``, else those that failed
    again = {point_key(p) for p in points}
    data["points"] = [p for p in data["points"] if point_key(p) not in again or not (redo or "error" in p)]
    done = {point_key(p) for p in data["points"]}
    todo = [p for p in points if point_key(p) not in done]
    part = len(data.setdefault("parts", []))
    if todo:  # parts may run on other machines: each is stamped, with the matmul rate it saw
        data["parts"].append(
            {
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **machine(),
                "memory_gib": round(_memory_bytes() / 2**30, 1),  # what the naive form's rule saw
                "matmul_gflops_per_s": _matmul_rate(timeout),
                "planned": len(todo),  # an interrupted part measured fewer: its points say how many
            }
        )
    by_reps: dict[tuple[int, int], list[dict]] = {}
    for p in todo:
        by_reps.setdefault(_reps(p), []).append(p)
    for (warmup, repeats), pts in sorted(by_reps.items(), reverse=True):
        for group in _groups(pts):
            case = {"group": {"points": group, "algos": list(algos), "repeats": repeats, "warmup": warmup}}
            res = spawn(__file__, case, timeout)
            if "error" in res:
                results = [{**p, "error": res["error"]} for p in group]
            else:
                results = res["results"]
            for r in results:
                r["part"] = part
                data["points"].append(r)
                print(f"{_fmt_point(r)}", file=sys.stderr, flush=True)
            write_json(out, data)
    return data


def _matmul_rate(timeout: float) -> float | None:
    """This machine's fp32 matmul GFLOP/s now (3136x512 @ 512x3136, median of 7), in its own process."""
    res = spawn(__file__, matmul_case(3136, 512), timeout)
    return res.get("gflops_per_s")


def _fmt_point(r: dict) -> str:
    head = (
        f"B={r['batch']} N={r['n']} M={r['m']} Ck={r['ck']} Cv={r['cv']} {r['mode']} "
        f"{'fwd+bwd' if r['backward'] else 'fwd'} {r['dtype']}"
    )
    if "error" in r:
        return f"{head}: {r['error']}"
    cells = [
        f"{a} {1e3 * v['median_s']:.1f} ms" if "median_s" in v else f"{a} skipped"
        for a, v in r["algorithms"].items()
    ]
    return f"{head}: {', '.join(cells)} (auto -> {r['auto_choice']})"


EXACT = ("fused", "flash", "chunked")


def summarise_parts(data: dict) -> str:
    """Which points ran when and where: the grid is measured in parts, possibly on other VMs."""
    parts = data.get("parts", [])
    unstamped = sum("part" not in p for p in data["points"])
    lines = [f"- {unstamped} points from parts run before parts were stamped"] if unstamped else []
    for i, part in enumerate(parts):
        rate = part.get("matmul_gflops_per_s")
        lines.append(
            f"- part {i}, {part['started']}: {sum(p.get('part') == i for p in data['points'])} points "
            f"(of {part['planned']} planned), "
            f"torch {part['torch']}, {part['threads']} threads, {part['capability']}, "
            + (f"{part['memory_gib']:g} GiB, " if "memory_gib" in part else "")
            + "fp32 matmul "
            + (f"{rate:.0f} GFLOP/s" if rate else "not measured")
        )
    head = "Measured in parts (ratios compare algorithms within one point, one process):"
    return head + "\n\n" + "\n".join(lines)


def summarise_grid(points: list[dict]) -> tuple[str, dict]:
    """One row per point: each algorithm's ms and peak MiB, auto's choice and auto / best exact."""
    head = (
        "| B | N | M | Ck | Cv | mode | pass | dtype | fused ms (MiB) | flash ms (MiB) "
        "| chunked ms (MiB) | naive ms (MiB) | auto ms | auto picked | auto / best exact "
        "| picked / best |"
    )
    lines = [head, "|" + "---|" * 16]
    ratios, pick_ratios, not_best, failed, by_pick = [], [], 0, [], 0
    own_ratios: list[float] = []  # the points where auto was called on its own
    skips: Counter[str] = Counter()  # why an algorithm was not run -> how many times
    for r in points:
        if "error" in r:
            failed.append(r)
            continue
        al = r["algorithms"]
        for a, v in al.items():
            if "skipped" in v:
                skips[f"{a}: {v['skipped']}"] += 1

        def cell(a, al=al):
            v = al.get(a)
            if v is None:
                return "-"
            if "median_s" not in v:
                return "skipped (memory)" if "memory" in v.get("skipped", "") else "skipped"
            return f"{1e3 * v['median_s']:.1f} ({v['peak_extra_mib']:.0f})"

        exact = {a: al[a]["median_s"] for a in EXACT if "median_s" in al.get(a, {})}
        best = min(exact.values())
        own = "median_s" in al.get("auto", {})
        auto_s = al["auto"]["median_s"] if own else exact[r["auto_choice"]]
        by_pick += not own
        ratio = auto_s / best
        ratios.append(ratio)
        if own:
            own_ratios.append(ratio)
        pick_ratios.append(exact[r["auto_choice"]] / best)
        not_best += min(exact, key=exact.get) != r["auto_choice"]
        lines.append(
            f"| {r['batch']} | {r['n']} | {r['m']} | {r['ck']} | {r['cv']} | {r['mode']} "
            f"| {'fwd+bwd' if r['backward'] else 'fwd'} | {r['dtype']} | {cell('fused')} | {cell('flash')} "
            f"| {cell('chunked')} | {cell('naive')} | {1e3 * auto_s:.1f}{'' if own else '*'} "
            f"| {r['auto_choice']} | {ratio:.2f} "
            f"| {pick_ratios[-1]:.2f} |"
        )
    summary = {
        "points": len(ratios),
        "failed": len(failed),
        "max_auto_over_best": max(ratios, default=float("nan")),
        "median_auto_over_best": statistics.median(ratios) if ratios else float("nan"),
        "within_10_percent": sum(x <= 1.10 for x in ratios),
        "own_calls": len(own_ratios),
        "own_calls_within_10_percent": sum(x <= 1.10 for x in own_ratios),
        "max_own_call_over_best": max(own_ratios, default=float("nan")),
        "auto_not_the_measured_best": not_best,
        "max_picked_over_best": max(pick_ratios, default=float("nan")),
        "picked_within_10_percent": sum(x <= 1.10 for x in pick_ratios),
    }
    lines += [
        "",
        f"{summary['points']} points; auto within 10% of the fastest exact algorithm at "
        f"{summary['within_10_percent']} (its own calls at {summary['own_calls']} points, within 10% at "
        f"{summary['own_calls_within_10_percent']}, max {summary['max_own_call_over_best']:.2f}; its "
        "pick's column at the rest); max auto / best "
        f"{summary['max_auto_over_best']:.2f}, median "
        f"{summary['median_auto_over_best']:.2f}; auto's pick was not the measured fastest at "
        f"{summary['auto_not_the_measured_best']} (within noise where the ratio is near 1). "
        f"Timing auto's pick by its own column instead of auto's separate calls (no noise between "
        f"two calls of the same code): within 10% at {summary['picked_within_10_percent']}, max "
        f"{summary['max_picked_over_best']:.2f}.",
    ]
    if by_pick:
        lines.append(
            f"\n* {by_pick} points with calls over {AUTO_OWN_CALLS_BELOW_S:g} s: auto was not called "
            "separately; its time is its pick's column."
        )
    if skips:
        lines += ["", "Not run:", ""]
        lines += [f"- {why}: {k} point{'s' * (k != 1)}" for why, k in sorted(skips.items())]
    lines += [f"failed: {_fmt_point(r)}" for r in failed]
    return "\n".join(lines), summary


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||a x - b|| over x >= 0, exactly, for a few columns: the optimum is the least-squares
    solution on its own support, so the best non-negative one over every support is it."""
    best, best_residual = np.zeros(a.shape[1]), float(np.sum(b**2))
    for k in range(1, a.shape[1] + 1):
        for support in itertools.combinations(range(a.shape[1]), k):
            coef = np.linalg.lstsq(a[:, support], b, rcond=None)[0]
            residual = float(np.sum((a[:, support] @ coef - b) ** 2))
            if coef.min() >= 0 and residual < best_residual:
                best = np.zeros(a.shape[1])
                best[list(support)] = coef
                best_residual = residual
    return best


def fit_costs(points: list[dict]) -> dict[tuple[str, str, str], tuple[float, ...]]:
    """Non-negative least squares on relative error, per (algorithm, pass, precision)."""
    rows: dict[tuple[str, str, str], tuple[list, list]] = {}
    for r in points:
        if "error" in r:
            continue
        prec = "low" if r["dtype"] != "fp32" else "fp32"
        ps = "training" if r["backward"] else "forward"
        for a in EXACT:
            v = r["algorithms"].get(a, {})
            if "median_s" not in v:
                continue
            x = dispatch.cost_features(a, r["backward"], r["batch"], r["n"], r["m"], r["ck"], r["cv"])
            xs, ys = rows.setdefault((a, ps, prec), ([], []))
            xs.append([f / v["median_s"] for f in x])
            ys.append(1.0)
    costs = {}
    for key, (xs, ys) in sorted(rows.items()):
        a = np.array(xs)
        norm = a.max(axis=0)
        norm[norm == 0] = 1.0
        coef = nnls(a / norm, np.array(ys))
        costs[key] = tuple(float(c) for c in coef / norm)
    return costs


def _shape(record: dict) -> dict:
    """A grid point's sizes and dtype as the dispatcher's keyword arguments."""
    return {k: record[k] for k in ("batch", "n", "m", "ck", "cv")} | {"dtype": DTYPES[record["dtype"]]}


def summarise_fit(points: list[dict]) -> str:
    """How well the cost model in ops/dispatch.py predicts the calibration measurements."""
    lines = [
        "| algorithm | pass | dtype | points | median abs. error | max abs. error |",
        "|---|---|---|---|---|---|",
    ]
    errs: dict[tuple[str, str, str], list[float]] = {}
    for r in points:
        if "error" in r:
            continue
        for a in EXACT:
            v = r["algorithms"].get(a, {})
            if "median_s" not in v:
                continue
            pred = dispatch.predict_seconds(a, training=r["backward"], **_shape(r))
            key = (a, "fwd+bwd" if r["backward"] else "fwd", r["dtype"])
            errs.setdefault(key, []).append(abs(pred / v["median_s"] - 1))
    for (a, ps, dt), e in sorted(errs.items()):
        lines.append(
            f"| {a} | {ps} | {dt} | {len(e)} | {100 * statistics.median(e):.0f}% | {100 * max(e):.0f}% |"
        )
    ratios = []
    for r in points:
        exact = {a: v["median_s"] for a, v in r.get("algorithms", {}).items() if "median_s" in v}
        if r.get("error") or not exact:
            continue
        pick = dispatch.choose_softmax_algorithm(device_type="cpu", training=r["backward"], **_shape(r))
        ratios.append(exact[pick] / min(exact.values()))
    if ratios:
        lines += [
            "",
            f"On these {len(ratios)} points the model's pick is within 10% of the measured fastest at "
            f"{sum(x <= 1.1 for x in ratios)} (worst {max(ratios):.2f}x): in-sample, the fitting data.",
        ]
    return "\n".join(lines)


def calibration_points() -> list[dict]:
    small = grid_points(ns=(784, 3136), cks=(64, 256, 512))
    big = grid_points(batches=(1,), ns=(12544,), ms=("N/4",), cks=(64, 512))
    return small + big


# ---------------------------------------------------------------------------------------------
# The whole block against mmcv's NonLocal3d (--mmcv)

MMCV_CASES = [
    # (label, in_channels, T, H, W): the measurements
    ("headline", 256, 16, 56, 56),
    ("n12544", 512, 16, 28, 28),
]


def run_block_case(case: dict) -> dict:
    """One block forward + backward (B = 1, sub-sampled keys) in this process."""
    torch.manual_seed(0)
    cin = case["in_channels"]
    x = torch.randn(1, cin, case["t"], case["h"], case["w"], requires_grad=True)
    if case["impl"] == "mmcv":
        sys.path.insert(0, case["mmcv_site"])
        from mmcv.cnn import NonLocal3d

        block = NonLocal3d(cin, reduction=2, mode=case["mode"], use_scale=True, sub_sample=True)
    else:
        from nonlocalnet import NonLocalBlock

        block = NonLocalBlock(
            cin, cin // 2, mode=case["mode"], use_scale=True, sub_sample=True, algorithm=case["algorithm"]
        )
    block.train()

    def fn():
        block(x).sum().backward()
        x.grad = None
        block.zero_grad(set_to_none=True)

    result = measure(fn, case["warmup"], case["repeats"])
    return {**case, **result}


def _block_of(impl: str, algorithm: str, mode: str, cin: int, mmcv_site: str):
    if impl == "mmcv":
        if mmcv_site not in sys.path:
            sys.path.insert(0, mmcv_site)
        from mmcv.cnn import NonLocal3d

        return NonLocal3d(cin, reduction=2, mode=mode, use_scale=True, sub_sample=True)
    from nonlocalnet import NonLocalBlock

    return NonLocalBlock(cin, cin // 2, mode=mode, use_scale=True, sub_sample=True, algorithm=algorithm)


def run_block_pair(case: dict) -> dict:
    """Several blocks on one input in one process, each called once untimed (``warmup``, default
    1), then in turn ``repeats`` times (drift and other load hit all alike); per call time and
    peak extra memory."""
    torch.manual_seed(0)
    cin = case["in_channels"]
    x = torch.randn(1, cin, case["t"], case["h"], case["w"], requires_grad=True)
    blocks = {
        f"{impl}/{alg}": _block_of(impl, alg, case["mode"], cin, case["mmcv_site"]).train()
        for impl, alg in case["impls"]
    }

    def reset() -> None:
        x.grad = None
        for block in blocks.values():
            block.zero_grad(set_to_none=True)

    calls = {name: (lambda block=block: block(x).sum().backward()) for name, block in blocks.items()}
    runs = measure_in_turn(calls, case["repeats"], warmup=case.get("warmup", 1), reset=reset)
    return {**case, "runs": runs}


def summarise_pairs(pairs: list[dict]) -> str:
    lines = [
        "| case | mode | implementation | s (median) | each call s | peak extra MiB | speed vs mmcv "
        "| memory vs mmcv |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in pairs:
        if "error" in p:
            lines.append(f"| {p['case']} | {p['mode']} | failed: {p['error']} | | | | | |")
            continue
        mm = p["runs"].get("mmcv/explicit")
        for name, r in p["runs"].items():
            sp = mem = ""
            if mm:
                sp = f"{mm['median_s'] / r['median_s']:.2f}x"
                mem = f"1/{mm['peak_extra_mib'] / max(r['peak_extra_mib'], 1e-9):.1f}"
            label = "mmcv NonLocal3d" if name.startswith("mmcv") else f"ours, {name.split('/')[1]}"
            each = ", ".join(f"{t:.1f}" for t in r["times_s"])
            lines.append(
                f"| {p['case']} | {p['mode']} | {label} | {r['median_s']:.2f} | {each} "
                f"| {r['peak_extra_mib']:.0f} | {sp} | {mem} |"
            )
    return "\n".join(lines)


def mmcv_plan(mmcv_site: str) -> list[dict]:
    cases = []
    for label, cin, t, h, w in MMCV_CASES:
        for mode in ("embedded_gaussian", "gaussian"):
            impls = [("ours", a) for a in ("auto", "fused", "flash", "chunked", "naive")]
            impls.append(("mmcv", "explicit"))
            for impl, algorithm in impls:
                big = h * w * t >= 50176
                cases.append(
                    {
                        "kind": "block",
                        "case": label,
                        "in_channels": cin,
                        "t": t,
                        "h": h,
                        "w": w,
                        "mode": mode,
                        "impl": impl,
                        "algorithm": algorithm,
                        "mmcv_site": mmcv_site,
                        "warmup": 0 if big else 1,
                        "repeats": 1 if big else 3,
                    }
                )
    return cases


def summarise_mmcv(results: list[dict]) -> tuple[str, list[dict]]:
    """Block forward + backward: every algorithm of ours against mmcv and against our naive twin."""
    lines = [
        "| case | mode | implementation | s | peak extra MiB | speed vs mmcv | memory vs mmcv "
        "| speed vs naive twin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for label, cin, t, h, w in MMCV_CASES:
        for mode in ("embedded_gaussian", "gaussian"):
            rs = [r for r in results if r["case"] == label and r["mode"] == mode]
            ok = lambda r: r is not None and "error" not in r  # noqa: E731
            mm = next((r for r in rs if r["impl"] == "mmcv"), None)
            tw = next((r for r in rs if r["impl"] == "ours" and r["algorithm"] == "naive"), None)
            for r in rs:
                name = "mmcv NonLocal3d" if r["impl"] == "mmcv" else f"ours, {r['algorithm']}"
                if not ok(r):
                    lines.append(f"| {label} | {mode} | {name} | - | - | {r.get('error', '')} | | |")
                    continue
                row = {"case": label, "mode": mode, "impl": name, "seconds": r["median_s"]}
                sp = mem = twin = ""
                if ok(mm):
                    row["speed_vs_mmcv"] = mm["median_s"] / r["median_s"]
                    row["memory_vs_mmcv"] = r["peak_extra_mib"] / max(mm["peak_extra_mib"], 1e-9)
                    sp, mem = f"{row['speed_vs_mmcv']:.2f}x", f"1/{1 / row['memory_vs_mmcv']:.1f}"
                if ok(tw):
                    row["speed_vs_twin"] = tw["median_s"] / r["median_s"]
                    twin = f"{row['speed_vs_twin']:.2f}x"
                rows.append(row)
                lines.append(
                    f"| {label}: 1x{cin}x{t}x{h}x{w} | {mode} | {name} | {r['median_s']:.2f} "
                    f"| {r['peak_extra_mib']:.0f} | {sp} | {mem} | {twin} |"
                )
    return "\n".join(lines), rows


def summarise_any(data: dict) -> str:
    """The table of any file this script writes (benchmarks/report.py renders it)."""
    kind = data.get("kind", "block")
    if kind == "grid":
        text = summarise_grid(data["points"])[0]
        return text + "\n\n" + summarise_parts(data) if data.get("parts") else text
    if kind == "calibration":
        return summarise_fit(data["points"])
    if kind == "mmcv":
        if not data["cases"]:  # a file of the paired run alone
            return summarise_pairs(data["pairs"])
        text = summarise_mmcv(data["cases"])[0]
        if data.get("pairs"):
            text += (
                "\n\nThe headline case again, the blocks called in turn in one process "
                "(`--mmcv-paired`):\n\n" + summarise_pairs(data["pairs"])
            )
        return text
    return summarise(data["cases"])[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--glibc-malloc", action="store_true", help="don't set CACHING_MALLOC")
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds (smoke test)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "block.json")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--grid", action="store_true", help="the softmax algorithms on the grid")
    parser.add_argument("--calibrate", action="store_true", help="measure the cost model's points")
    parser.add_argument("--fit", action="store_true", help="refit the cost model, print COSTS")
    parser.add_argument("--mmcv", action="store_true", help="the block against mmcv's NonLocal3d")
    parser.add_argument("--mmcv-paired", action="store_true", help="headline: blocks in turn, one process")
    parser.add_argument("--repeats", type=int, default=3, help="--mmcv-paired: calls per block")
    parser.add_argument("--mmcv-site", default="", help="a folder holding mmcv-lite (not a dependency)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--ns", nargs="+", type=int, default=[784, 3136, 12544, 50176])
    parser.add_argument("--ms", nargs="+", default=["N", "N/4"], choices=["N", "N/4"])
    parser.add_argument("--cks", nargs="+", type=int, default=[64, 128, 256, 512])
    parser.add_argument("--modes", nargs="+", default=["gaussian", "embedded_gaussian"])
    parser.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--redo", action="store_true", help="--grid: measure these points again")
    parser.add_argument("--cases", nargs="+", default=None, help="--mmcv: only these case/mode/impl labels")
    args = parser.parse_args()
    if args.worker:
        case = json.loads(args.worker)
        if "group" in case:
            print(json.dumps({"results": run_group(case["group"])}))
        elif case.get("kind") == "pair":
            print(json.dumps(run_block_pair(case)))
        elif case.get("kind") == "block":
            print(json.dumps(run_block_case(case)))
        else:
            print(json.dumps(run_case(case)))
        return
    results_dir = Path(__file__).parent / "results"
    if args.fit:
        data = json.loads((results_dir / "block_calibration.json").read_text())
        costs = fit_costs(data["points"])
        print("COSTS = {")
        for key, c in costs.items():
            print(f"    {key!r}: ({', '.join(f'{x:.4g}' for x in c)}),")
        print("}")
        return
    if args.grid or args.calibrate:
        if args.grid:
            points = grid_points(
                tuple(args.batches),
                tuple(args.ns),
                tuple(args.ms),
                tuple(args.cks),
                tuple(args.modes),
                tuple(args.passes),
                tuple(args.dtypes),
            )
            out, algos, kind = results_dir / "block_grid.json", (*GRID_ALGOS, "auto"), "grid"
        else:
            points, out, algos, kind = (
                [
                    p
                    for p in calibration_points()
                    if ("fwd+bwd" if p["backward"] else "fwd") in args.passes and p["dtype"] in args.dtypes
                ],
                results_dir / "block_calibration.json",
                EXACT,
                "calibration",
            )
        if args.out != parser.get_default("out"):
            out = args.out
        data = run_grid(points, out, algos, args.timeout, kind, args.redo)
        print(summarise_any(data))
        print(f"\nwrote {out}", file=sys.stderr)
        return
    if args.mmcv_paired or args.mmcv:  # both add to one file
        out = results_dir / "block_mmcv.json" if args.out == parser.get_default("out") else args.out
        lock = hold_write_lock(out)  # noqa: F841 - the open handle holds the lock until the process ends
    if args.mmcv_paired:
        data = (
            json.loads(out.read_text()) if out.exists() else {"kind": "mmcv", "meta": machine(), "cases": []}
        )
        pairs = []
        for mode in args.modes:
            _, cin, t, h, w = MMCV_CASES[0]
            impls = [("ours", "auto"), ("mmcv", "explicit")]
            case = {
                "kind": "pair",
                "case": "headline",
                "mode": mode,
                "in_channels": cin,
                "t": t,
                "h": h,
                "w": w,
                "impls": impls,
                "mmcv_site": args.mmcv_site,
                "repeats": args.repeats,
            }
            res = spawn(__file__, case, args.timeout)
            pairs.append(res)
            print(summarise_pairs([res]), file=sys.stderr, flush=True)
        data["pairs"] = pairs
        write_json(out, data)
        print(summarise_pairs(pairs))
        return
    if args.mmcv:
        site = args.mmcv_site
        try:
            if site:
                sys.path.insert(0, site)
            import mmcv.cnn  # noqa: F401
        except ImportError as err:
            print(
                f"mmcv is not installed ({err}): its rows are skipped; pip install mmcv-lite "
                "(e.g. --target DIR, then --mmcv-site DIR)",
                file=sys.stderr,
            )
            site = None
        data = (
            json.loads(out.read_text()) if out.exists() else {"kind": "mmcv", "meta": machine(), "cases": []}
        )
        label = lambda c: f"{c['case']}/{c['mode']}/{c['impl']}/{c['algorithm']}"  # noqa: E731
        for case in mmcv_plan(site or ""):
            if case["impl"] == "mmcv" and site is None:
                continue
            if args.cases and not any(label(case).startswith(x) for x in args.cases):
                continue
            res = spawn(__file__, case, args.timeout)
            data["cases"] = [c for c in data["cases"] if label(c) != label(case)] + [res]
            done = res.get("error") or f"{res['median_s']:.2f} s, {res['peak_extra_mib']:.0f} MiB"
            print(f"{label(case)}: {done}", file=sys.stderr, flush=True)
            write_json(out, data)
        print(summarise_mmcv(data["cases"])[0])
        return
    results = []
    cases = plan(args.quick)
    for i, case in enumerate(cases, 1):
        res = spawn(__file__, case, args.timeout, caching_malloc=not args.glibc_malloc)
        results.append(res)
        done = res.get("error") or f"{1e3 * res['median_s']:.1f} ms, {res['peak_extra_mib']:.0f} MiB"
        print(f"[{i}/{len(cases)}] {_fmt_case(case)}: {done}", file=sys.stderr, flush=True)
    table, rows = summarise(results)
    print(table)
    meta = {**machine(), "quick": args.quick, "caching_malloc": not args.glibc_malloc}
    write_json(args.out, {"meta": meta, "summary": rows, "cases": results})
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
