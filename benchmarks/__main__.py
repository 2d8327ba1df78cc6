"""``python -m benchmarks [--quick] [--only SUITE,...] [--json PATH] [--original-git DIR] [--minutes N]``

Starts and stops its own servers (nothing is left running), prints each figure as it is
measured, then a Markdown table, and writes every sample's statistics as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from .allocator import allocator
from .compare import compare
from .harness import Report
from .soak import soak
from .suites import ON_REQUEST, SUITES


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument(
        "--only",
        default=",".join(name for name in SUITES if name not in ON_REQUEST),
        help=f"comma-separated suites: {', '.join(SUITES)} ({', '.join(ON_REQUEST)}: only when named)",
    )
    parser.add_argument("--json", default="benchmarks/results/latest.json", help="where to write the results")
    parser.add_argument(
        "--original-git",
        default=os.environ.get("PARA_ATTN_BENCH_ORIGINAL_GIT"),
        help="a git copy of github.com/chengzeyi/ParaAttention: the compare suite runs the original server from it",
    )
    parser.add_argument(
        "--minutes", type=float, help="how long the soak suites run (default 20; --quick: 1, soak-allocator 2)"
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
    report = Report()
    started = time.time()
    for name in chosen:
        print(f"[{name}]", flush=True)
        if name == "compare":
            compare(report, args.quick, original_git=args.original_git)
        elif name == "soak":
            soak(report, args.quick, minutes=args.minutes)
        elif name == "soak-allocator":
            allocator(report, args.quick, minutes=args.minutes)
        else:
            SUITES[name](report, args.quick)
    print()
    print(report.table())
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)), "machine": platform.platform(),
            "python": sys.version.split()[0], "cpus": os.cpu_count(), "quick": args.quick, "minutes": args.minutes,
            "seconds": round(time.time() - started, 1)}  # fmt: skip
    print(f"\n{meta['date']}, {meta['machine']}, {meta['cpus']} CPUs, Python {meta['python']}"
          + (" (--quick)" if args.quick else ""))  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "rows": report.rows}, indent=2))
    print(f"\nwrote {out} ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
