"""One measurement in its own process: step times and peak RSS of one implementation, mode and config.

Run by `benchmarks.perceivers` through `measure_in_child`, which watches the child's RSS and kills it
above a limit, so a run that would exhaust the machine's memory is recorded as "oom" instead of
taking the machine down. A fresh process per measurement makes the peak RSS that implementation's own.

    python -m benchmarks.measure --impl hf --config A --mode train --steps 2 --warmup 1
    python -m benchmarks.measure --matmul
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MATMUL_SIZE = 2048  # large enough that CPU BLAS runs at its peak, small enough to repeat between measurements
CUDA_MATMUL_SIZE = 8192  # a GPU needs a far larger product to fill its multiprocessors


def rss_gb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def resolve_config(name: str):
    from benchmarks.configs import get_config, sweep_config

    if name.startswith("sweep:"):
        return sweep_config(int(name.split(":", 1)[1]))
    return get_config(name)


def measure(
    impl: str, config_name: str, mode: str, steps: int, warmup: int,
    device: str = "cpu", autocast: str = "none", sdpa: str = "default",
) -> dict:
    """Times `steps` steps after `warmup`; memory is peak RSS on CPU, peak allocated memory on CUDA.

    Every implementation gets the same optimizer: AdamW with `fused=True` (one kernel for all
    parameters; the default multi-pass version alone costs a quarter of a config-A step on this CPU).
    """
    import contextlib

    import torch

    from benchmarks.implementations import build, loss_fn, make_inputs

    config = resolve_config(config_name)
    bench = build(impl, config)
    bench.model.to(device)
    x, target = (t.to(device) for t in make_inputs(config))
    optimizer = torch.optim.AdamW(bench.model.parameters(), lr=1e-4, fused=True) if mode == "train" else None
    cuda = device.startswith("cuda")
    base_rss = rss_gb()
    base_cuda = torch.cuda.memory_allocated() / 2**30 if cuda else None

    def context() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if autocast != "none":
            stack.enter_context(torch.autocast(device.split(":")[0], dtype=getattr(torch, autocast)))
        if sdpa != "default":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(getattr(SDPBackend, sdpa.upper())))
        return stack

    def step() -> None:
        with context():
            if optimizer is None:
                with torch.no_grad():
                    bench.run(x)
                return
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(config, bench.run(x).float(), target)
        loss.backward()
        optimizer.step()

    times = []
    for i in range(warmup + steps):
        if cuda and i == warmup:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    result = {
        "status": "ok", "times": times, "params": bench.parameters(), "base_rss_gb": base_rss,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(), "device": device, "autocast": autocast, "sdpa": sdpa,
    }
    result["peak_memory_gb"] = result["peak_rss_gb"]
    if cuda:
        result.update(device_name=torch.cuda.get_device_name(), base_cuda_gb=base_cuda,
                      peak_memory_gb=torch.cuda.max_memory_allocated() / 2**30)
    return result


def matmul_flops(size: int | None = None, repeats: int = 5, device: str = "cpu", dtype: str = "float32") -> dict:
    """GEMM FLOP/s of this machine right now (median of `repeats`, after one warm-up), fp32 unless `dtype`."""
    import torch

    size = size or (CUDA_MATMUL_SIZE if device.startswith("cuda") else MATMUL_SIZE)
    a, b = (torch.randn(size, size, device=device, dtype=getattr(torch, dtype)) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return {"status": "ok", "times": times, "flops": 2 * size**3, "dtype": dtype}


def measure_in_process(args: list[str]) -> dict:
    """The same measurement as `measure_in_child`, in this process: for CUDA, where peak memory is torch's
    own counter (reset per measurement) rather than the process's RSS, and a fresh process per
    measurement would spend more time starting CUDA than measuring."""
    import gc

    import torch

    try:
        return run(build_parser().parse_args(args))
    except torch.cuda.OutOfMemoryError:
        return {"status": "oom"}
    except Exception as error:  # recorded in the report like a failed child process
        return {"status": "error", "error": f"{type(error).__name__}: {error}".splitlines()[0]}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def measure_in_child(args: list[str], memory_limit_gb: float, timeout_s: float) -> dict:
    """Runs `python -m benchmarks.measure *args`; kills it above `memory_limit_gb` RSS or after `timeout_s`."""
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.measure", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    verdict: dict = {}

    def watch() -> None:
        start = time.monotonic()
        while child.poll() is None:
            try:
                rss = rss_gb(child.pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            if rss > memory_limit_gb:
                verdict.update(status="oom", peak_rss_gb=rss)
                child.kill()
                return
            if time.monotonic() - start > timeout_s:
                verdict.update(status="timeout", peak_rss_gb=rss)
                child.kill()
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = child.communicate()
    watcher.join()
    if verdict:
        return verdict
    if child.returncode != 0:
        last = (stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"status": "error", "error": last}
    return json.loads(stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl")
    parser.add_argument("--config", help="A, B, C, tinyA, tinyC or sweep:<inputs>")
    parser.add_argument("--mode", choices=("train", "forward"), default="train")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--autocast", choices=("none", "bfloat16", "float16"), default="none")
    parser.add_argument("--sdpa", choices=("default", "flash_attention", "efficient_attention", "math", "cudnn_attention"),
                        default="default", help="force one scaled_dot_product_attention backend")
    parser.add_argument("--matmul", action="store_true", help="measure GEMM FLOP/s instead (in --autocast's dtype)")
    return parser


def matmul_dtype(autocast: str) -> str:
    """Achieved FLOP/s are compared with a matmul in the precision the models ran in."""
    return "float32" if autocast == "none" else autocast


def run(args: argparse.Namespace) -> dict:
    if args.matmul:
        return matmul_flops(device=args.device, dtype=matmul_dtype(args.autocast))
    if not (args.impl and args.config):
        raise ValueError("--impl and --config are required unless --matmul")
    return measure(args.impl, args.config, args.mode, args.steps, args.warmup, args.device, args.autocast, args.sdpa)


def main() -> None:
    print(json.dumps(run(build_parser().parse_args())))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
