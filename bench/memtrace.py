"""Run a Python module under tracemalloc and record, while it runs, where its memory goes.

    python bench/memtrace.py OUTDIR [--interval 30] [--snapshot-every 4] [--frames 8] \
        -m df_middleware.cli worker

An investigation tool for a process's RSS (docs/benchmarks.md, "Soak"), not product code. Every
`--interval` seconds a background thread appends one JSON line to OUTDIR/stats.jsonl: RSS,
glibc malloc's and pymalloc's bytes in use and free-but-kept, the memory tracemalloc sees
(current and peak), the sizes of the caches a worker fills (SQLAlchemy's compiled cache, the
prepared statements cached per pooled connection, Prometheus label sets), the gc object count
and the 25 most numerous object types; with `--trim-every N`, every N intervals it calls glibc's
`malloc_trim(0)` and records RSS before and after. With `--frames 0` there is no tracemalloc (its overhead
and its snapshots distort RSS), only these gauges; otherwise every `--snapshot-every` intervals
it also dumps a tracemalloc snapshot (OUTDIR/snap-NNN.pickle), which `bench/memtrace_diff.py`
compares. soak_world.py starts worker2 under it when DFM_SOAK_WORKER2_WRAP names it, e.g.
`DFM_SOAK_WORKER2_WRAP="/work/main/bench/memtrace.py /tmp/w2mem --frames 0"`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import gc
import json
import os
import re
import runpy
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


#: mallopt's parameter number for the mmap threshold (glibc malloc.h).
M_MMAP_THRESHOLD = -3

_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
_MALLINFO2_FIELDS += ("uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


def malloc_mb() -> dict[str, float]:
    """glibc's view of the heap: bytes in use and bytes free but kept (not returned to the OS)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {
        "malloc_in_use_mb": round((info.uordblks + info.hblkhd) / 2**20, 2),
        "malloc_free_kept_mb": round(info.fordblks / 2**20, 2),
    }


