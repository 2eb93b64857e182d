"""Faster ways to compute the reference model of `perceiver_mt.model`, behind one seam (`seam.py`)."""

from perceiver_mt.speed.seam import SpeedConfig, apply_speedups, swap_modules

__all__ = ["SpeedConfig", "apply_speedups", "swap_modules"]
