"""GPU utilisation of bf16 training: every GPU measurement of the utilisation plan in one call, one JSON file.

    python -m benchmarks.gpu_utilisation                                   # CUDA: the shapes below
    python -m benchmarks.gpu_utilisation --tiny --device cpu --output /tmp/gpu.json   # the same, seconds on CPU

Each part runs in its own process under its own time limit (and all of them within `--budget-s`); the JSON
is rewritten after every part, so a run cut short keeps what it measured.

  imagenet          DeepMind's ImageNet Perceiver IO (configs/imagenet_shape.yaml: batch 32 x 50,176 pixels x 261
                    channels -> 512 x 1024 latents, 6 self-attention layers x 8 heads applied 8 times, one query ->
                    1,000 classes): the bf16 matrix rate (8192^3) in the same process; FLOPs of one forward counted
                    by torch.utils.flop_counter on the reference model (x3 for a training step: the numerator for
                    every implementation); the training step (forward, cross-entropy, backward, fused AdamW, bf16
                    autocast) of ours (speedup variants) and of Hugging Face's PerceiverForImageClassificationFourier:
                    median step, model FLOP/s, share of the matrix rate, peak memory
  trainer           the same network through `python train.py --config configs/imagenet_shape.yaml` (synthetic
                    images, bf16-mixed, CSV logger): step time from the run's train/steps_per_sec, and the
                    Trainer's overhead against the bare step of `imagenet`
  flow              config C (DeepMind's optical-flow network, benchmarks/configs.py) trained in bf16: ours, ours with
                    activation checkpointing and HF, step time and peak memory
  default_run       `python train.py` (configs/default.yaml) on the device, fp32 against bf16-mixed: wall time
  imagenet_compile  ours with `parallel.compile=encoder` (torch.compile of the whole encoder)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.measure import REPO

CONFIG = REPO / "configs" / "imagenet_shape.yaml"
TASK = "imagenet"
PARTS = ("imagenet", "trainer", "flow", "default_run", "imagenet_compile")
PART_LIMITS_S = {"imagenet": 150, "trainer": 150, "flow": 100, "default_run": 320, "imagenet_compile": 180}
IMAGENET_IMPLS = "ours,ours+fused,ours+fused+unpadded,hf"
# Seconds-long version of every shape: the same pipeline, networks of the same structure.
TINY_OVERRIDES = [
    "model.num_latents=16", "model.latent_channels=64", "model.num_self_attention_heads=4",
    "model.num_self_attends_per_block=2", "model.num_blocks=2", "tasks.imagenet.options.image_size=[8,8]",
    "tasks.imagenet.options.num_classes=10", "tasks.imagenet.options.query_channels=64",
    "tasks.imagenet.data.num_samples=24", "tasks.imagenet.data.batch_size=2", "tasks.imagenet.data.num_workers=0",
]
TINY_TRAINER = ["trainer.accelerator=cpu", "trainer.max_steps=8", "trainer.log_every_n_steps=2",
                "trainer.val_check_interval=8", "trainer.limit_val_batches=1"]


# --- measuring one training step --------------------------------------------------------------------------------

def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step: Callable[[], None], device: str, warmup: int, steps: int) -> dict[str, Any]:
    """Median of `steps` synchronised steps after `warmup`; CUDA: peak allocated memory over the timed steps."""
    import torch

    for _ in range(warmup):
        step()
    synchronize(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"status": "ok", "times": times, "step_s": statistics.median(times),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def training_step(model: Any, loss_of: Callable[[], Any], device: str) -> Callable[[], None]:
    """forward + loss under bf16 autocast, backward, fused AdamW (one kernel for all parameters)."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            loss = loss_of()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def counted_flops(run: Callable[[], Any]) -> int:
    """Matrix FLOPs of `run()` by torch.utils.flop_counter, attention through SDPA's math kernel (plain matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def matmul_tflops(device: str, tiny: bool) -> float:
    from benchmarks.measure import matmul_flops

    record = matmul_flops(size=512 if tiny else None, device=device, dtype="bfloat16")
    return record["flops"] / statistics.median(record["times"]) / 1e12


def release(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# --- the ImageNet-shaped network: ours from the config, Hugging Face's with the same shape -----------------------

def run_config(tiny: bool, overrides: list[str] = ()) -> Any:
    from perceiver_mt.config import load_config

    return load_config(CONFIG, [*(TINY_OVERRIDES if tiny else []), *overrides])


def build_ours(config: Any, variant: str) -> Any:
    """The network training builds (`build_network`: reference model + speedups), a benchmark variant of it:
    +fused / +matmul (speed.attention_kernel), +unpadded (speed.pad_heads=false), +reference (no speedups),
    +compile (parallel.compile=encoder)."""
    import torch

    from perceiver_mt.parallelize import ParallelConfig, parallelize
    from perceiver_mt.plugins import build_network, build_tasks

    options = set(variant.split("+")[1:])
    unknown = options - {"fused", "matmul", "unpadded", "reference", "compile"}
    if variant.split("+")[0] != "ours" or unknown:
        raise ValueError(f"unknown variant {variant!r}: ours, optionally +fused, +matmul, +unpadded, +reference, +compile")
    config.speed.enabled = "reference" not in options
    config.speed.attention_kernel = "fused" if "fused" in options else "matmul" if "matmul" in options else "auto"
    config.speed.pad_heads = "unpadded" not in options
    torch.manual_seed(0)
    tasks = build_tasks(config)
    network = build_network(config, tasks, log=lambda line: None)
    if "compile" in options:
        parallelize(network, ParallelConfig(compile="encoder"))
    return network, tasks[TASK]


def hf_config(config: Any) -> Any:
    """Hugging Face's PerceiverConfig of the same network (its Fourier front end fixes 64 bands up to 224)."""
    from transformers import PerceiverConfig

    m, options = config.model, config.tasks[TASK].options
    return PerceiverConfig(
        num_latents=m.num_latents, d_latents=m.latent_channels, d_model=m.input_channels, num_blocks=m.num_blocks,
        num_self_attends_per_block=m.num_self_attends_per_block, num_self_attention_heads=m.num_self_attention_heads,
        num_cross_attention_heads=m.num_cross_attention_heads, self_attention_widening_factor=1,
        cross_attention_widening_factor=1, num_labels=options["num_classes"], image_size=options["image_size"][0],
        attention_probs_dropout_prob=0.0,
    )


