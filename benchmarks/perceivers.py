"""Side-by-side speed and memory of Perceiver IO implementations on identical configurations.

Every measurement runs in its own process (peak RSS is then that implementation's own; a memory
watchdog kills runs that would exhaust the machine). Implementations are interleaved, their order
rotating each round, and a fp32 GEMM is timed between rounds, so ratios and FLOP/s fractions come
from one run under the same machine conditions; absolute times on a shared machine are not evidence.

    python -m benchmarks.perceivers compare --config A            # table + benchmarks/results/A.json
    python -m benchmarks.perceivers compare --config C --impls ours,ours+ckpt,hf --rounds 1
    python -m benchmarks.perceivers sweep                          # 1k..256k inputs, config A's network
    python -m benchmarks.perceivers plot                           # docs/benchmarks_sweep.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.flops import step_flops
from benchmarks.measure import REPO, matmul_dtype, measure_in_child, measure_in_process, resolve_config

RESULTS = REPO / "benchmarks" / "results"
SWEEP_SIZES = [1024 * 2**i for i in range(9)]  # 1k .. 256k
MATMUL_FLOPS_KEY = "matmul_gflops"


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    versions = {}
    for package in ("transformers", "perceiver-io", "perceiver-pytorch"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = "not installed"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(), "load_average": os.getloadavg(), "versions": versions,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        # glibc's malloc tuning, inherited by every measurement process alike: a fixed mmap threshold stops the
        # heap from keeping freed buffers, so peak RSS is what the process held rather than what malloc cached
        "malloc": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }


def device_args(args: argparse.Namespace) -> list[str]:
    return ["--device", args.device, "--autocast", args.autocast, "--sdpa", args.sdpa]


def measurement(child_args: list[str], args: argparse.Namespace, timeout_s: float | None = None) -> dict:
    """CPU: a child process per measurement (its own peak RSS, killed above the memory limit). CUDA: in
    this process, since memory is then torch's own peak counter and out-of-memory is an exception."""
    if args.device.startswith("cuda"):
        return measure_in_process(child_args)
    return measure_in_child(child_args, args.memory_limit_gb, timeout_s or args.timeout_s)


def matmul_measurement(args: argparse.Namespace) -> float:
    return matmul_gflops(measurement(["--matmul", *device_args(args)], args, 300))


def rotated(items: list[str], shift: int) -> list[str]:
    shift %= len(items)
    return items[shift:] + items[:shift]


def matmul_gflops(record: dict) -> float:
    return record["flops"] / statistics.median(record["times"]) / 1e9


def summarize(config_name: str, records: dict[tuple[str, str], list[dict]], matmul: list[float]) -> list[dict]:
    config = resolve_config(config_name)
    machine_gflops = statistics.median(matmul) if matmul else float("nan")
    rows = []
    for (impl, mode), runs in records.items():
        ok = [r for r in runs if r.get("status") == "ok"]
        row = {"impl": impl, "mode": mode, "status": "ok" if ok else runs[-1].get("status", "?")}
        if ok:
            times = [t for r in ok for t in r["times"]]
            median = statistics.median(times)
            achieved = step_flops(config, mode) / median / 1e9
            row.update(
                params=ok[0]["params"], median_s=median, samples_per_s=config.batch / median, n_times=len(times),
                peak_memory_gb=max(r["peak_memory_gb"] for r in ok),
                base_rss_gb=min(r["base_rss_gb"] for r in ok),
                achieved_gflops=achieved, flops_fraction=achieved / machine_gflops,
            )
        else:
            row["detail"] = runs[-1]
        rows.append(row)
    for mode in {row["mode"] for row in rows}:
        ours = next((r for r in rows if r["impl"] == "ours" and r["mode"] == mode and r["status"] == "ok"), None)
        for row in rows:
            if ours and row["mode"] == mode and row["status"] == "ok":
                row["ours_speedup"] = row["median_s"] / ours["median_s"]  # >1: ours is faster
                row["memory_vs_ours"] = row["peak_memory_gb"] / ours["peak_memory_gb"]
    return rows


