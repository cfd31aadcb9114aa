"""Where memory grew between two tracemalloc snapshots of bench/memtrace.py.

    python bench/memtrace_diff.py OLD.pickle NEW.pickle [--by lineno|traceback|filename] [--top 25]

Prints the total traced memory of each snapshot, then the largest growths grouped as asked
(tracemalloc's own bookkeeping files excluded); with `--by traceback`, each with its frames.
"""

from __future__ import annotations

import argparse
import tracemalloc

IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--by", default="lineno", choices=["lineno", "traceback", "filename"])
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    old = tracemalloc.Snapshot.load(args.old).filter_traces(IGNORED)
    new = tracemalloc.Snapshot.load(args.new).filter_traces(IGNORED)
    total_old = sum(s.size for s in old.statistics("filename"))
    total_new = sum(s.size for s in new.statistics("filename"))
    print(
        f"traced: {total_old / 2**20:.2f} MB -> {total_new / 2**20:.2f} MB "
        f"({(total_new - total_old) / 2**20:+.2f} MB)"
    )
    for stat in new.compare_to(old, args.by)[: args.top]:
        print(
            f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks "
            f"(now {stat.size / 1024:.1f} KiB)  {stat.traceback[0]}"
        )
        if args.by == "traceback":
            for line in stat.traceback.format(limit=args.frames, most_recent_first=True)[2:]:
                print(f"        {line}")


if __name__ == "__main__":
    main()