def image_batch(config: Any, batch: int, device: str) -> dict[str, Any]:
    import torch

    options = config.tasks[TASK].options
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, *options["image_size"], 3, generator=g)  # (B, H, W, 3) in [0, 1]
    target = torch.randint(0, options["num_classes"], (batch,), generator=g)
    return {"inputs": images.to(device), "target": target.to(device)}


def part_imagenet(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    device, config = args.device, run_config(args.tiny)
    batch_size = config.tasks[TASK].data["batch_size"]
    batch, one = image_batch(config, batch_size, device), image_batch(config, 1, device)
    result: dict[str, Any] = {"matmul_tflops_bf16": matmul_tflops(device, args.tiny), "batch": batch_size,
                              "shape": {"model": dict(vars(config.model)), "task": dict(config.tasks[TASK].options)},
                              "params": {}, "executed_train_step_flops_per_sample": {}, "steps": {}}
    reference, task = build_ours(run_config(args.tiny), "ours+reference")
    reference.to(device)
    per_sample = counted_flops(lambda: reference(TASK, one))  # with autograd on: the counter's module hooks need it
    del reference
    result["forward_flops"] = per_sample * batch_size  # the reference model's, for every implementation alike
    result["train_step_flops"] = 3 * result["forward_flops"]
    for impl in args.imagenet_impls.split(","):
        release(device)
        try:
            if impl == "hf":
                from transformers import PerceiverForImageClassificationFourier

                torch.manual_seed(0)
                model = PerceiverForImageClassificationFourier(hf_config(config)).to(device)

                def loss_of(b: dict = batch) -> Any:
                    logits = model(inputs=b["inputs"].permute(0, 3, 1, 2)).logits  # HF: (B, C, H, W)
                    return F.cross_entropy(logits.float(), b["target"])
            else:
                model, task = build_ours(run_config(args.tiny), impl)
                model.to(device)

                def loss_of(b: dict = batch) -> Any:
                    return task.loss(model(TASK, b), b)  # cross-entropy
            result["params"][impl] = sum(p.numel() for p in model.parameters())
            result["executed_train_step_flops_per_sample"][impl] = counted_flops(
                lambda: loss_of(one).backward())  # what this implementation multiplies, forward and backward
            model.zero_grad(set_to_none=True)
            record = time_steps(training_step(model, loss_of, device), device, args.warmup, args.steps)
            record["model_tflops"] = result["train_step_flops"] / record["step_s"] / 1e12
            record["of_peak"] = record["model_tflops"] / result["matmul_tflops_bf16"]
            result["steps"][impl] = record
        except torch.cuda.OutOfMemoryError:
            result["steps"][impl] = {"status": "oom"}
        except Exception as error:  # one line in the results; the other implementations still run
            result["steps"][impl] = {"status": "error", "error": f"{type(error).__name__}: {error}".splitlines()[0]}
        model = task = None
    steps = result["steps"]
    if steps.get("ours", {}).get("status") == "ok" and steps.get("hf", {}).get("status") == "ok":
        result["ours_faster_than_hf"] = steps["hf"]["step_s"] / steps["ours"]["step_s"]
    return result


def part_imagenet_compile(args: argparse.Namespace) -> dict[str, Any]:
    args.imagenet_impls = "ours+compile"
    return part_imagenet(args)


# --- runs of train.py --------------------------------------------------------------------------------------------

def train_run(output_dir: Path, overrides: list[str], limit_s: float, config: Path | None = None) -> dict[str, Any]:
    """`python train.py` in its own process: wall time, exit status, its metrics and its logged step rates."""
    command = [sys.executable, str(REPO / "train.py"), *(["--config", str(config)] if config else []),
               f"output_dir={output_dir}", "overwrite=true", *overrides]
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    log = output_dir.parent / f"{output_dir.name}.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        try:
            returncode = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=limit_s).returncode
        except subprocess.TimeoutExpired:
            returncode = "timeout"
    record: dict[str, Any] = {"command": " ".join(command[1:]), "wall_s": time.perf_counter() - start,
                              "returncode": returncode, "log": str(log)}
    if returncode != 0:
        record["status"] = "error"
        record["error"] = " | ".join(log.read_text().strip().splitlines()[-3:])[-600:]
        return record
    record["status"] = "ok"
    record["steps_per_sec"] = logged_steps_per_sec(output_dir)
    later = record["steps_per_sec"][1:] or record["steps_per_sec"]  # the first window holds warm-up
    record["step_s"] = 1 / statistics.median(later) if later else None
    metrics = output_dir / "metrics.json"
    record["metrics"] = json.loads(metrics.read_text()) if metrics.exists() else None
    return record


