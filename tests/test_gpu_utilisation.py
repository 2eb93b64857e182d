"""The GPU utilisation benchmark runs end to end on CPU with tiny shapes and writes every figure its GPU run
will report: the same script, the same parts, the same JSON, so a GPU session spends its minutes measuring."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO

PARTS = ("imagenet", "trainer", "flow", "default_run", "imagenet_compile")


@pytest.mark.slow  # five parts, three of them whole `python train.py` runs
def test_every_part_runs_on_cpu_with_tiny_shapes_and_reports_its_figures(tmp_path):
    output = tmp_path / "gpu_utilisation.json"
    command = [sys.executable, "-m", "benchmarks.gpu_utilisation", "--tiny", "--device", "cpu", "--steps", "2",
               "--warmup", "1", "--budget-s", "1200", "--output", str(output), "--work-dir", str(tmp_path / "work")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # one thread: tiny ops, shared cores
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["tiny"] is True and report["machine"]["device"] == "cpu"
    assert {name: part["status"] for name, part in report["parts"].items()} == {name: "ok" for name in PARTS}

    imagenet = report["imagenet"]
    # Ours and Hugging Face's PerceiverForImageClassificationFourier are the same network: same parameters, and
    # the same FLOPs when both multiply in the projected order (HF executes 3x the reference forward per step).
    assert len(set(imagenet["params"].values())) == 1, imagenet["params"]
    assert imagenet["train_step_flops"] == 3 * imagenet["forward_flops"] > 0
    assert imagenet["executed_train_step_flops_per_sample"]["hf"] * imagenet["batch"] == imagenet["train_step_flops"]
    assert imagenet["executed_train_step_flops_per_sample"]["ours"] < imagenet["executed_train_step_flops_per_sample"]["hf"]
    assert imagenet["shape"]["model"]["input_channels"] == 261 and imagenet["shape"]["task"]["project_tokens"] is False
    assert imagenet["matmul_tflops_bf16"] > 0
    for impl in ("ours", "ours+fused", "ours+fused+unpadded", "hf"):
        record = imagenet["steps"][impl]
        assert record["status"] == "ok" and len(record["times"]) == 2, (impl, record)
        assert record["model_tflops"] > 0 and 0 < record["of_peak"] and "peak_memory_gib" in record
    assert imagenet["ours_faster_than_hf"] > 0
    assert report["imagenet_compile"]["steps"]["ours+compile"]["status"] == "ok"

    trainer = report["trainer"]  # python train.py --config configs/imagenet_shape.yaml, its CSV log read back
    assert trainer["returncode"] == 0 and trainer["step_s"] > 0 and trainer["steps_per_sec"]
    assert "imagenet" in trainer["metrics"] and "--config" in trainer["command"]

    flow = report["flow"]
    assert flow["config"] == "tinyC" and set(flow["steps"]) == {"ours", "ours+ckpt", "hf"}
    assert all(r["status"] == "ok" and r["autocast"] == "bfloat16" for r in flow["steps"].values())
    assert flow["ours_faster_than_hf"] > 0 and flow["ours_memory_over_hf"] > 0

    default_run = report["default_run"]
    for precision in ("32", "bf16-mixed"):
        assert default_run[precision]["returncode"] == 0, default_run[precision]
        assert f"trainer.precision={precision}" in default_run[precision]["command"]
    assert default_run["bf16_over_fp32_wall"] > 0

    summary = report["summary"]
    assert {"imagenet ours faster than hf", "trainer overhead vs bare step", "trainer of bf16 peak",
            "flow ours_faster_than_hf", "default run bf16 / fp32 wall"} <= set(summary)


def test_unknown_part_is_one_line():
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_utilisation", "--parts", "imagenet,warp"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown part(s) warp; choose from imagenet, trainer, flow, default_run, imagenet_compile"]
