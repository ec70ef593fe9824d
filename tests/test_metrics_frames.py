"""PSNR / SSIM against closed forms and a scipy reference; PIL-exact grayscale; the best-of-N reduction."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from vpt.errors import UsageError
from vpt.metrics.frames import BestOfN, gray_uint8, psnr, ssim


def _reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. 2004 the way skimage computes it (gaussian_weights=True, sigma 1.5, population
    statistics), written with scipy.ndimage: filter with reflect padding, then drop the 5-pixel border."""
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for channel in range(a.shape[0]):
        x, y = a[channel].astype(np.float64), b[channel].astype(np.float64)
        blur = lambda image: scipy.ndimage.gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")  # noqa: E731
        mu_x, mu_y = blur(x), blur(y)
        var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        values.append(ssim_map[5:-5, 5:-5].mean())
    return float(np.mean(values))


def test_psnr_closed_form():
    target = torch.rand(3, 3, 16, 16, dtype=torch.float64) * 0.5
    assert psnr(target + 0.1, target) == pytest.approx([20.0] * 3, abs=1e-6)  # MSE 0.01 -> 20 dB
    assert psnr(target, target) == pytest.approx([100.0] * 3)  # capped by the 1e-10 epsilon
    assert psnr(target * 255 + 255 * 0.1, target * 255, data_range=255.0) == pytest.approx([20.0] * 3, abs=1e-6)


def test_ssim_closed_form_for_constant_frames():
    a, b = 0.2, 0.7
    c1 = 0.01**2
    frames_a, frames_b = torch.full((2, 3, 20, 20), a), torch.full((2, 3, 20, 20), b)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # zero variances: the structure term is c2 / c2
    assert ssim(frames_a, frames_b) == pytest.approx([expected] * 2, rel=1e-6)
    noisy = torch.rand(2, 3, 20, 20)
    assert ssim(noisy, noisy) == pytest.approx([1.0, 1.0], abs=1e-12)


def test_ssim_matches_scipy_gaussian_reference():
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 3, 32, 40, generator=generator)
    pred = (truth + 0.15 * torch.randn(4, 3, 32, 40, generator=generator)).clamp(0, 1)
    got = ssim(pred, truth)
    expected = [_reference_ssim(p.numpy(), t.numpy()) for p, t in zip(pred, truth)]
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    assert 0.1 < got.min() < got.max() < 0.99
    with pytest.raises(UsageError, match="11x11 pixels, got 10x10"):
        ssim(pred[..., :10, :10], truth[..., :10, :10])


def test_gray_conversion_is_bit_exact_with_pil():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 17, 19, 3), dtype=np.uint8)
    expected = np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in frames])
    got = gray_uint8(torch.from_numpy(frames).permute(0, 3, 1, 2))  # (N, 1, H, W)
    np.testing.assert_array_equal(got[:, 0].numpy(), expected)


def test_best_of_n_keeps_the_best_sample_per_metric():
    mse = np.array(
        [
            [[0.01, 0.01], [0.0001, 0.1]],  # sequence 0: 20 dB vs (40 + 10) / 2 = 25 dB per frame
            [[0.1, 0.1], [0.01, 0.01]],
        ]
    )  # sequence 1: 10 dB vs 20 dB
    lpips = np.array([[[0.3, 0.3], [0.1, 0.9]], [[0.2, 0.4], [0.5, 0.5]]])
    best = BestOfN("frame")
    best.add("psnr", mse)
    best.add("lpips", lpips)
    summary = best.summary()
    assert summary["psnr"]["value"] == pytest.approx((25.0 + 20.0) / 2, abs=1e-4)
    assert summary["psnr"]["per_frame"] == pytest.approx([(40.0 + 20.0) / 2, (10.0 + 20.0) / 2], abs=1e-4)
    assert summary["psnr"]["mean_over_samples"] == pytest.approx((20 + 25 + 10 + 20) / 4, abs=1e-4)
    assert summary["lpips"]["value"] == pytest.approx((0.3 + 0.3) / 2)  # the lower mean per sequence
    assert summary["lpips"]["samples"] == 2 and summary["lpips"]["sequences"] == 2
    video = BestOfN("video")
    video.add("psnr", mse)  # MCVD: PSNR of the mean MSE -> sequence 0 now prefers sample 0 (20 dB > 13 dB)
    assert video.summary()["psnr"]["value"] == pytest.approx((20.0 + 20.0) / 2, abs=1e-4)