def compare(args: argparse.Namespace) -> dict:
    impls = args.impls.split(",")
    modes = args.modes.split(",")
    records: dict[tuple[str, str], list[dict]] = defaultdict(list)
    matmul: list[float] = []
    info = machine()
    for round_ in range(args.rounds):
        matmul.append(matmul_measurement(args))
        print(f"round {round_ + 1}/{args.rounds}: {matmul_dtype(args.autocast)} matmul {matmul[-1]:.1f} GFLOP/s", flush=True)
        for mode in modes:
            for impl in rotated(impls, round_):
                previous = records[(impl, mode)]
                if previous and previous[-1].get("status") in ("oom", "timeout"):
                    continue  # it will not fit / finish this time either
                result = measurement(
                    ["--impl", impl, "--config", args.config, "--mode", mode, "--steps", str(args.steps),
                     "--warmup", str(args.warmup), *device_args(args)],
                    args,
                )
                previous.append(result)
                shown = [round(t, 3) for t in result.get("times", [])]
                peak = result.get("peak_memory_gb", result.get("peak_rss_gb", float("nan")))
                print(f"  {mode:7s} {impl:12s} {result['status']:7s} times {shown} peak {peak:.2f} GB", flush=True)
    matmul.append(matmul_measurement(args))
    info["load_average_end"] = os.getloadavg()
    report = {
        "config": args.config, "machine": info, "matmul_gflops": matmul, "matmul_dtype": matmul_dtype(args.autocast),
        "device": args.device, "autocast": args.autocast, "sdpa": args.sdpa, "command": args.command_line,
        "rows": summarize(args.config, records, matmul), "raw": {f"{i}/{m}": r for (i, m), r in records.items()},
    }
    print(markdown_table(report))
    return report


def sweep(args: argparse.Namespace) -> dict:
    impls = args.impls.split(",")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else SWEEP_SIZES
    records: dict[tuple[str, str], list[dict]] = defaultdict(list)
    matmul: list[float] = []
    rows = []
    info = machine()
    gave_up: set[str] = set()
    for index, size in enumerate(sizes):
        matmul.append(matmul_measurement(args))
        for impl in rotated(impls, index):
            if impl in gave_up:
                rows.append({"impl": impl, "inputs": size, "status": "skipped (failed at a smaller size)"})
                continue
            result = measurement(
                ["--impl", impl, "--config", f"sweep:{size}", "--mode", args.mode, "--steps", str(args.steps),
                 "--warmup", str(args.warmup), *device_args(args)],
                args,
            )
            records[(impl, str(size))].append(result)
            row = {"impl": impl, "inputs": size, "status": result["status"],
                   "peak_memory_gb": result.get("peak_memory_gb", result.get("peak_rss_gb"))}
            if result["status"] == "ok":
                row["median_s"] = statistics.median(result["times"])
                row["base_rss_gb"] = result["base_rss_gb"]
            else:
                gave_up.add(impl)
            rows.append(row)
            print(f"  {size:7d} {impl:12s} {result['status']:7s} {row.get('median_s', float('nan')):8.3f} s "
                  f"peak {row.get('peak_memory_gb') or float('nan'):.2f} GB", flush=True)
    info["load_average_end"] = os.getloadavg()
    report = {"config": "sweep", "mode": args.mode, "machine": info, "matmul_gflops": matmul,
              "device": args.device, "autocast": args.autocast,
              "command": args.command_line, "rows": rows}
    print(sweep_table(report))
    return report