def logged_steps_per_sec(output_dir: Path) -> list[float]:
    """train/steps_per_sec of every logged window (TaskStatsMonitor: wall time, data loading included)."""
    files = sorted(output_dir.glob("logs/version_*/metrics.csv"))
    if not files:
        return []
    with open(files[-1]) as f:
        return [float(row["train/steps_per_sec"]) for row in csv.DictReader(f) if row.get("train/steps_per_sec")]


def part_trainer(args: argparse.Namespace) -> dict[str, Any]:
    overrides = [*(TINY_OVERRIDES + TINY_TRAINER if args.tiny else []), "logger.kind=csv"]
    record = train_run(Path(args.work_dir) / "imagenet_trainer", overrides, args.part_limit_s - 5, CONFIG)
    record["batch"] = run_config(args.tiny).tasks[TASK].data["batch_size"]
    return record


def part_default_run(args: argparse.Namespace) -> dict[str, Any]:
    device = ["trainer.accelerator=cuda"] if args.device.startswith("cuda") else ["trainer.accelerator=cpu"]
    config = REPO / "configs" / ("debug.yaml" if args.tiny else "default.yaml")
    common = [*device, "logger.kind=csv", *(["trainer.max_steps=6"] if args.tiny else [])]
    result = {}
    for precision in ("32", "bf16-mixed"):
        limit = max(10.0, (args.part_limit_s - 10) / 2)
        result[precision] = train_run(Path(args.work_dir) / f"default_{precision}", [*common,
                                      f"trainer.precision={precision}"], limit, config)
    if all(result[p]["status"] == "ok" for p in result):
        result["bf16_over_fp32_wall"] = result["bf16-mixed"]["wall_s"] / result["32"]["wall_s"]
    return result


# --- config C: DeepMind's optical-flow network -------------------------------------------------------------------

