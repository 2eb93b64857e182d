"""Start a run from another run's weights: the shared encoder, and every task part whose name and shape match.

    init_from: runs/mlm/checkpoints/last.ckpt       # config key (RunConfig.init_from)
    init_map: {lang_id: pydoc_mlm}                  # optional: task `lang_id` takes `pydoc_mlm`'s parts

Parameters are matched by name in the network (`encoder.*`, `tasks.<task>.<part>.*`); a task renamed in
`init_map` looks up the other task's names. What matches in name and shape is loaded; the rest keeps its
fresh initialisation. One line says what was loaded, what is new and what was dropped, so nothing is
half-loaded silently. Resuming a run (`ckpt_path`) restores everything instead and ignores this.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from perceiver_mt.pretrained import is_pretrained_folder, load_pretrained_state

CHECKPOINT_PREFIX = "model."  # MultiTaskSystem keeps the network under `model`


class InitFromError(ValueError):
    """init_from names something that cannot be read as weights; one line."""


@dataclass
class InitReport:
    source: str
    loaded: list[str] = field(default_factory=list)  # target parameter names filled from the source
    new: list[str] = field(default_factory=list)  # target names left fresh (absent from the source, or another shape)
    dropped: list[str] = field(default_factory=list)  # source names nothing took
    renamed: dict[str, str] = field(default_factory=dict)  # target task -> source task it read from

    def line(self) -> str:
        parts = [f"init_from {self.source}: loaded {len(self.loaded)} tensors ({_groups(self.loaded)})"]
        if self.renamed:
            parts[0] += "; " + ", ".join(f"{t} from {s}" for t, s in self.renamed.items())
        parts.append(f"new {len(self.new)} ({_groups(self.new)})")
        parts.append(f"dropped {len(self.dropped)} ({_groups(self.dropped)})")
        return ", ".join(parts)


def _groups(names: list[str]) -> str:
    """Names summarised by part: 'encoder' or 'tasks.<task>.<part>', with counts."""
    counts = Counter(".".join(n.split(".")[:3]) if n.startswith("tasks.") else n.split(".")[0] for n in names)
    return ", ".join(f"{group} {count}" for group, count in sorted(counts.items())) or "none"


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """The network's tensors in a checkpoint file (a Lightning checkpoint of this project, or a plain state dict)
    or in a pretrained folder (`perceiver_mt.pretrained`: converted Hugging Face models, `save_pretrained`)."""
    path = Path(source)
    if path.is_dir():
        if is_pretrained_folder(path):
            return load_pretrained_state(path)
        raise InitFromError(f"init_from {str(path)!r} is a folder but not a pretrained one (model.safetensors + "
                            "config.yaml); give one of those or a single-file checkpoint (a sharded FSDP checkpoint: "
                            "save with parallel.checkpoint=full)")
    if not path.is_file():
        raise InitFromError(f"init_from {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a file that is not a checkpoint: one line, not torch's traceback
        raise InitFromError(f"init_from {str(path)!r} is not a readable checkpoint: {error}") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InitFromError(f"init_from {str(path)!r} holds no state dict of tensors")
    if any(k.startswith(CHECKPOINT_PREFIX) for k in state):
        state = {k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}
    return dict(state)


def initialise_from(model: nn.Module, source: str | Path, task_map: Mapping[str, str] | None = None) -> InitReport:
    """Copy into `model` (a MultiTaskPerceiver) every tensor of `source` whose name (after `task_map`) and
    shape match; returns what was loaded, new and dropped."""
    state = read_state_dict(source)
    task_map = dict(task_map or {})
    target = model.state_dict()
    report = InitReport(str(source), renamed={t: s for t, s in task_map.items()})
    taken = set()
    with torch.no_grad():
        for name, tensor in target.items():
            source_name = _source_name(name, task_map)
            found = state.get(source_name)
            if found is None or found.shape != tensor.shape:
                report.new.append(name)
                continue
            tensor.copy_(found.to(tensor.dtype))
            report.loaded.append(name)
            taken.add(source_name)
    report.dropped = sorted(set(state) - taken)
    return report


def _source_name(name: str, task_map: Mapping[str, str]) -> str:
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "tasks" and parts[1] in task_map:
        return ".".join(["tasks", task_map[parts[1]], *parts[2:]])
    return name
