#!/usr/bin/env python3
"""Summarise the `dispatch` criterion bench: ns per completion of each dispatch style, the
async/callback ratios, and how throughput scales from 1 to 2 consumer threads.

Every variant runs one poller thread plus N consumer threads (benches/benches/dispatch.rs);
a criterion iteration is one batch per consumer, so ns per completion = wall time per
iteration / (consumers x batch). Reads criterion's JSON estimates (median of the last run:
steadier than the mean on a shared, noisy machine) from $CARGO_TARGET_DIR/criterion/dispatch
(default target/criterion/dispatch).
Usage: core/scripts/bench_summary.py [criterion-dir]
"""
import json
import os
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else
            Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion" / "dispatch")
NAMES = ("async_op", "async_inbox", "callback_locked", "callback_lockfree")
SHORT = ("op", "inbox", "cb_lock", "cb_free")

rows = {}
for est in root.glob("*_c*/*/new/estimates.json"):
    name, consumers = est.parts[-4].rsplit("_c", 1)
    if name not in NAMES or not consumers.isdigit():
        continue  # results of an older version of the bench
    consumers, batch = int(consumers), int(est.parts[-3])
    ns_per_iter = json.loads(est.read_text())["median"]["point_estimate"]
    rows[(consumers, batch, name)] = ns_per_iter / (consumers * batch)

if not rows:
    sys.exit(f"no criterion results under {root}: run the bench first")

get = lambda c, b, n: rows.get((c, b, n), float("nan"))
print("ns per completion (median; wall time / completions; 1 poller + N consumer threads)")
print(f"{'cons':>4} {'batch':>5} " + " ".join(f"{s:>8}" for s in SHORT)
      + "   op/lock op/free inbox/lock inbox/free lock/free")
for consumers, batch in sorted({(c, b) for c, b, _ in rows}):
    op, ib, lk, lf = (get(consumers, batch, n) for n in NAMES)
    print(f"{consumers:>4} {batch:>5} " + " ".join(f"{v:>8.1f}" for v in (op, ib, lk, lf))
          + f"   {op / lk:>7.2f} {op / lf:>7.2f} {ib / lk:>10.2f} {ib / lf:>10.2f} {lk / lf:>9.2f}")

for n in sorted({c for c, _, _ in rows if c > 1}):
    print(f"\nthroughput with {n} consumers / with 1 (one poller either way; ideal {n}.00"
          " only if the poller is not the bottleneck):")
    print(f"{'batch':>5} " + " ".join(f"{s:>8}" for s in SHORT))
    for batch in sorted({b for c, b, _ in rows if c == n}):
        ratios = (get(1, batch, name) / get(n, batch, name) for name in NAMES)
        print(f"{batch:>5} " + " ".join(f"{r:>8.2f}" for r in ratios))
