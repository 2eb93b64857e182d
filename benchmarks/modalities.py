"""Every built-in task on one shared encoder against each task trained alone with as many steps.

    python -m benchmarks.modalities [--out runs/modalities_benchmark] [--steps-per-task N] [--runs RUN ...]
                                    [dotted.key=value ...]

1. `configs/modalities.yaml` trains all tasks at once (round robin: max_steps / T steps per task).
2. Each task trains alone with the same encoder, options and number of steps.
3. The language task trains alone once more, starting from the single-task byte MLM's checkpoint
   (`init_from`), against its from-scratch run at equal steps.
4. The multi-task and single-task MNIST models classify OpenCV's digits (held out: another source).
Then it prints single- vs multi-task test metrics beside each task's baseline, checks the targets, and
draws the multi-task run's gradient-conflict heatmap (`python -m perceiver_mt.report`).

`--runs` trains only the named runs (multi, a task's name, languages_init) and takes the others' results
from earlier runs in `--out` where they finished; e.g. the multi-task run and the single-task runs in two
processes, then `--runs` with no name to print the table (dotted overrides go before `--runs`). A run that
already finished in `--out` is never trained over (delete its folder to train it again); one that was cut
short resumes from its last checkpoint.

Targets: every task clearly above its baseline (a tenth of the way from it to 1 at least); no task more than 2 points below its single-task run;
mnist test accuracy >= 0.97, mnist_points >= 0.90, tones (held-out speaker) >= 0.60.
Exit status 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "modalities.yaml"
HEADLINE = {  # task -> (metric, baseline metric or None, absolute target or None)
    "digits": ("acc", "baseline_acc", None),
    "pydoc_mlm": ("masked_acc", "baseline_acc", None),
    "mnist": ("acc", "baseline_acc", 0.97),
    "mnist_points": ("acc", "baseline_acc", 0.90),
    "tones": ("acc", "baseline_acc", 0.60),
    "languages": ("acc", "baseline_acc", None),
}
MAX_DROP = 0.02  # multi-task may be at most 2 points below single-task
CLEARLY = 0.1  # "clearly above the baseline": at least a tenth of the way from the baseline to 1
# Every run checkpoints every 500 steps and starts with ckpt_path=last: one cut short (a shared machine, a
# closed terminal) continues where it stopped when the benchmark is started again.
RESUMABLE = {"ckpt_path": "last", "parallel": {"checkpoint_every_n_steps": 500}}


def write_config(out: Path, tasks: list[str] | None, steps: int, overrides: list[str], extra: dict | None = None) -> Path:
    """configs/modalities.yaml restricted to `tasks` (None: all), trained `steps` steps, saved under `out`.
    Overrides of a task left out (`tasks.<other>.…`) are dropped, so one override list serves every run."""
    from perceiver_mt.config import load_yaml

    config = load_yaml(CONFIG)
    if tasks is not None:
        config.tasks = {name: config.tasks[name] for name in tasks}
    config.trainer.max_steps = steps
    config.trainer.val_check_interval = min(int(config.trainer.val_check_interval), steps)
    config.output_dir = str(out)
    kept = [o for o in overrides if not (o.startswith("tasks.") and o.split(".")[1].split("=")[0] not in config.tasks)]
    config = OmegaConf.merge(config, OmegaConf.from_dotlist(kept), extra or {})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    OmegaConf.save(config, path)
    return path


class RunFailed(Exception):
    pass


def run(config: Path, log: Path) -> tuple[dict, float]:
    """train.py on `config`; returns its metrics.json and wall seconds (output appended to `log`)."""
    start = time.perf_counter()
    with log.open("a") as handle:
        status = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(config)], cwd=REPO,
                                stdout=handle, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if status != 0:
        last = ([line for line in log.read_text(errors="replace").splitlines() if line.strip()] or ["(no output)"])[-1]
        raise RunFailed(f"train.py --config {config} exited with status {status}: {last.strip()[:300]} (log: {log})")
    return json.loads((config.parent / "metrics.json").read_text()), wall


def opencv_accuracy(checkpoint: Path, task: str = "mnist") -> float | None:
    """Accuracy of a trained mnist task on OpenCV's 5,000 digits, or None without opencv-doc."""
    import torch

    from datamodules.mnist import load_opencv_digits
    from perceiver_mt.inference import Predictor
    from perceiver_mt.packaged_data import MissingData

    try:
        images, labels = load_opencv_digits()
    except MissingData as missing:
        print(f"(held-out OpenCV digits skipped: {missing})")
        return None
    predictor = Predictor.from_checkpoint(checkpoint)
    predicted = torch.cat([predictor.predict(task, images[i:i + 500]) for i in range(0, len(images), 500)])
    return float((predicted.numpy() == labels).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "modalities_benchmark")
    parser.add_argument("--steps-per-task", type=int, default=None, help="default: max_steps / tasks of the config")
    parser.add_argument("--runs", nargs="*", default=None,
                        help="train only these (multi, a task, languages_init); default: all")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides for every run")
    args = parser.parse_args(argv)

    tasks = list(OmegaConf.load(CONFIG).tasks)
    per_task = args.steps_per_task or int(OmegaConf.load(CONFIG).trainer.max_steps) // len(tasks)
    fine_tune = {"init_from": str(args.out / "pydoc_mlm" / "checkpoints" / "last.ckpt"),
                 "init_map": {"languages": "pydoc_mlm"}}
    plan = {"multi": (None, per_task * len(tasks), None), **{task: ([task], per_task, None) for task in tasks},
            "languages_init": (["languages"], per_task, fine_tune)}  # run -> (tasks, steps, extra config)
    chosen = list(plan) if args.runs is None else args.runs
    unknown = [name for name in chosen if name not in plan]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(plan)}")
    load_before = os.getloadavg()[0]
    results, walls = {}, {}
    for name in chosen:
        run_tasks, steps, extra = plan[name]
        if (args.out / name / "metrics.json").exists():
            print(f"{name}: finished before in {args.out / name}, not trained again", flush=True)
            continue
        if extra and not Path(extra["init_from"]).exists():
            print(f"error: {name} starts from {extra['init_from']}, which the pydoc_mlm run has not written yet: "
                  "run pydoc_mlm first", file=sys.stderr)
            return 2
        print(f"{name}: {', '.join(run_tasks or tasks)}, {steps} steps"
              + (" from the byte MLM's weights" if extra else ""), flush=True)
        try:  # an interrupted run resumes from its last checkpoint (one every RESUME_EVERY steps)
            results[name], walls[name] = run(write_config(args.out / name, run_tasks, steps, args.overrides,
                                                          {**RESUMABLE, **(extra or {})}), args.out / f"{name}.log")
        except RunFailed as failed:
            print(f"error: {name}: {failed}", file=sys.stderr)
            return 2
    for name in plan:  # what earlier or parallel invocations finished
        if name not in results and (args.out / name / "metrics.json").exists():
            results[name] = json.loads((args.out / name / "metrics.json").read_text())
    missing = [name for name in plan if name not in results]
    if missing:
        print(f"not finished yet: {', '.join(missing)} (the table needs every run)")
        return 1

    rows, missed = [], []
    for task in tasks:
        metric, baseline, target = HEADLINE.get(task, ("acc", "baseline_acc", None))
        multi = results["multi"][task][f"test/{metric}"]
        single = results[task][task][f"test/{metric}"]
        base = results["multi"][task].get(f"test/{baseline}") if baseline else None
        rows.append((task, metric, base, single, multi, target))
        if base is not None and multi < base + CLEARLY * (1 - base):
            missed.append(f"{task} multi {multi:.4f} not clearly above baseline {base:.4f}")
        if multi < single - MAX_DROP:
            missed.append(f"{task} multi {multi:.4f} more than {MAX_DROP:.2f} below single {single:.4f}")
        if target is not None and multi < target:
            missed.append(f"{task} multi {multi:.4f} below target {target}")
    print(f"\n{'task':14s} {'test metric':12s} {'baseline':>9s} {'single':>8s} {'multi':>8s} {'multi-single':>12s} {'target':>7s}")
    for task, metric, base, single, multi, target in rows:
        print(f"{task:14s} {metric:12s} {base if base is not None else float('nan'):9.4f} {single:8.4f} {multi:8.4f} "
              f"{multi - single:+12.4f} {target if target is not None else '':>7}")
    scratch = results["languages"]["languages"]["test/acc"]
    tuned = results["languages_init"]["languages"]["test/acc"]
    print(f"\nlanguages from scratch {scratch:.4f}  vs  from the byte MLM's weights {tuned:.4f}  ({per_task} steps each)")
    for name, checkpoint in (("multi", args.out / "multi"), ("single", args.out / "mnist")):
        accuracy = opencv_accuracy(checkpoint / "checkpoints" / "last.ckpt")
        if accuracy is not None:
            print(f"mnist ({name}-task) on OpenCV's held-out digits: {accuracy:.4f}")
    if walls:
        print("\nwall seconds (this invocation): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items())
              + f"   (load average {load_before:.1f} -> {os.getloadavg()[0]:.1f})")
    subprocess.run([sys.executable, "-m", "perceiver_mt.report", str(args.out / "multi")], cwd=REPO, check=False)
    (args.out / "results.json").write_text(json.dumps({"per_task_steps": per_task, "results": results,
                                                       "wall_s_this_invocation": walls}, indent=2))
    print("all targets met" if not missed else "missed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
