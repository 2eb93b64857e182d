"""PNG plots of a finished (or running) job from its own log files: no W&B account, no network.

    python -m perceiver_mt.report RUN_DIR [--out DIR]

RUN_DIR is a job's `output_dir` (its `tracking.json` says where the logs are), a W&B run directory
(`.../wandb/offline-run-*`), or any folder holding a CSV logger's `metrics.csv`. Writes to
RUN_DIR/report/ unless `--out` says otherwise:

    loss.png        per task: training loss (and validation loss) against the step
    metrics.png     per task: every other train/val metric against the step
    tasks.png       per task: share of steps, samples/s, encoder gradient norm
    conflict.png    the latest task-gradient cosine matrix, and each pair over time
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from perceiver_mt.tracking import runfile
from perceiver_mt.tracking.media import Heatmap
from perceiver_mt.tracking.render import heatmap_figure, plt, save_figure

Series = dict[str, list[tuple[float, float]]]  # metric key -> [(step, value)] in logging order
TASK_KEY = re.compile(r"^(train|val|test)/([^/]+)/(.+)$")
STEP_KEYS = ("trainer/global_step", "step")


class ReportError(ValueError):
    """RUN_DIR holds nothing this tool can read."""


def find_logs(run_dir: Path) -> list[Path]:
    """The run's log files, oldest first: `.wandb` files (one per resumed segment) or CSV `metrics.csv` files."""
    tracking = run_dir / "tracking.json"
    if tracking.is_file():
        entry = json.loads(tracking.read_text())
        where = Path(entry.get("run_dir") or entry.get("log_dir") or "")
        if entry.get("logger") == "wandb":  # every segment of a resumed run: same id, several offline dirs
            segments = sorted(where.parent.glob(f"*run-*-{entry['run_id']}/run-{entry['run_id']}.wandb"))
            if segments:
                return segments
        elif (where / "metrics.csv").is_file():
            return [where / "metrics.csv"]
    for pattern in ("*.wandb", "wandb/*run-*/*.wandb", "metrics.csv", "logs/version_*/metrics.csv", "**/*.wandb",
                    "**/metrics.csv"):
        found = sorted(run_dir.glob(pattern), key=lambda p: p.stat().st_mtime)
        if found:
            return found
    raise ReportError(f"no .wandb file or metrics.csv under {run_dir} (give a run's output_dir or W&B run directory)")


def read_series(paths: list[Path]) -> Series:
    rows: list[dict] = []
    for path in paths:
        rows += runfile.history(path) if path.suffix == ".wandb" else read_csv(path)
    series: Series = defaultdict(list)
    for row in rows:
        step = next((row[k] for k in STEP_KEYS if isinstance(row.get(k), (int, float))), None)
        if step is None:
            continue
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and key not in STEP_KEYS and not key.startswith("_"):
                series[key].append((float(step), float(value)))
    return dict(series)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(handle)]


def tasks_of(series: Series) -> list[str]:
    return sorted({m.group(2) for key in series if (m := TASK_KEY.match(key))})


def plot_panels(panels: dict[str, dict[str, list[tuple[float, float]]]], path: Path, title: str) -> Path | None:
    """One subplot per panel (task), one line per series in it."""
    panels = {name: lines for name, lines in panels.items() if lines}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (name, lines) in zip(axes[0], panels.items()):
        for label, points in sorted(lines.items()):
            steps, values = zip(*sorted(points))
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def loss_panels(series: Series, tasks: list[str]) -> dict:
    panels = {}
    for task in tasks:
        train = series.get(f"train/{task}/loss") or series.get(f"train/{task}/loss_step") or []
        panels[task] = {k: v for k, v in {"train": train, "val": series.get(f"val/{task}/loss", [])}.items() if v}
    return panels


def metric_panels(series: Series, tasks: list[str]) -> dict:
    panels: dict[str, dict] = {task: {} for task in tasks}
    for key, points in series.items():
        m = TASK_KEY.match(key)
        if m and m.group(1) in ("train", "val") and not m.group(3).startswith(("loss", "samples_per_sec", "step",
                                                                                "grad_norm")):
            panels[m.group(2)][f"{m.group(1)}/{m.group(3)}"] = points
    return panels


def task_panels(series: Series, tasks: list[str]) -> dict:
    wanted = ("step_share", "samples_per_sec", "grad_norm_encoder")
    return {name: {task: series[f"train/{task}/{name}"] for task in tasks if f"train/{task}/{name}" in series}
            for name in wanted}


def conflict_figure(series: Series, path: Path) -> Path | None:
    pairs = {tuple(k.split("/", 1)[1].split("__")): v for k, v in series.items()
             if k.startswith("conflict/") and "__" in k}
    if not pairs:
        return None
    tasks = sorted({t for pair in pairs for t in pair})
    matrix = np.eye(len(tasks))
    for (a, b), points in pairs.items():
        i, j = tasks.index(a), tasks.index(b)
        matrix[i, j] = matrix[j, i] = max(points)[1]  # the value at the latest step
    last = max(max(points)[0] for points in pairs.values())
    heat = heatmap_figure(Heatmap(matrix, tasks, tasks, title=f"task gradient cosine, step {int(last)}",
                                  value_range=(-1.0, 1.0), extra={"cmap": "RdBu"}))
    save_figure(heat, path)
    plot_panels({"cosine between task gradients": {f"{a} vs {b}": v for (a, b), v in pairs.items()}},
                path.with_name("conflict_over_time.png"), "gradient conflict on the shared encoder")
    return path


def report(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Draws every plot the run's logs allow; returns the PNG files written."""
    logs = find_logs(run_dir)
    series = read_series(logs)
    tasks = tasks_of(series)
    if not tasks:
        raise ReportError(f"{', '.join(map(str, logs))} holds no per-task metrics (train/<task>/..., val/<task>/...)")
    out = out or run_dir / "report"
    written = [
        plot_panels(loss_panels(series, tasks), out / "loss.png", "loss per task"),
        plot_panels(metric_panels(series, tasks), out / "metrics.png", "metrics per task"),
        plot_panels(task_panels(series, tasks), out / "tasks.png", "task schedule, speed and encoder gradients"),
        conflict_figure(series, out / "conflict.png"),
    ]
    return [p for p in written if p is not None] + ([out / "conflict_over_time.png"] if written[-1] else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a job's output_dir, a W&B run directory, or a CSV log folder")
    parser.add_argument("--out", type=Path, default=None, help="where the PNGs go (default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    if not args.run_dir.is_dir():
        print(f"error: RUN_DIR {str(args.run_dir)!r} is not a directory", file=sys.stderr)
        return 2
    try:
        for path in report(args.run_dir, args.out):
            print(path)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
