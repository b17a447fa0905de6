"""ARFL Table 1 (rows A-F, 5 seeds each) end to end: seeds one after another vs vmapped.

Each (row, mode) is one ``python -m arjax.launch`` process in a fresh workdir, timed
from start to exit (compilation, training, evaluation, report), so the numbers are
the wall time a user waits. The two modes alternate per row (sequential A, vmapped A,
sequential B, ...), so a change of machine load hits both alike. ``--epochs`` shortens
the runs (the paper's 5000 epochs take about 30 min per mode on 2 CPU cores)::

    python benchmarks/seed_stacking.py --epochs 200 --json seed_stacking.json

The JSON holds per row and mode the wall time, the report's mean clean and
adversarial accuracy (the modes must agree), and the totals and their ratio.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("standard", "standard_arfl", "adversarial", "adversarial_arfl", "dual", "dual_arfl")
MODES = {"sequential": "False", "vmapped": "True"}


def run(row: str, mode: str, epochs: int, workdir: str) -> dict:
    """One row in one mode: wall seconds and the report's mean accuracies."""
    cmd = [sys.executable, "-m", "arjax.launch", f"--config=configs/moons_arfl.py:{row}"]
    cmd += [f"--workdir={workdir}", "--noprogress", f"--config.train.num_epochs={epochs}"]
    cmd += [f"--config.train.vmap_seeds={MODES[mode]}"]
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode:
        raise RuntimeError(f"{row} {mode} failed:\n{out.stderr[-3000:]}")
    with open(os.path.join(workdir, "report.json")) as f:
        summary = json.load(f)["summary"]
    return {
        "seconds": seconds,
        "clean_accuracy": summary["clean/accuracy"]["mean"],
        "adversarial_accuracy": summary["adversarial/accuracy"]["mean"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5000)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated variants")
    parser.add_argument("--json", default="", help="write the results here")
    args = parser.parse_args()
    results: dict = {"epochs": args.epochs, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows.split(","):
            results["rows"][row] = {}
            for mode in MODES:
                r = run(row, mode, args.epochs, os.path.join(tmp, f"{row}_{mode}"))
                results["rows"][row][mode] = r
                print(
                    f"{row:18s} {mode:10s} {r['seconds']:8.1f} s  clean "
                    f"{r['clean_accuracy']:.4f}  adversarial {r['adversarial_accuracy']:.4f}",
                    flush=True,
                )
    totals = {m: sum(r[m]["seconds"] for r in results["rows"].values()) for m in MODES}
    results["total_seconds"] = totals
    results["speedup"] = totals["sequential"] / totals["vmapped"]
    print(f"total: sequential {totals['sequential']:.1f} s, vmapped {totals['vmapped']:.1f} s, "
          f"speedup {results['speedup']:.2f}x")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
