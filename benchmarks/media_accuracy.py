"""Accuracy of the optical-flow and audio-video tasks against their baselines, from trained checkpoints.

    python train.py --config configs/optical_flow.yaml          # -> runs/optical_flow/checkpoints/last.ckpt
    python train.py --config configs/av_autoencoding.yaml       # -> runs/av_autoencoding/checkpoints/last.ckpt
    python -m benchmarks.media_accuracy --flow runs/optical_flow/checkpoints/last.ckpt \
        --av runs/av_autoencoding/checkpoints/last.ckpt [--out benchmarks/results/media.json --figure docs/media.png]

With one of --flow / --av, an existing --out file keeps the other task's figures (and --figure draws both).

Optical flow: end-point error (pixels, lower is better) of the model, of zero flow and of OpenCV's
Farneback on the held-out synthetic test set (photos training never sees), on Middlebury's motorcycle
pair and on OpenCV's graf pair (where opencv-doc is installed), each at the task's working resolution.
Audio-video: PSNR (dB, higher is better) of each modality's reconstruction on the test windows (the last
10% of the clip, the second half of the held-out 20%), and on every evaluation window (the last 20%), against
predicting the evaluated data's mean. Each line says whether the target is met.
A checkpoint may hold other tasks too (e.g. a configs/modalities.yaml run): only these tasks are read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.optical_flow import HELDOUT_SEEDS, OpticalFlowDataModule, real_scenes
from datamodules.flow_scenes import FlowPair, heldout_pairs
from perceiver_mt.inference import Predictor
from perceiver_mt.run import build_task_datamodule
from tasks.flow_metrics import end_point_error, farneback_flow

NAMES = {"image": "video", "audio": "audio"}  # the task's modality names (Hugging Face's) -> what they hold


def flow_figures(predictor: Predictor, task: str, test_pairs: int) -> dict[str, dict[str, float]]:
    """{scene: {"model", "zero", "farneback"}} mean EPE in pixels at the task's working resolution."""
    plugin = predictor.plugins[task]
    size = plugin.image_size
    data = predictor.config.tasks[task].data
    defaults = OpticalFlowDataModule(**{k: v for k, v in data.items() if k != "name"})
    options = defaults.render_options  # the test set of the run's own DataModule settings
    scenes: dict[str, list[FlowPair]] = {
        "held-out synthetic": heldout_pairs(test_pairs, size, HELDOUT_SEEDS["test"], **options)}
    scenes.update({name: [pair] for name, pair in real_scenes(size).items()})
    if "graf" not in scenes:
        print("graf: skipped (Debian opencv-doc is not installed: apt-get install opencv-doc)")
    figures = {}
    for name, pairs in scenes.items():
        flows = {"model": [predictor.predict(task, p.frames[0], p.frames[1]).numpy() for p in pairs],
                 "zero": [np.zeros_like(p.flow) for p in pairs],
                 "farneback": [farneback_flow(p.frames) for p in pairs]}
        truth, valid = np.stack([p.flow for p in pairs]), np.stack([p.valid for p in pairs])
        # Pooled over every valid pixel of the scene's pairs, as the task's EPE metric.
        figures[name] = {k: end_point_error(np.stack(v), truth, valid) for k, v in flows.items()}
    return figures


def av_figures(predictor: Predictor, task: str) -> dict[str, Any]:
    """PSNR of each modality and of its mean-prediction baseline over the test windows (the clip's last 10%), and
    under "last_20_percent" over every evaluation window (validation and test: the issue's evaluation set)."""
    plugin = predictor.plugins[task]
    config = predictor.config
    datamodule = build_task_datamodule(task, plugin, config.tasks[task].data, config.seed)
    datamodule.setup("fit")
    datamodule.setup("test")
    test, everything = plugin.build_metrics(), plugin.build_metrics()
    with torch.no_grad():
        for split, loader in (("val", datamodule.val_dataloader()), ("test", datamodule.test_dataloader())):
            for batch in loader:
                outputs = predictor.network(task, batch)
                plugin.update_metrics(everything, outputs, batch)
                if split == "test":
                    plugin.update_metrics(test, outputs, batch)
    figures: dict[str, Any] = {name: float(value) for name, value in test.compute().items()}
    figures["last_20_percent"] = {name: float(value) for name, value in everything.compute().items()}
    return figures


