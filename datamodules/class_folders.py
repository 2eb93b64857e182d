"""Data laid out as one folder per class, shared by the audio and image folder DataModules.

    root/crow/001.wav  root/crow/002.flac  root/owl/a.ogg  ...

`find_class_files` lists the files of each class folder (recursively, by extension) with their labels;
`split_per_class` divides every class into train/val/test in the same proportions, in a seeded order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection

import numpy as np


def find_class_files(root: Path, classes: list[str], extensions: Collection[str], kind: str,
                     max_classes: int | None = None) -> tuple[list[Path], np.ndarray]:
    """(files, labels) under root/<class>/ for `classes` (empty: every folder, sorted). `kind` names the data in
    the one-line errors ("audio", "image"); `max_classes` is how many classes the task takes, if fixed."""
    if not root.is_dir():
        raise FileNotFoundError(f"{kind} folder {str(root)!r} does not exist (set data.root)")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    classes = classes or folders
    missing = [c for c in classes if c not in folders]
    if missing:
        raise ValueError(f"{kind} folder {str(root)!r} has no folder for class(es) {', '.join(missing)}; "
                         f"it has: {', '.join(folders) or 'none'}")
    if max_classes is not None and len(classes) > max_classes:
        raise ValueError(f"{kind} folder {str(root)!r} has {len(classes)} classes but the task takes {max_classes}: "
                         "set the task's options.class_names or num_classes")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in extensions)
        files += found
        labels += [label] * len(found)
    if not files:
        raise ValueError(f"no {kind} files under {str(root)!r} (looked for {', '.join(sorted(extensions))})")
    return files, np.asarray(labels)


def split_per_class(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Indices of each split: every class divided in the same proportions, each split in a fixed seeded
    order with the classes mixed. Data is often stored class by class; evaluation loaders keep a split's
    order, so a sorted split would make `limit_val_batches` / `limit_test_batches` see one class only."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {split: [] for split in [*fractions, "train"]}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for split, fraction in fractions.items():
            count = int(round(fraction * len(members)))
            parts[split] += members[start:start + count].tolist()
            start += count
        parts["train"] += members[start:].tolist()
    return {split: rng.permutation(np.asarray(ids, dtype=np.int64)) for split, ids in parts.items()}