def markdown_table(report: dict) -> str:
    lines = [
        "| mode | implementation | parameters | median step (s) | samples/s | ours faster by | peak memory (GB) "
        "| memory vs ours | achieved GFLOP/s | of matmul peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(report["rows"], key=lambda r: (r["mode"], r["impl"])):
        if row["status"] != "ok":
            lines.append(f"| {row['mode']} | {row['impl']} | | {row['status']} | | | | | | |")
            continue
        lines.append(
            f"| {row['mode']} | {row['impl']} | {row['params'] / 1e6:.2f}M | {row['median_s']:.3f} "
            f"| {row['samples_per_s']:.2f} | {row.get('ours_speedup', float('nan')):.2f}x | {row['peak_memory_gb']:.2f} "
            f"| {row.get('memory_vs_ours', float('nan')):.2f} | {row['achieved_gflops']:.1f} "
            f"| {100 * row['flops_fraction']:.0f}% |"
        )
    gflops = report["matmul_gflops"]
    lines.append(f"\n{report.get('matmul_dtype', 'float32')} matmul ({gflops and len(gflops)} measurements between rounds): "
                 f"median {statistics.median(gflops):.1f} GFLOP/s, range {min(gflops):.1f}-{max(gflops):.1f}")
    return "\n".join(lines)


def sweep_table(report: dict) -> str:
    impls = sorted({r["impl"] for r in report["rows"]})
    sizes = sorted({r["inputs"] for r in report["rows"]})
    by = {(r["impl"], r["inputs"]): r for r in report["rows"]}

    def cell(row: dict | None) -> str:
        if row is None:
            return ""
        if row["status"] != "ok":
            return row["status"].split(" ")[0]
        return f"{row['median_s']:.3f} s / {row['peak_memory_gb']:.2f} GB"

    lines = ["| inputs | " + " | ".join(impls) + " |", "|---:|" + "---:|" * len(impls)]
    for size in sizes:
        lines.append(f"| {size:,} | " + " | ".join(cell(by.get((i, size))) for i in impls) + " |")
    return "\n".join(lines)


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads((RESULTS / "sweep.json").read_text())
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for impl in sorted({r["impl"] for r in report["rows"]}):
        ok = sorted((r for r in report["rows"] if r["impl"] == impl and r["status"] == "ok"), key=lambda r: r["inputs"])
        sizes = [r["inputs"] for r in ok]
        ax_time.plot(sizes, [r["median_s"] for r in ok], marker="o", label=impl)
        ax_mem.plot(sizes, [r["peak_memory_gb"] for r in ok], marker="o", label=impl)
    ours = sorted((r for r in report["rows"] if r["impl"] == "ours" and r["status"] == "ok"), key=lambda r: r["inputs"])
    if ours:  # what exactly linear growth would look like, through our largest measurement
        top = ours[-1]
        sizes = [r["inputs"] for r in ours]
        ax_time.plot(sizes, [top["median_s"] * n / top["inputs"] for n in sizes], "k:", label="proportional to inputs")
    for ax, ylabel in ((ax_time, "training step (s, median)"), (ax_mem, "peak memory (GB; RSS on CPU)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("input points (batch 1, config A network)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Perceiver IO scaling sweep, fp32, {report['machine']['cpu']} ({report['machine']['cores']} cores)")
    fig.tight_layout()
    out = REPO / "docs" / "benchmarks_sweep.png"
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("compare", "sweep"):
        p = sub.add_parser(name)
        p.add_argument("--impls", default="ours,hf,krasserm,lucidrains")
        p.add_argument("--steps", type=int, default=2, help="timed steps per measurement process")
        p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
        p.add_argument("--memory-limit-gb", type=float, default=18.0, help="kill a measurement above this RSS")
        p.add_argument("--timeout-s", type=float, default=900.0, help="kill a measurement after this long")
        p.add_argument("--output", help="JSON file (default benchmarks/results/<config>.json)")
        p.add_argument("--device", default="cpu", help="cpu or cuda: on CUDA memory is torch's peak allocation")
        p.add_argument("--autocast", choices=("none", "bfloat16", "float16"), default="none")
        p.add_argument("--sdpa", default="default", help="force an SDPA backend: flash_attention, efficient_attention, "
                       "cudnn_attention or math (implementations without SDPA ignore it)")
    sub.choices["compare"].add_argument("--config", default="A", help="A, B, C, tinyA, tinyC or sweep:<inputs>")
    sub.choices["compare"].add_argument("--modes", default="train,forward")
    sub.choices["compare"].add_argument("--rounds", type=int, default=3)
    sub.choices["sweep"].add_argument("--sizes", help="comma-separated input counts (default 1k..256k)")
    sub.choices["sweep"].add_argument("--mode", choices=("train", "forward"), default="train")
    sub.add_parser("plot")
    args = parser.parse_args()
    args.command_line = "python -m benchmarks.perceivers " + " ".join(os.sys.argv[1:])
    if args.command == "plot":
        plot(args)
        return
    report = compare(args) if args.command == "compare" else sweep(args)
    output = Path(args.output) if args.output else RESULTS / f"{report['config']}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
