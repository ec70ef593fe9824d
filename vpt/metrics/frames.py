"""Frame metrics for video prediction: PSNR, SSIM, and the best-of-N-samples protocol.

Inputs are float tensors (N, C, H, W) in [0, 1] (data_range 1); results are one value per frame,
computed in float64 so CPU and GPU runs agree.

SSIM follows Wang et al. 2004 as MCVD (skimage, gaussian_weights=True, use_sample_covariance=False) and
PVG/RIVER (piq.ssim) compute it: an 11x11 Gaussian window with sigma 1.5, population statistics,
K1 = 0.01, K2 = 0.03, the mean over the window positions that lie fully inside the frame, averaged over
channels. `gray_uint8` reproduces MCVD's grayscale variant (PIL `convert("L")`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

PSNR_EPS = 1e-10  # identical frames score 10*log10(1/1e-10) = 100 dB instead of infinity
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage/scipy: radius int(3.5 * 1.5 + 0.5) = 5 -> 11 taps
K1, K2 = 0.01, 0.03


def mse_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) x2 -> (N,) mean squared error in float64."""
    diff = pred.double() - target.double()
    return diff.square().flatten(1).mean(dim=1)


def psnr_from_mse(mse: torch.Tensor | np.ndarray, data_range: float = 1.0):
    return 10.0 * np.log10(data_range**2 / (np.asarray(mse, dtype=np.float64) + PSNR_EPS))


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> np.ndarray:
    """(N, C, H, W) x2 -> (N,) PSNR in dB per frame."""
    return psnr_from_mse(mse_per_frame(pred, target).cpu().numpy(), data_range)


def gaussian_taps(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> torch.Tensor:
    """Normalised 1-D Gaussian, the same taps scipy.ndimage.gaussian_filter uses."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


def _blur_valid(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian over (N, C, H, W), keeping only positions whose window is inside the frame."""
    channels = images.shape[1]
    rows = taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    cols = taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    return F.conv2d(F.conv2d(images, rows, groups=channels), cols, groups=channels)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> np.ndarray:
    """(N, C, H, W) x2 -> (N,) SSIM per frame (channels averaged)."""
    x, y = pred.double(), target.double()
    taps = gaussian_taps().to(x.device)
    if min(x.shape[-2:]) < len(taps):
        from vpt.errors import UsageError

        raise UsageError(
            f"SSIM needs frames of at least {len(taps)}x{len(taps)} pixels, got {x.shape[-2]}x{x.shape[-1]}: "
            "score larger frames (--image-size) or FVD alone (without --paired)"
        )
    mu_x, mu_y = _blur_valid(x, taps), _blur_valid(y, taps)
    var_x = _blur_valid(x * x, taps) - mu_x**2
    var_y = _blur_valid(y * y, taps) - mu_y**2
    cov_xy = _blur_valid(x * y, taps) - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).cpu().numpy()


def gray_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 RGB -> (..., 1, H, W) uint8 luma, bit-exact with PIL `convert("L")`."""
    r, g, b = frames.long().unbind(dim=-3)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(-3)


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 -> float64 in [0, 1]."""
    return frames.double() / 255.0


# --- best of N ----------------------------------------------------------------------------------


HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}


@dataclass
class BestOfN:
    """Per-frame scores of every sample of every sequence, reduced as SVG/SRVP/MCVD/RIVER report them.

    For each sequence, every sample is scored by its mean over predicted frames; the best sample per
    metric is kept independently (max PSNR, max SSIM, min LPIPS); the bests are averaged over sequences.
    `psnr_reduction="video"` scores a sample by the PSNR of its mean MSE instead (MCVD).
    """

    psnr_reduction: Literal["frame", "video"] = "frame"
    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)  # metric -> [(N, T) per sequence]

    def add(self, metric: str, per_frame: np.ndarray) -> None:
        """`per_frame`: (S, N, T) values of S sequences, N samples, T predicted frames (PSNR as MSE)."""
        self.scores.setdefault(metric, []).extend(np.asarray(per_frame, dtype=np.float64))

    def _sample_scores(self, metric: str, values: np.ndarray) -> np.ndarray:
        """(S, N, T) -> (S, N) score per sample."""
        if metric == "psnr":
            return (
                psnr_from_mse(values.mean(axis=-1))
                if self.psnr_reduction == "video"
                else psnr_from_mse(values).mean(axis=-1)
            )
        return values.mean(axis=-1)

    def summary(self) -> dict[str, dict]:
        """metric -> {best (mean over sequences of the best sample), std, ci95 (both None from one sequence),
        per_frame of the best samples}."""
        results = {}
        for metric, rows in self.scores.items():
            values = np.stack(rows)  # (S, N, T)
            per_sample = self._sample_scores(metric, values)  # (S, N)
            pick = per_sample.argmax(axis=1) if HIGHER_IS_BETTER[metric] else per_sample.argmin(axis=1)
            best = per_sample[np.arange(len(values)), pick]  # (S,)
            best_frames = values[np.arange(len(values)), pick]  # (S, T)
            if metric == "psnr":
                best_frames = psnr_from_mse(best_frames)
            std = float(best.std(ddof=1)) if len(best) > 1 else None  # one sequence has no spread to tell
            results[metric] = {
                "value": float(best.mean()),
                "std": std,
                "ci95": 1.96 * std / math.sqrt(len(best)) if std is not None else None,
                "mean_over_samples": float(per_sample.mean()),
                "per_frame": best_frames.mean(axis=0).tolist(),
                "sequences": len(values),
                "samples": values.shape[1],
            }
        return results
