"""`python -m perceiver_mt.report` on real runs: an offline W&B run and a CSV-logger run."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest

import wandb_reader
from perceiver_mt import report
from tracking_runs import TASKS, fallback_run, offline_run

EXPECTED = ("loss.png", "metrics.png", "tasks.png", "conflict.png", "conflict_over_time.png")


def check_pngs(written: list[Path], out: Path) -> None:
    assert sorted(p.name for p in written) == sorted(EXPECTED)
    for name in EXPECTED:
        pixels = matplotlib.image.imread(out / name)  # a real PNG that decodes
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0.01  # something is drawn, not a blank canvas


@pytest.mark.slow
@pytest.mark.parametrize("which", ["offline_wandb", "csv"])
def test_report_writes_nonempty_pngs(which: str, tmp_path: Path) -> None:
    run_dir = offline_run() if which == "offline_wandb" else fallback_run()[0]
    out = tmp_path / "report"
    check_pngs(report.report(run_dir, out), out)

@pytest.mark.slow

def test_report_plots_the_logged_values() -> None:
    run_dir = offline_run()
    [path] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    series = report.read_series(report.find_logs(run_dir))
    assert report.tasks_of(series) == sorted(TASKS)
    logged = [(row["trainer/global_step"], row["train/digits/loss"]) for row in wandb_reader.history(path)
              if "train/digits/loss" in row]
    assert series["train/digits/loss"] == [(float(s), float(v)) for s, v in logged]
    assert [s for s, _ in series["conflict/digits__pydoc_mlm"]] == [4.0, 8.0]

@pytest.mark.slow

def test_report_finds_a_wandb_run_directory_given_directly(tmp_path: Path) -> None:
    [run_dir] = offline_run().glob("wandb/offline-run-*")
    assert report.main([str(run_dir), "--out", str(tmp_path)]) == 0
    check_pngs([tmp_path / name for name in EXPECTED], tmp_path)


def test_report_without_logs_says_so_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert report.main([str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: no .wandb file or metrics.csv under") and "\n" not in error
    assert report.main([str(tmp_path / "missing")]) == 2
