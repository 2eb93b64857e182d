"""Framework overhead: `Trainer.fit` on the multi-task system vs a bare PyTorch loop, same model and batches.

The model is `configs/default.yaml`'s encoder with the `digits` task (batch 64); both sides use the
project's AdamW + schedule and gradient clipping at 1.0, and both consume the same pre-made batches, so
data loading is out of the comparison. Segments of `--steps` steps alternate (bare, Trainer, bare, ...)
and per-step times are taken between consecutive batches, so Trainer set-up is reported separately.

    python -m benchmarks.trainer_overhead --rounds 5 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from benchmarks.measure import REPO
from perceiver_mt.config import load_config
from perceiver_mt.optim import build_optimizer
from perceiver_mt.plugins import build_task_datamodule
from perceiver_mt.system import MultiTaskSystem

TASK = "digits"


def intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def synchronize(device: torch.device) -> None:
    """Step ends are stamped once the device has finished the step, not when it was queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimes(Callback):
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args: object) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())


def bare_loop(system: MultiTaskSystem, batches: list[dict], clip: float, device: torch.device) -> list[float]:
    model, plugin = system.model.to(device), system.task_plugins[TASK]
    optim = build_optimizer(model, system.run_config.optim, total_steps=len(batches))
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    model.train()
    stamps = []
    for batch in batches:
        task_batch = {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
                      for key, value in batch[TASK].items()}  # as Lightning moves each batch
        loss = plugin.loss(model(TASK, task_batch), task_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        synchronize(device)
        stamps.append(time.perf_counter())
    return intervals(stamps)


def trainer_fit(
    system: MultiTaskSystem, batches: list[dict], clip: float, device: torch.device,
) -> tuple[list[float], float]:
    timer = StepTimes(device)
    trainer = Trainer(
        max_steps=len(batches), accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        gradient_clip_val=clip, callbacks=[timer],
    )
    loader = DataLoader(batches, batch_size=None, shuffle=False)  # the pre-made batches, as they are
    start = time.perf_counter()
    trainer.fit(system, train_dataloaders=loader)
    return intervals(timer.stamps), time.perf_counter() - start


def profile_fit(system: MultiTaskSystem, batches: list[dict], clip: float, device: torch.device) -> str:
    """The ops of one Trainer.fit by host time, and how often the host waited for the device: each
    `aten::_local_scalar_dense` is a tensor read back to Python (`.item()`, `float()`, `bool()`), a stall
    that a bare loop without logging or metrics does not have."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        trainer_fit(system, batches, clip, device)
    events = prof.key_averages()
    reads = sum(e.count for e in events if e.key == "aten::_local_scalar_dense")
    syncs = {e.key: e.count for e in events if "Synchronize" in e.key}
    table = events.table(sort_by="self_cpu_time_total", row_limit=25)
    return f"{table}\nper fit of {len(batches)} steps: {reads} tensor reads to host, synchronisations {syncs}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="steps per segment")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--output", help="JSON file (default benchmarks/results/trainer_overhead.json)")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, profile one more Trainer.fit and print where its host time went")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = load_config(REPO / "configs" / "default.yaml", ["logger.kind=none"])
    config.tasks = {TASK: config.tasks[TASK]}
    system = MultiTaskSystem.from_config(config)
    datamodule = build_task_datamodule(TASK, system.task_plugins[TASK], config.tasks[TASK].data, config.seed)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches = []
    while len(batches) < args.steps:
        batches += [{TASK: batch} for batch in loader]
    batches = batches[:args.steps]
    batch_size = len(batches[0][TASK]["index"])
    clip = float(config.trainer.get("gradient_clip_val", 1.0))

    bare, fit, fit_walls = [], [], []
    for round_ in range(args.rounds):
        bare += bare_loop(system, batches, clip, device)
        times, wall = trainer_fit(system, batches, clip, device)
        fit += times
        fit_walls.append(wall)
        print(f"round {round_ + 1}: bare {statistics.median(bare):.4f} s/step, Trainer {statistics.median(fit):.4f} s/step",
              flush=True)
    bare_sps, fit_sps = batch_size / statistics.median(bare), batch_size / statistics.median(fit)
    report = {
        "command": "python -m benchmarks.trainer_overhead " + " ".join(os.sys.argv[1:]),
        "model": "configs/default.yaml encoder + digits task", "batch_size": batch_size, "load_average": os.getloadavg(),
        "bare_samples_per_s": bare_sps, "trainer_samples_per_s": fit_sps, "overhead": bare_sps / fit_sps - 1,
        "trainer_fit_wall_s_median": statistics.median(fit_walls), "steps_per_fit": args.steps,
        "torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    print(f"bare loop {bare_sps:.1f} samples/s, Trainer.fit {fit_sps:.1f} samples/s: "
          f"overhead {100 * report['overhead']:.1f}% (whole fit incl. set-up: {report['trainer_fit_wall_s_median']:.2f} s "
          f"for {args.steps} steps)")
    if args.profile:
        print(profile_fit(system, batches, clip, device))
    out = Path(args.output) if args.output else REPO / "benchmarks" / "results" / "trainer_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
