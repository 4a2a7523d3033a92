#!/usr/bin/env python3
"""Summarise the `dispatch` criterion bench: ns per completion, async/callback ratios, and how
throughput scales from 1 to N threads.

Reads criterion's JSON estimates (median of the last run: steadier than the mean on a shared,
noisy machine) from $CARGO_TARGET_DIR/criterion/dispatch (default target/criterion/dispatch).
Usage: core/scripts/bench_summary.py [criterion-dir]
"""
import json
import os
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else
            Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion" / "dispatch")
rows = {}
for est in root.glob("*_t*/*/new/estimates.json"):
    name, threads = est.parts[-4].rsplit("_t", 1)
    batch = int(est.parts[-3])
    ns_per_iter = json.loads(est.read_text())["median"]["point_estimate"]
    rows[(int(threads), batch, name)] = ns_per_iter / (int(threads) * batch)

if not rows:
    sys.exit(f"no criterion results under {root}: run the bench first")

NAMES = ("async_op", "async_inbox", "callback")
print(f"{'threads':>7} {'batch':>5} {'async_op':>9} {'async_inbox':>11} {'callback':>9}"
      f" {'op/cb':>6} {'inbox/cb':>8}   (ns per completion = wall time / completions)")
get = lambda t, b, n: rows.get((t, b, n), float("nan"))
for threads, batch in sorted({(t, b) for t, b, _ in rows}):
    op, ib, cb = (get(threads, batch, n) for n in NAMES)
    print(f"{threads:>7} {batch:>5} {op:>9.1f} {ib:>11.1f} {cb:>9.1f} {op / cb:>6.2f} {ib / cb:>8.2f}")

many = sorted({t for t, _, _ in rows if t > 1})
for n in many:
    print(f"\nthroughput with {n} threads / with 1 thread (ideal {n}.00):")
    print(f"{'batch':>5} " + " ".join(f"{name:>11}" for name in NAMES))
    for batch in sorted({b for t, b, _ in rows if t == n}):
        ratios = (get(1, batch, name) / get(n, batch, name) for name in NAMES)
        print(f"{batch:>5} " + " ".join(f"{r:>11.2f}" for r in ratios))