def malloc_arenas_mb() -> list[dict[str, float]]:
    """Per glibc arena (heap 0 is the main thread's): bytes taken from the system and bytes free
    in it (`malloc_info`), to tell the main thread's heap from another thread's arena."""
    try:
        libc = ctypes.CDLL(None)
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return []
    with tempfile.NamedTemporaryFile("r") as capture:
        handle = libc.fopen(capture.name.encode(), b"w")
        if not handle:
            return []
        libc.malloc_info(0, handle)
        libc.fclose(handle)
        xml = capture.read()
    arenas = []
    for heap in re.findall(r'<heap nr="\d+">(.*?)</heap>', xml, re.S):
        free = sum(
            int(n) for n in re.findall(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"/>', heap)
        )
        system = re.search(r'<system type="current" size="(\d+)"/>', heap)
        arenas.append(
            {
                "system_mb": round(int(system.group(1)) / 2**20, 2) if system else 0.0,
                "free_mb": round(free / 2**20, 2),
            }
        )
    return arenas


def trim() -> dict[str, float]:
    """`malloc_trim(0)`: glibc gives the free pages of every arena back to the system. RSS before
    and after: what it drops by was free memory glibc kept, not memory the program holds."""
    before = rss_mb()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    return {"trim_rss_before_mb": round(before, 1), "trim_rss_after_mb": round(rss_mb(), 1)}


def pymalloc_mb() -> dict[str, float]:
    """Python's small-object allocator (mmap'd arenas glibc does not see): arenas held, and the
    bytes in blocks in use and free inside them (from `sys._debugmallocstats`, which writes to
    fd 2: pointed at a file for the call; it holds the GIL, so no other thread logs meanwhile)."""
    wanted = {
        "# arenas allocated current": "pymalloc_arenas",
        "# arenas highwater mark": "pymalloc_arenas_highwater",
        "# bytes in allocated blocks": "pymalloc_in_use_mb",
        "# bytes in available blocks": "pymalloc_free_mb",
    }
    found: dict[str, float] = {}
    with tempfile.TemporaryFile("w+") as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        for line in capture:
            label, _, value = line.partition("=")
            key = wanted.get(label.strip())
            if key is not None and key not in found:
                number = int(value.strip().replace(",", ""))
                found[key] = round(number / 2**20, 2) if key.endswith("_mb") else number
    return found


def caches(objects: list[object], statements: collections.Counter[str] | None = None) -> dict[str, object]:
    """The bounded caches a worker fills as it meets new statements: SQLAlchemy's compiled cache
    per engine, and per pooled asyncpg connection SQLAlchemy's prepared statements and asyncpg's
    own statement cache; and how many label sets the Prometheus registry holds. `statements`, when
    given, counts the connections that hold each prepared SQL text."""
    compiled: list[int] = []
    prepared: list[int] = []
    asyncpg_cached: list[int] = []
    states = 0
    for obj in objects:
        name = type(obj).__qualname__
        if name == "Engine" and getattr(obj, "_compiled_cache", None) is not None:
            compiled.append(len(obj._compiled_cache))  # type: ignore[attr-defined]
        elif name == "AsyncAdapt_asyncpg_connection":
            cache = getattr(obj, "_prepared_statement_cache", None)
            prepared.append(len(cache) if cache is not None else 0)
            if statements is not None and cache is not None:
                statements.update(str(key) for key in list(cache.keys()))
        elif name == "Connection" and type(obj).__module__.startswith("asyncpg"):
            stmt_cache = getattr(obj, "_stmt_cache", None)
            if stmt_cache is not None:
                asyncpg_cached.append(len(stmt_cache))
        elif name == "PreparedStatementState":
            states += 1
    samples = 0
    with contextlib.suppress(Exception):
        from prometheus_client import REGISTRY

        samples = sum(len(metric.samples) for metric in REGISTRY.collect())
    return {
        "compiled_cache": compiled,
        "sa_prepared_per_connection": sorted(prepared, reverse=True),
        "sa_prepared_total": sum(prepared),
        "asyncpg_stmt_cache_total": sum(asyncpg_cached),
        "prepared_statement_states": states,
        "prometheus_samples": samples,
    }


def write_metric_labels(path: Path) -> None:
    """Every metric's label sets (what Prometheus memory grows with), one per line."""
    with contextlib.suppress(Exception), path.open("w") as listing:
        from prometheus_client import REGISTRY

        for metric in REGISTRY.collect():
            label_sets = {
                tuple(sorted((k, v) for k, v in sample.labels.items() if k not in ("le", "quantile")))
                for sample in metric.samples
            }
            for labels in sorted(label_sets):
                listing.write(f"{metric.name}\t{dict(labels)}\n")


def record_forever(out: Path, interval: float, snapshot_every: int, trim_every: int) -> None:
    tick = 0
    with (out / "stats.jsonl").open("a") as stats:
        while True:
            time.sleep(interval)
            tick += 1
            objects = gc.get_objects()
            types = collections.Counter(type(o).__qualname__ for o in objects)
            statements: collections.Counter[str] = collections.Counter()
            line: dict[str, object] = {
                "t": round(time.time(), 1),
                "tick": tick,
                "rss_mb": round(rss_mb(), 1),
                **malloc_mb(),
                "malloc_arenas": malloc_arenas_mb(),
                **pymalloc_mb(),
                "gc_objects": sum(types.values()),
                **caches(objects, statements),
                "top_types": types.most_common(25),
            }
            del objects
            line["distinct_prepared_sql"] = len(statements)
            write_metric_labels(out / "prometheus_labels.txt")
            with (out / "prepared_sql.txt").open("w") as listing:
                for sql, connections in statements.most_common():
                    listing.write(f"{connections}\t{' '.join(sql.split())[:300]}\n")
            if trim_every and tick % trim_every == 0:
                line.update(trim())
            if tracemalloc.is_tracing():
                current, peak = tracemalloc.get_traced_memory()
                line["traced_mb"] = round(current / 2**20, 2)
                line["traced_peak_mb"] = round(peak / 2**20, 2)
                line["tracemalloc_overhead_mb"] = round(tracemalloc.get_tracemalloc_memory() / 2**20, 2)
            if snapshot_every and tracemalloc.is_tracing() and tick % snapshot_every == 0:
                path = out / f"snap-{tick:03d}.pickle"
                tracemalloc.take_snapshot().dump(str(path))
                line["snapshot"] = path.name
            stats.write(json.dumps(line) + "\n")
            stats.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    parser.add_argument("out", type=Path)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--snapshot-every", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8, help="0: no tracemalloc, only the gauges")
    parser.add_argument(
        "--trim-every", type=int, default=0, help="call malloc_trim(0) every N intervals (0: never)"
    )
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=0,
        help="mallopt(M_MMAP_THRESHOLD, N) first: a fixed threshold (glibc's is dynamic by default)",
    )
    parser.add_argument("-m", dest="module", required=True)
    args, rest = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mmap_threshold:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, args.mmap_threshold)
    if args.frames > 0:
        tracemalloc.start(args.frames)
    threading.Thread(
        target=record_forever,
        args=(args.out, args.interval, args.snapshot_every, args.trim_every),
        daemon=True,
    ).start()
    sys.argv = [args.module, *rest]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
