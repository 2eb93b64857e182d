"""Optical-flow measures: end-point error as torchmetrics, the two baselines, and colour-wheel pictures.

End-point error (EPE) = |predicted flow - true flow|_2 per pixel, averaged over the pixels with ground
truth. The baselines are zero flow (EPE = the mean motion) and OpenCV's Farneback, a classical dense
method with no training.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from datamodules.flow_scenes import require


class EndPointError(Metric):
    """Mean EPE over every valid pixel of every pair seen (pixels, not pairs, weigh equally).

    update(preds (B, ..., 2), target (B, ..., 2), valid (B, ...) bool); for the zero-flow baseline pass
    zeros as preds (`ZeroFlowEndPointError` does).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        errors = torch.linalg.vector_norm(preds.float() - target.float(), dim=-1)  # (B, ...)
        self.total += errors[valid].sum().double()
        self.count += valid.sum()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


class ZeroFlowEndPointError(EndPointError):
    """EPE of predicting no motion at all: the mean length of the true flow."""

    def update(self, preds: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        super().update(torch.zeros_like(target), target, valid)


def end_point_error(flow: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
    """Mean EPE of one or more flows (..., H, W, 2) against the truth where `valid`."""
    return float(np.linalg.norm(np.asarray(flow, np.float64) - target, axis=-1)[valid].mean())


def farneback_flow(frames: np.ndarray) -> np.ndarray:
    """OpenCV's Farneback dense flow of one pair (2, H, W, 3) uint8 -> (H, W, 2) float32 (dx, dy).

    Parameters are OpenCV's sample (tutorial) values with a 3-level pyramid, which suits the few-pixel
    motions of small working resolutions.
    """
    cv2 = require("cv2", "opencv-python-headless")
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    return cv2.calcOpticalFlowFarneback(grey[0], grey[1], None, pyr_scale=0.5, levels=3, winsize=9,
                                        iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(H, W, 2) flow -> (H, W, 3) uint8 colour-wheel picture: hue = direction, brightness = speed.

    OpenCV's HSV convention (its optical-flow tutorial): hue is the angle of (dx, dy), value the length
    scaled so `max_magnitude` (default: the longest vector) is full brightness.
    """
    cv2 = require("cv2", "opencv-python-headless")
    flow = np.asarray(flow, np.float32)
    magnitude, angle = cv2.cartToPolar(np.ascontiguousarray(flow[..., 0]), np.ascontiguousarray(flow[..., 1]))
    top = max_magnitude if max_magnitude is not None else float(magnitude.max())
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (angle * 90 / np.pi).astype(np.uint8)  # OpenCV hue is 0..180 for 0..2 pi
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(magnitude / max(top, 1e-6) * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
