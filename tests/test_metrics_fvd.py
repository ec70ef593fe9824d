"""FVD / KVD maths, presets, preprocessing, and the order-preserving multi-process gathering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from metrics_helpers import moving_videos, write_frame_folders, write_tiny_detector

from vpt.errors import UsageError
from vpt.metrics.fvd import (
    PRESETS,
    FeatureStats,
    batch_plan,
    frechet_distance,
    fvd_from_stats,
    gather_in_order,
    get_preset,
    kernel_distance,
    preprocess,
    resize_frames,
    stats_of,
)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mean_a, mean_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)  # 7.25 + 4 + 1
    for sqrt in ("eigh", "sqrtm"):
        got = frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b), sqrt=sqrt)
        assert got == pytest.approx(expected, abs=1e-10)
    assert expected == pytest.approx(12.25)


def test_fvd_matches_scipy_reference_on_random_features():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    fake = rng.normal(0.3, 1.0, size=(250, 12)) @ rng.normal(size=(12, 12))

    def reference(ddof: int) -> float:  # the StyleGAN-V formula, written out with numpy/scipy
        mu_r, mu_f = real.mean(0), fake.mean(0)
        cov_r, cov_f = np.cov(real, rowvar=False, ddof=ddof), np.cov(fake, rowvar=False, ddof=ddof)
        root = scipy.linalg.sqrtm(cov_f @ cov_r).real
        return float(np.sum((mu_f - mu_r) ** 2) + np.trace(cov_f + cov_r - 2 * root))

    real_stats, fake_stats = stats_of(real, batch_size=7), stats_of(fake, batch_size=64)  # streamed in chunks
    for preset_name, ddof in (("tf", 1), ("stylegan-v", 0), ("videogpt", 1), ("cd-fvd", 0)):
        assert fvd_from_stats(real_stats, fake_stats, PRESETS[preset_name]) == pytest.approx(reference(ddof), rel=1e-9)
    assert reference(0) != pytest.approx(reference(1), rel=1e-4)  # the normaliser really matters at N ~ 300


def test_streaming_statistics_equal_numpy():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(101, 5))
    stats = FeatureStats(dim=5)
    for start in range(0, 101, 10):
        stats.update(features[start : start + 10])
    assert stats.count == 101
    np.testing.assert_allclose(stats.mean(), features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance("unbiased"), np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        stats.covariance("population"), np.cov(features, rowvar=False, ddof=0), rtol=1e-10, atol=1e-12
    )
    with pytest.raises(UsageError, match="at least 2"):
        stats_of(features[:1]).covariance("unbiased")


def test_kvd_matches_direct_quadratic_computation():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(9, 4)), rng.normal(0.5, 1.0, size=(7, 4))
    k = lambda a, b: (float(a @ b) / 4 + 1) ** 3  # noqa: E731
    within_real = sum(k(real[i], real[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    within_fake = sum(k(fake[i], fake[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    across = sum(k(real[i], fake[j]) for i in range(9) for j in range(7)) / (9 * 7)
    expected = within_real + within_fake - 2 * across
    assert kernel_distance(real, fake) == pytest.approx(expected, rel=1e-12)
    # subsets as large as the smaller set, drawn from a set of that size, are that whole set
    assert kernel_distance(real[:7], fake, subsets=3, subset_size=50) == pytest.approx(
        kernel_distance(real[:7], fake), rel=1e-12
    )


def test_kvd_in_blocks_equals_the_whole_kernel_matrix():
    from vpt.metrics.fvd import _mmd2_unbiased

    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(23, 5)), rng.normal(0.3, 1.0, size=(17, 5))
    whole = _mmd2_unbiased(real, fake, block=10_000)
    for block in (1, 4, 7, 16):  # uneven last blocks, blocks on and off the diagonal
        assert _mmd2_unbiased(real, fake, block=block) == pytest.approx(whole, rel=1e-12)
    assert PRESETS["stylegan-v"].kvd_subsets == 100 and PRESETS["tf"].kvd_subsets == 0


def test_presets_carry_each_implementations_settings():
    """The resize to 224, BatchNorm eps and covariance normaliser of each implementation (docs/upstream-differences.md)."""
    settings = {name: (preset.resize, preset.bn_eps, preset.covariance) for name, preset in PRESETS.items()}
    assert settings == {
        "tf": ("tf-bilinear", 1e-3, "unbiased"),  # google-research FVD, tf-gan
        "stylegan-v": ("bilinear", 1e-3, "population"),
        "videogpt": ("short-side-crop", 1e-5, "unbiased"),  # VideoGPT, TATS, PVDM
        "cd-fvd": ("bilinear", 1e-5, "population"),
    }
    assert PRESETS["stylegan-v"].sqrt == "sqrtm"
    assert get_preset("tf", covariance="population").covariance == "population"
    with pytest.raises(UsageError, match="unknown FVD preset"):
        get_preset("fvd2048")


def test_tf_legacy_bilinear_differs_from_half_pixel_bilinear():
    row = torch.tensor([0.0, 10.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    tf_resized = resize_frames(row, "tf-bilinear", size=4)[0, 0, 0]
    torch_resized = resize_frames(row, "bilinear", size=4)[0, 0, 0]
    assert tf_resized.tolist() == [0.0, 5.0, 10.0, 10.0]  # TF1: source x = i * in / out, no half-pixel offset
    assert torch_resized.tolist() == [0.0, 2.5, 7.5, 10.0]


def test_short_side_resize_then_centre_crop_keeps_the_middle():
    frame = np.full((1, 1, 32, 64, 3), 128, dtype=np.uint8)
    frame[..., :16, :] = 0  # the outer quarters are cut away by the centre crop
    frame[..., 48:, :] = 255
    cropped = preprocess(torch.from_numpy(frame), "short-side-crop")  # (1, 3, 1, 224, 224)
    stretched = preprocess(torch.from_numpy(frame), "tf-bilinear")
    assert cropped.shape == (1, 3, 1, 224, 224)
    interior = cropped[..., 8:-8]
    assert interior.sub(128 / 127.5 - 1).abs().max() < 1e-5
    assert float(stretched.min()) == pytest.approx(-1.0) and float(stretched.max()) == pytest.approx(
        1.0
    )  # stretch keeps the quarters


def test_preprocess_maps_uint8_range_to_unit_interval_for_every_preset():
    videos = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1, 1).expand(2, 3, 64, 48, 3).contiguous()
    for preset in PRESETS.values():
        out = preprocess(videos, preset.resize)
        assert out.shape == (2, 3, 3, 224, 224)
        assert torch.allclose(out[0], torch.tensor(-1.0)) and torch.allclose(out[1], torch.tensor(1.0), atol=1e-6)


def test_batch_plan_is_independent_of_world_size_and_gathers_in_order():
    single = batch_plan(11, 3, rank=0, world=1)
    assert single == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    per_rank = [batch_plan(11, 3, rank=r, world=3) for r in range(3)]
    assert sorted(sum(per_rank, [])) == single  # same batches, just distributed
    pieces = [(batch[0], np.array(batch)) for rank in (2, 0, 1) for batch in per_rank[rank]]  # arrival order
    assert np.concatenate(gather_in_order(pieces)).tolist() == list(range(11))


@pytest.mark.slow
def test_two_processes_give_the_same_numbers_as_one(tmp_path):
    """`accelerate launch` with 2 CPU processes vs one process: bit-identical FVD/KVD; the batches the two
    processes cached are all found by a single process afterwards."""
    detector = write_tiny_detector(tmp_path / "tiny_i3d.pt")
    write_frame_folders(tmp_path / "real", moving_videos(5, 10, 16, seed=0))
    write_frame_folders(tmp_path / "fake", moving_videos(5, 10, 16, seed=1)[:, ::-1])
    args = [
        "eval-fvd",
        "--real",
        str(tmp_path / "real"),
        "--fake",
        str(tmp_path / "fake"),
        "--i3d",
        str(detector),
        "--frames",
        "10",
        "--batch-size",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}  # same threads in both
    single = subprocess.run(
        [sys.executable, "-m", "vpt", *args, "--no-cache", "--out", str(tmp_path / "one.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "vpt",
        *args,
        "--out",
        str(tmp_path / "two.json"),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert two["protocol"]["processes"] == 2 and one["protocol"]["processes"] == 1
    assert two["fvd"] == one["fvd"] and two["kvd"] == one["kvd"]
    assert (
        two["protocol"]["counts"]
        == one["protocol"]["counts"]
        == {"real": 5, "fake": 5, "real_skipped_short": 0, "fake_skipped_short": 0}
    )
    cache = two["protocol"]["cache"]  # counts summed over both processes: 3 batches of 2 clips per set
    assert (cache["computed_batches"], cache["real"]["computed_batches"]) == (3, 3)
    again = subprocess.run(
        [sys.executable, "-m", "vpt", *args, "--out", str(tmp_path / "again.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((tmp_path / "again.json").read_text())
    assert (resumed["protocol"]["cache"]["reused_batches"], resumed["protocol"]["cache"]["real"]["reused_batches"]) == (
        3,
        3,
    )
    assert resumed["protocol"]["cache"]["computed_batches"] == 0 and resumed["fvd"] == one["fvd"]