def part_flow(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.measure import measure_in_process

    config = "tinyC" if args.tiny else "C"
    result: dict[str, Any] = {"config": config, "matmul_tflops_bf16": matmul_tflops(args.device, args.tiny), "steps": {}}
    for impl in ("ours", "ours+ckpt", "hf"):
        release(args.device)
        record = measure_in_process(["--impl", impl, "--config", config, "--mode", "train", "--steps", str(args.steps),
                                     "--warmup", str(args.warmup), "--device", args.device, "--autocast", "bfloat16"])
        if record.get("status") == "ok":
            record["step_s"] = statistics.median(record["times"])
        result["steps"][impl] = record
    ours, hf = result["steps"]["ours"], result["steps"]["hf"]
    if ours.get("status") == hf.get("status") == "ok":
        result["ours_faster_than_hf"] = hf["step_s"] / ours["step_s"]
        result["ours_memory_over_hf"] = ours["peak_memory_gb"] / hf["peak_memory_gb"]
    return result


# --- one call for all parts --------------------------------------------------------------------------------------

PART_FUNCTIONS = {"imagenet": part_imagenet, "trainer": part_trainer, "flow": part_flow,
                  "default_run": part_default_run, "imagenet_compile": part_imagenet_compile}


def run_part_in_child(name: str, args: argparse.Namespace, limit_s: float) -> dict[str, Any]:
    """One part in its own process (clean device memory, a hard time limit); its result, or why there is none."""
    out = Path(args.work_dir) / f"part_{name}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.gpu_utilisation", "--part", name, "--output", str(out),
               "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--imagenet-impls", args.imagenet_impls, "--work-dir", args.work_dir, "--part-limit-s", str(limit_s),
               *(["--tiny"] if args.tiny else [])]
    try:
        child = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "limit_s": limit_s}
    if child.returncode != 0 or not out.exists():
        lines = (child.stderr or child.stdout).strip().splitlines() or ["(no output)"]
        return {"status": "error", "error": lines[-1][:600]}
    return {"status": "ok", **json.loads(out.read_text())}


def machine(device: str) -> dict[str, Any]:
    import torch

    info = {"torch": torch.__version__, "device": device, "threads": torch.get_num_threads()}
    with contextlib.suppress(Exception):
        import transformers

        info["transformers"] = transformers.__version__
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, multiprocessors=props.multi_processor_count,
                    gpu_memory_gib=props.total_memory / 2**30)
    return info


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets are stated in, from the parts that ran."""
    figures: dict[str, Any] = {}
    imagenet = report.get("imagenet", {})
    for impl, record in imagenet.get("steps", {}).items():
        if record.get("status") == "ok":
            figures[f"imagenet {impl}: step s / of bf16 peak / peak GiB"] = (
                record["step_s"], record["of_peak"], record["peak_memory_gib"])
    if "ours_faster_than_hf" in imagenet:
        figures["imagenet ours faster than hf"] = imagenet["ours_faster_than_hf"]
    trainer, bare = report.get("trainer", {}), imagenet.get("steps", {}).get("ours", {})
    if trainer.get("step_s") and bare.get("status") == "ok":
        figures["trainer step s"] = trainer["step_s"]
        figures["trainer overhead vs bare step"] = trainer["step_s"] / bare["step_s"] - 1
        figures["trainer of bf16 peak"] = imagenet["train_step_flops"] / trainer["step_s"] / 1e12 / imagenet[
            "matmul_tflops_bf16"]
    flow = report.get("flow", {})
    for key in ("ours_faster_than_hf", "ours_memory_over_hf"):
        if key in flow:
            figures[f"flow {key}"] = flow[key]
    if "bf16_over_fp32_wall" in report.get("default_run", {}):
        figures["default run bf16 / fp32 wall"] = report["default_run"]["bf16_over_fp32_wall"]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="seconds-long shapes (CPU development and the test)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, in order; of {', '.join(PARTS)}")
    parser.add_argument("--imagenet-impls", default=IMAGENET_IMPLS)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per implementation")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=540.0, help="all parts together end within this")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "gpu_utilisation.json"))
    parser.add_argument("--work-dir", default=str(REPO / "runs" / "gpu_utilisation"), help="runs' folders and logs")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    parser.add_argument("--part-limit-s", type=float, default=300.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PART_FUNCTIONS]
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    if args.part:  # a child: one part, its result as JSON
        Path(args.output).write_text(json.dumps(PART_FUNCTIONS[args.part](args), indent=1))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.monotonic()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"command": "python -m benchmarks.gpu_utilisation " + " ".join(argv or sys.argv[1:]),
                              "tiny": args.tiny, "machine": machine(args.device), "parts": {}}
    for name in parts:
        left = args.budget_s - (time.monotonic() - started)
        limit = min(PART_LIMITS_S[name] * (0.5 if args.tiny else 1.0) + (60 if args.tiny else 0), left)
        if limit < 20:
            report["parts"][name] = {"status": "skipped", "reason": f"{left:.0f} s of --budget-s left"}
            continue
        print(f"== {time.strftime('%H:%M:%S')} {name} (up to {limit:.0f} s)", flush=True)
        part_start = time.monotonic()
        result = run_part_in_child(name, args, limit)
        status = result.pop("status")
        report["parts"][name] = {"status": status, "seconds": time.monotonic() - part_start,
                                 **{k: result.pop(k) for k in ("error", "limit_s") if k in result}}
        report[name] = result
        report["summary"] = summary(report)
        output.write_text(json.dumps(report, indent=1))
    print(json.dumps({"parts": report["parts"], "summary": report.get("summary", {})}, indent=1))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