def report(flow: dict[str, dict[str, float]] | None, av: dict[str, float] | None) -> list[str]:
    lines = []
    if flow:
        lines += ["| scene | model EPE | zero flow | Farneback | target |", "|---|---|---|---|---|"]
        for scene, f in flow.items():
            target = {"held-out synthetic": ("<= 0.5 x zero flow", f["model"] <= 0.5 * f["zero"]),
                      "motorcycle": ("< zero flow", f["model"] < f["zero"])}.get(scene)
            verdict = f"{target[0]}: {'met' if target[1] else 'NOT met'}" if target else "-"
            lines.append(f"| {scene} | {f['model']:.2f} | {f['zero']:.2f} | {f['farneback']:.2f} | {verdict} |")
    if av:
        lines += ["", "| modality, windows | PSNR (dB) | mean prediction (dB) | gain | target >= 3 dB |",
                  "|---|---|---|---|---|"]
        sets = [("test (last 10%)", av), ("last 20% (validation + test)", av.get("last_20_percent"))]
        for modality in ("image", "audio"):
            for windows, figures in sets:
                if not figures:  # results stored before the last-20% figures existed
                    continue
                psnr, base = figures[f"psnr_{modality}"], figures[f"baseline_psnr_{modality}"]
                lines.append(f"| {NAMES[modality]}, {windows} | {psnr:.2f} | {base:.2f} | {psnr - base:+.2f} | "
                             f"{'met' if psnr - base >= 3 else 'NOT met'} |")
    return lines


def draw(flow: dict[str, dict[str, float]] | None, av: dict[str, float] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (flow, av) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    column = 0
    if flow:
        ax = axes[0, column]
        names = list(flow)
        for k, (key, label) in enumerate([("model", "Perceiver IO"), ("zero", "zero flow"), ("farneback", "Farneback")]):
            ax.bar(np.arange(len(names)) + (k - 1) * 0.27, [flow[n][key] for n in names], 0.27, label=label)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("end-point error (px), lower is better")
        ax.set_title("optical flow")
        ax.legend()
        column += 1
    if av:
        ax = axes[0, column]
        modalities = ["image", "audio"]
        ax.bar(np.arange(2) - 0.2, [av[f"psnr_{m}"] for m in modalities], 0.4, label="reconstruction")
        ax.bar(np.arange(2) + 0.2, [av[f"baseline_psnr_{m}"] for m in modalities], 0.4, label="mean prediction")
        ax.set_xticks(range(2), [NAMES[m] for m in modalities])
        ax.set_ylabel("PSNR (dB), higher is better")
        ax.set_title("audio-video autoencoding (one clip)")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", help="checkpoint holding an optical_flow task")
    parser.add_argument("--av", help="checkpoint holding an av_autoencoding task")
    parser.add_argument("--flow-task", default="optical_flow")
    parser.add_argument("--av-task", default="av_autoencoding")
    parser.add_argument("--test-pairs", type=int, default=128)
    parser.add_argument("--out", help="write the figures here as JSON")
    parser.add_argument("--figure", help="draw them to this PNG")
    args = parser.parse_args(argv)
    if not (args.flow or args.av):
        parser.error("give --flow and/or --av checkpoints")
    torch.manual_seed(0)
    flow = flow_figures(Predictor.from_checkpoint(args.flow), args.flow_task, args.test_pairs) if args.flow else None
    av = av_figures(Predictor.from_checkpoint(args.av), args.av_task) if args.av else None
    print("\n".join(report(flow, av)))
    results = {"optical_flow": flow, "av_autoencoding": av}
    if args.out:  # only the tasks measured now replace their entries: the other task's figures stay
        out = Path(args.out)
        stored = json.loads(out.read_text()) if out.is_file() else {}
        command = "python -m benchmarks.media_accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
        stored.update({task: {**figures, "command": command} for task, figures in results.items() if figures})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(stored, indent=2))
        results = {task: stored.get(task) for task in results}  # what the figure draws: both tasks
    if args.figure:
        draw(results["optical_flow"], results["av_autoencoding"], Path(args.figure))
    return results


if __name__ == "__main__":
    main()
