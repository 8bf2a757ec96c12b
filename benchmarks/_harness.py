"""Shared measurement harness: one process per case, median times, peak extra memory."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import torch

# glibc returns large freed blocks to the OS, so every call page-faults its buffers afresh (this
# doubled the time of some cases). A caching allocator, as on GPU or with jemalloc/tcmalloc, does
# not: these settings make glibc keep freed memory, for ours and the references alike.
CACHING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 40), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """High-water RSS since the last :func:`reset_peak` (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> None:
    """Return freed heap pages to the OS, then restart the high-water mark at the current RSS, so
    that a warm-up's code pages and cached buffers do not count as the measured work's memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def measure(fn: Callable[[], object], warmup: int, repeats: int) -> dict:
    """Median time over ``repeats`` calls after ``warmup`` calls, and their peak extra memory."""
    for _ in range(warmup):
        fn()
    reset_peak()
    base = rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_extra_mib": max(peak_rss() - base, 0) / 2**20,
    }


def measure_in_turn(
    calls: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    reset: Callable[[], None] = lambda: None,
) -> dict[str, dict]:
    """Several calls on the same inputs, in turn: ``warmup`` untimed rounds, then ``repeats``
    timed rounds (drift and other load hit all alike). Per call: median and every time, and the
    peak extra memory of its own calls. ``reset`` runs after each call, untimed (e.g. clear
    gradients)."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
            reset()
    times: dict[str, list[float]] = {k: [] for k in calls}
    peaks = dict.fromkeys(calls, 0.0)
    for _ in range(repeats):
        for name, fn in calls.items():
            reset_peak()
            base = rss()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            reset()
            peaks[name] = max(peaks[name], max(peak_rss() - base, 0) / 2**20)
    return {
        k: {"median_s": statistics.median(v), "times_s": v, "peak_extra_mib": peaks[k]}
        for k, v in times.items()
    }


def spawn(script: str, case: dict, timeout: float, caching_malloc: bool = True) -> dict:
    """Run ``script --worker CASE`` in a fresh process; its last stdout line is the JSON result."""
    cmd = [sys.executable, script, "--worker", json.dumps(case)]
    env = {**os.environ, **(CACHING_MALLOC if caching_malloc else {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or "").strip().splitlines()
        why = lines[-1] if lines else f"exit code {proc.returncode} (killed: out of memory?)"
        return {**case, "error": why}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
    }


def hold_write_lock(path: Path) -> TextIO:
    """Lock ``path`` for one run that reads it, adds to it and rewrites it, or exit with an error.

    Two such runs on one file would each rewrite it from their own copy, the last one dropping
    the other's results. The lock is on ``<path>.lock`` (the results file itself is replaced by
    each atomic write) and lasts while the returned handle is open (``with``, or the process).
    """
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock, "w")  # the caller holds it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        msg = f"another run is writing {path} (it holds {lock}): wait for it, or pass another --out"
        raise SystemExit(msg) from None
    return handle


def write_json(path: Path, payload: dict) -> None:
    """Write atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
