"""The default two-task run against its targets: `python train.py`, timed, then the figures that matter.

Targets (issue 2): digits test accuracy >= 0.95; masked-byte test accuracy >= 1.5x the most-frequent-
byte baseline; the whole run <= 10 minutes on a 2-core CPU. The machine's load average is printed
beside the wall time, because other jobs on the same cores stretch it.

    python -m benchmarks.default_run [--output-dir DIR] [dotted.key=value ...]

Exit status 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"digits_test_acc": 0.95, "mlm_test_ratio": 1.5, "wall_s": 600.0}


def figures(metrics: dict[str, dict[str, float]], wall_s: float) -> dict[str, float]:
    digits, mlm = metrics["digits"], metrics["pydoc_mlm"]
    return {
        "digits_val_acc": digits["val/acc"],
        "digits_test_acc": digits["test/acc"],
        "mlm_val_acc": mlm["val/masked_acc"],
        "mlm_val_baseline": mlm["val/baseline_acc"],
        "mlm_val_ratio": mlm["val/masked_acc"] / mlm["val/baseline_acc"],
        "mlm_test_acc": mlm["test/masked_acc"],
        "mlm_test_baseline": mlm["test/baseline_acc"],
        "mlm_test_ratio": mlm["test/masked_acc"] / mlm["test/baseline_acc"],
        "wall_s": wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/default_benchmark")
    parser.add_argument("overrides", nargs="*", help="extra dotted.key=value overrides for train.py")
    args = parser.parse_args(argv)

    # Each measurement is a new run: it replaces the previous measurement's folder.
    command = [sys.executable, str(REPO / "train.py"), f"output_dir={args.output_dir}", "overwrite=true", *args.overrides]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    wall_s = time.perf_counter() - start
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads((REPO / args.output_dir / "metrics.json").read_text())

    result = figures(metrics, wall_s)
    for key, value in result.items():
        print(f"{key:18s} {value:8.4f}")
    print(f"{'cpu_s':18s} {cpu.ru_utime + cpu.ru_stime:8.1f}   (load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})")
    missed = [f"{k} {result[k]:.4f} (target {'<=' if k == 'wall_s' else '>='} {t})" for k, t in TARGETS.items()
              if (result[k] > t if k == "wall_s" else result[k] < t)]
    print("all targets met" if not missed else "missed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
