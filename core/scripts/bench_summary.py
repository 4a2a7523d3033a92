#!/usr/bin/env python3
"""Summarise the `dispatch` criterion bench: ns per completion and async/callback ratios.

Reads criterion's JSON estimates (mean of the last run) from
$CARGO_TARGET_DIR/criterion/dispatch (default target/criterion/dispatch).
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
    ns_per_iter = json.loads(est.read_text())["mean"]["point_estimate"]
    rows[(int(threads), batch, name)] = ns_per_iter / (int(threads) * batch)

print(f"{'threads':>7} {'batch':>5} {'async_op':>9} {'async_inbox':>11} {'callback':>9}"
      f" {'op/cb':>6} {'inbox/cb':>8}   (ns per completion, wall time / completions)")
for threads, batch in sorted({(t, b) for t, b, _ in rows}):
    get = lambda n: rows.get((threads, batch, n), float("nan"))
    op, ib, cb = get("async_op"), get("async_inbox"), get("callback")
    print(f"{threads:>7} {batch:>5} {op:>9.1f} {ib:>11.1f} {cb:>9.1f} {op / cb:>6.2f} {ib / cb:>8.2f}")
