"""Which task(s) train at each optimizer step.

The choice is a pure function of (seed, step): every rank computes the same answer with no
communication, so under DDP every rank runs the same decoder, and under FSDP no rank waits on a
collective of a decoder the others skipped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

STRATEGIES = ("round_robin", "proportional", "temperature", "uniform", "weights", "all")


@dataclass
class SamplingConfig:
    strategy: str = "round_robin"  # one of STRATEGIES; "all" trains every task in every step
    temperature: float = 2.0  # for "temperature": p ~ size^(1/T); T=1 is proportional, T->inf uniform
    weights: dict[str, float] = field(default_factory=dict)  # for "weights": task -> relative frequency


class TaskSampler:
    def __init__(self, config: SamplingConfig, dataset_sizes: dict[str, int], seed: int = 0):
        if config.strategy not in STRATEGIES:
            raise ValueError(f"sampling.strategy={config.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        if not dataset_sizes:
            raise ValueError("no tasks to sample from: configure at least one entry under `tasks`")
        self.config = config
        self.names = sorted(dataset_sizes)  # sorted so every rank and every run agrees on the order
        self.seed = seed
        self.probabilities = self._probabilities(dataset_sizes)

    def _probabilities(self, sizes: dict[str, int]) -> dict[str, float]:
        strategy = self.config.strategy
        if strategy == "weights":
            unknown = set(self.config.weights) - set(self.names)
            missing = set(self.names) - set(self.config.weights)
            if unknown or missing:
                raise ValueError(
                    f"sampling.weights must name exactly the tasks {self.names}; "
                    f"unknown: {sorted(unknown)}, missing: {sorted(missing)}"
                )
            raw = {n: float(self.config.weights[n]) for n in self.names}
        elif strategy == "proportional":
            raw = {n: float(sizes[n]) for n in self.names}
        elif strategy == "temperature":
            if self.config.temperature <= 0:
                raise ValueError(f"sampling.temperature must be > 0, got {self.config.temperature}")
            raw = {n: float(sizes[n]) ** (1.0 / self.config.temperature) for n in self.names}
        else:  # uniform, round_robin and all visit tasks equally often
            raw = {n: 1.0 for n in self.names}
        total = sum(raw.values())
        if total <= 0 or any(v < 0 for v in raw.values()):
            raise ValueError(f"sampling weights must be >= 0 with a positive sum, got {raw}")
        return {n: v / total for n, v in raw.items()}

    def tasks_for_step(self, step: int) -> list[str]:
        """The task instances that train at optimizer step `step` (several only in "all" mode)."""
        strategy = self.config.strategy
        if strategy == "all":
            return list(self.names)
        if strategy == "round_robin":
            return [self.names[step % len(self.names)]]
        # A fresh generator per (seed, step): the answer never depends on what ran before.
        draw = random.Random(self.seed * 1_000_003 + step).random()
        cumulative = 0.0
        for name in self.names:
            cumulative += self.probabilities[name]
            if draw < cumulative:
                return [name]
        return [self.names[-1]]
