"""`vpt eval-fvd` end to end: videos mode and run mode (a tiny copy-last backend registered here), the
numbers against direct computations, and the protocol recorded in metrics.json."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from metrics_helpers import moving_videos, write_backbone, write_frame_folders, write_heads, write_tiny_detector
from torch import nn
from typer.testing import CliRunner

from vpt.cli import app
from vpt.errors import UsageError
from vpt.metrics.evaluate import few_clips_warning
from vpt.metrics.frames import psnr, ssim
from vpt.models.backend import Backend
from vpt.models.lpips import load_lpips
from vpt.models.registry import BACKENDS


@dataclass
class CopyLastConfig:
    noise: float = 0.0  # > 0 makes the predictor stochastic (noise drawn from the given generator)
    context_frames: int = 1


class CopyLastBackend(Backend):
    """Predicts the last context frame for every future frame, times a gain stored in the checkpoint."""

    name = "copy-last-test"
    Config = CopyLastConfig

    def __init__(self, cfg: CopyLastConfig):
        super().__init__()
        self.cfg = cfg
        self.gain = nn.Parameter(torch.tensor(0.5))  # the checkpoint holds 1.0: wrong loading shows in PSNR

    def loss(self, batch):
        return {"loss": self.gain * 0}

    def predict(self, context, num_frames, *, prompt=None, steps=None, generator=None):
        frames = (context[:, -1:] * self.gain).expand(-1, num_frames, -1, -1, -1)  # (B, T, C, H, W)
        if self.cfg.noise:
            frames = frames + self.cfg.noise * torch.randn(frames.shape, generator=generator)
        return frames.clamp(-1, 1)


def _invoke(args: list[str]):
    return CliRunner().invoke(app, ["eval-fvd", *args])


@pytest.fixture()
def detector(tmp_path):
    return write_tiny_detector(tmp_path / "i3d_torchscript.pt")


@pytest.fixture()
def alex(tmp_path):
    write_backbone(tmp_path / "alexnet.pth", "alex")
    write_heads(tmp_path / "alex_heads.pth", "alex")
    return tmp_path / "alexnet.pth", tmp_path / "alex_heads.pth"


def test_videos_mode_scores_pairs_and_records_the_protocol(tmp_path, detector, alex, monkeypatch):
    real = (moving_videos(4, 10, 32, seed=0).astype(np.int64) * 200 // 255).astype(np.uint8)  # values 0..200
    fake = real + 10  # every pixel off by 10/255: PSNR = 20 log10(25.5) per frame
    write_frame_folders(tmp_path / "real", real)
    write_frame_folders(tmp_path / "fake", fake)
    backbone, heads = alex
    monkeypatch.setattr("vpt.models.lpips.lpips_heads_path", lambda net: heads)
    out = tmp_path / "metrics.json"
    result = _invoke(
        [
            "--real",
            str(tmp_path / "real"),
            "--fake",
            str(tmp_path / "fake"),
            "--i3d",
            str(detector),
            "--frames",
            "10",
            "--paired",
            "--lpips-net",
            "alex",
            "--lpips-weights",
            str(backbone),
            "--batch-size",
            "3",
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report) == {
        "fvd",
        "kvd",
        "psnr",
        "ssim",
        "lpips",
        "repeats",
        "warnings",
        "details",
        "timing",
        "protocol",
    }
    assert report["repeats"] == 1
    assert report["warnings"] == [few_clips_warning(4, 4, 400)]  # 4 clips a set: said in metrics.json and on screen
    assert "FVD/KVD rest on 4 real and 4 generated clips" in " ".join(result.output.split())
    assert report["psnr"] == pytest.approx(20 * np.log10(25.5), abs=1e-6)
    truth, pred = (torch.from_numpy(v).permute(0, 1, 4, 2, 3).flatten(0, 1) for v in (real, fake))  # (N*T, 3, H, W)
    assert report["ssim"] == pytest.approx(float(np.mean(ssim(pred / 255.0, truth / 255.0))), rel=1e-9)
    lpips = load_lpips("alex", backbone_path=backbone, heads_path=heads)
    with torch.no_grad():
        expected_lpips = lpips(pred.float() / 127.5 - 1, truth.float() / 127.5 - 1).double().mean().item()
    assert report["lpips"] == pytest.approx(expected_lpips, rel=1e-5)
    assert report["fvd"] > 0 and np.isfinite(report["kvd"])
    protocol = report["protocol"]
    assert protocol["preset"] == "tf" and protocol["resolution"] == 224 and protocol["covariance"] == "unbiased"
    assert protocol["detector"]["sha256"] == hashlib.sha256(detector.read_bytes()).hexdigest()
    assert protocol["detector"]["format"] == "torchscript"
    assert protocol["clip_length"] == 10 and protocol["frame_stride"] == 1
    assert protocol["counts"] == {"real": 4, "fake": 4, "real_skipped_short": 0, "fake_skipped_short": 0}
    assert protocol["seeds"] == {"clip_offset": 0, "sampling": 0, "kvd_subsets": 0}
    assert protocol["kvd"]["variant"] == "full" and protocol["frame_metrics"]["lpips"]["net"] == "alex"


def test_identical_sets_have_zero_fvd_and_short_videos_are_counted(tmp_path, detector):
    videos = moving_videos(5, 12, 16, seed=3)
    write_frame_folders(tmp_path / "a", videos)
    write_frame_folders(tmp_path / "b", videos[:, :9])  # 9 frames: too short for 10-frame clips
    out = tmp_path / "m.json"
    same = _invoke(
        [
            "--real",
            str(tmp_path / "a"),
            "--fake",
            str(tmp_path / "a"),
            "--i3d",
            str(detector),
            "--frames",
            "10",
            "--clip-offset",
            "random",
            "--seed",
            "4",
            "--out",
            str(out),
        ]
    )
    assert same.exit_code == 0, same.output
    report = json.loads(out.read_text())
    assert abs(report["fvd"]) < 1e-4
    assert report["protocol"]["clip_offset"] == "random" and report["protocol"]["seeds"]["clip_offset"] == 4
    short = _invoke(
        [
            "--real",
            str(tmp_path / "a"),
            "--fake",
            str(tmp_path / "b"),
            "--i3d",
            str(detector),
            "--frames",
            "10",
            "--out",
            str(out),
        ]
    )
    assert isinstance(short.exception, UsageError) and "(5 too short)" in str(short.exception)


def test_fewer_than_nine_frames_are_refused(tmp_path, detector):
    write_frame_folders(tmp_path / "v", moving_videos(3, 8, 16, seed=0))
    result = _invoke(
        [
            "--real",
            str(tmp_path / "v"),
            "--fake",
            str(tmp_path / "v"),
            "--i3d",
            str(detector),
            "--frames",
            "8",
            "--out",
            str(tmp_path / "m.json"),
        ]
    )
    assert isinstance(result.exception, UsageError) and "at least 9 frames" in str(result.exception)
    assert not (tmp_path / "m.json").exists()
    usage = _invoke(["--real", str(tmp_path / "v")])
    assert isinstance(usage.exception, UsageError) and "--real and --fake go together" in str(usage.exception)


def _write_run(root, noise: float, data: dict | None = None, protocol: dict | None = None):
    from safetensors.torch import save_file

    from vpt.runs import Run

    run = Run.open(root)
    run.write_config(
        {
            "backend": CopyLastBackend.name,
            "model": {"noise": noise},
            "data": data or {"image_size": None},
            **({"eval": protocol} if protocol else {}),
        }
    )
    pending = run.pending_dir(1)
    pending.mkdir(parents=True)
    save_file({"gain": torch.tensor(1.0)}, pending / "model.safetensors")
    run.commit_checkpoint(1, keep_last=1)
    return root


def _write_h5(root, videos: np.ndarray):
    from vpt.data.h5 import ShardWriter, shard_name

    with ShardWriter(root / "test" / shard_name(1)) as shard:
        for video in videos:
            shard.add(video)
    return root


def test_run_mode_predicts_and_scores_against_the_truth(tmp_path, detector, monkeypatch):
    monkeypatch.setitem(BACKENDS, CopyLastBackend.name, f"{__name__}:CopyLastBackend")
    monkeypatch.delenv("VPT_LPIPS_ALEX", raising=False)
    monkeypatch.setenv(
        "TORCH_HOME", str(tmp_path / "no_torch_cache")
    )  # no AlexNet weights: LPIPS (alex by default) is skipped
    videos = moving_videos(5, 10, 16, seed=1)
    data = _write_h5(tmp_path / "data", videos)
    run = _write_run(tmp_path / "run", noise=0.0)
    out = tmp_path / "m.json"
    result = _invoke(
        [
            "--run",
            str(run),
            "--data",
            str(data),
            "--split",
            "test",
            "--i3d",
            str(detector),
            "--context-frames",
            "2",
            "--pred-frames",
            "8",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    last = (
        torch.from_numpy(videos[:, 1:2]).permute(0, 1, 4, 2, 3).expand(-1, 8, -1, -1, -1).flatten(0, 1).double() / 255
    )
    future = torch.from_numpy(videos[:, 2:]).permute(0, 1, 4, 2, 3).flatten(0, 1).double() / 255
    assert report["psnr"] == pytest.approx(float(np.mean(psnr(last, future))), abs=1e-9)
    assert report["ssim"] == pytest.approx(float(np.mean(ssim(last, future))), abs=1e-9)
    assert "lpips" not in report and "VPT_LPIPS_ALEX" in report["protocol"]["frame_metrics"]["lpips"]["skipped"]
    assert len(report["details"]["psnr"]["per_frame"]) == 8
    protocol = report["protocol"]
    assert (
        protocol["mode"] == "run"
        and protocol["backend"] == "copy-last-test"
        and protocol["checkpoint_dir"].endswith("step_000001")
    )
    assert (
        protocol["context_frames"] == 2 and protocol["predicted_frames"] == 8 and protocol["samples_per_sequence"] == 1
    )
    assert protocol["context_in_fvd_clips"] is True and protocol["clip_length"] == 10
    assert protocol["counts"] == {"sequences": 5, "skipped_short": 0, "real_clips": 5, "fake_clips": 5}


def test_run_mode_cuts_clips_like_the_runs_data_section(tmp_path, detector, monkeypatch):
    from vpt.data.video import resize_frames

    monkeypatch.setitem(BACKENDS, CopyLastBackend.name, f"{__name__}:CopyLastBackend")
    videos = moving_videos(3, 20, 16, seed=4)
    data = _write_h5(tmp_path / "data", videos)
    run = _write_run(tmp_path / "run", noise=0.0, data={"frame_skip": 1, "image_size": 12, "resize": "squash"})
    out = tmp_path / "m.json"
    result = _invoke(
        [
            "--run",
            str(run),
            "--data",
            str(data),
            "--i3d",
            str(detector),
            "--context-frames",
            "2",
            "--pred-frames",
            "8",
            "--out",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["protocol"]["frame_stride"] == 2 and report["protocol"]["source_image_size"] == 12
    clips = np.stack([resize_frames(video[0:20:2], 12) for video in videos])  # (3, 10, 12, 12, 3)
    as_unit = lambda a: torch.from_numpy(a).permute(0, 1, 4, 2, 3).flatten(0, 1).double() / 255  # noqa: E731
    expected = psnr(as_unit(np.repeat(clips[:, 1:2], 8, axis=1)), as_unit(clips[:, 2:]))
    assert report["psnr"] == pytest.approx(float(np.mean(expected)), abs=1e-9)


def test_run_mode_best_of_n_is_seeded_and_context_setting_matters(tmp_path, detector, monkeypatch):
    monkeypatch.setitem(BACKENDS, CopyLastBackend.name, f"{__name__}:CopyLastBackend")
    data = _write_h5(tmp_path / "data", moving_videos(4, 10, 16, seed=2))
    run = _write_run(tmp_path / "run", noise=0.3)
    common = [
        "--run",
        str(run),
        "--data",
        str(data),
        "--i3d",
        str(detector),
        "--context-frames",
        "1",
        "--pred-frames",
        "9",
        "--samples",
        "3",
        "--seed",
        "5",
        "--batch-size",
        "3",
        "--no-cache",
    ]
    reports = []
    for name, extra in (("a", []), ("b", []), ("c", ["--no-context-in-fvd", "--fvd-pooling", "per-sample"])):
        result = _invoke(common + extra + ["--out", str(tmp_path / f"{name}.json")])
        assert result.exit_code == 0, result.output
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    a, b, c = reports
    assert a["psnr"] == b["psnr"] and a["fvd"] == b["fvd"]  # seeded sampling: the same numbers again
    assert a["psnr"] > a["details"]["psnr"]["mean_over_samples"]  # best of 3 beats the average sample
    assert a["ssim"] > a["details"]["ssim"]["mean_over_samples"]
    assert a["protocol"]["counts"]["fake_clips"] == 12 and a["protocol"]["sampling_seed"] == 5
    assert c["protocol"]["context_in_fvd_clips"] is False and c["protocol"]["fvd_pooling"] == "per-sample"
    assert len(c["details"]["fvd_per_sample"]) == 3 and c["fvd"] == pytest.approx(
        np.mean(c["details"]["fvd_per_sample"])
    )
    assert c["fvd"] != a["fvd"]


def test_repeats_are_evaluations_under_successive_seeds_with_the_real_features_computed_once(
    tmp_path, detector, monkeypatch
):
    """--repeats 2 --seed 5: repeat r is the single evaluation with --seed 5 + r; the top level holds the
    mean and the sample std (ddof=1) of every metric; the real clips go through I3D once, also without a
    cache; a rerun with --repeats 3 reuses the cached repeats and computes only the new seed's batches."""
    monkeypatch.setitem(BACKENDS, CopyLastBackend.name, f"{__name__}:CopyLastBackend")
    monkeypatch.delenv("VPT_LPIPS_ALEX", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_cache"))  # no AlexNet weights: LPIPS is skipped
    data = _write_h5(tmp_path / "data", moving_videos(4, 10, 16, seed=3))
    run = _write_run(tmp_path / "run", noise=0.3)
    common = ["--run", str(run), "--data", str(data), "--i3d", str(detector), "--context-frames", "1"]
    common += ["--pred-frames", "9", "--samples", "2", "--batch-size", "2"]

    printed = {}

    def evaluate(name: str, *extra: str) -> dict:
        result = _invoke([*common, *extra, "--out", str(tmp_path / name / "m.json")])
        assert result.exit_code == 0, result.output
        printed[name] = result.output
        return json.loads((tmp_path / name / "m.json").read_text())

    seed_5, seed_6 = (evaluate(f"plain{seed}", "--seed", str(seed), "--no-cache") for seed in (5, 6))
    repeated = evaluate("repeated", "--seed", "5", "--repeats", "2", "--no-cache")
    metrics = ("fvd", "kvd", "psnr", "ssim")
    assert set(seed_5) == {*metrics, "repeats", "warnings", "details", "timing", "protocol"} and seed_5["repeats"] == 1
    stds = {f"{name}_std" for name in metrics}
    assert set(repeated) == {*metrics, *stds, "repeats", "per_repeat", "warnings", "timing", "protocol"}
    assert repeated["repeats"] == 2 and f"{repeated['fvd']:.3f} ± {repeated['fvd_std']:.3f}" in printed["repeated"]
    for plain, repeat in zip((seed_5, seed_6), repeated["per_repeat"]):
        seed, details = plain["protocol"]["sampling_seed"], plain["details"]
        assert repeat == {"seed": seed, **{name: plain[name] for name in metrics}, "details": details}
    assert seed_5["psnr"] != seed_6["psnr"] and seed_5["fvd"] != seed_6["fvd"]  # the noise differs by seed
    for name in metrics:
        values = [repeat[name] for repeat in repeated["per_repeat"]]
        assert repeated[name] == pytest.approx(np.mean(values), rel=1e-12)
        assert repeated[f"{name}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    # I3D clips: 4 real + 4 x 2 generated per seed; the repeats add only generated ones
    assert seed_5["timing"]["detector_clips"] == 12 and repeated["timing"]["detector_clips"] == 4 + 2 * 8

    cached = evaluate("cached", "--seed", "5", "--repeats", "2")
    assert cached["per_repeat"] == repeated["per_repeat"]
    record = cached["protocol"]["cache"]
    assert len(record["dir"]) == 2 and record["computed_batches"] == 4  # 2 batches per seed, a folder each
    assert record["real"]["computed_batches"] == 2 and record["real"]["reused_batches"] == 0
    more = evaluate("cached", "--seed", "5", "--repeats", "3")
    assert more["per_repeat"][:2] == repeated["per_repeat"] and more["per_repeat"][2]["seed"] == 7
    assert more["protocol"]["cache"]["reused_batches"] == 4 and more["protocol"]["cache"]["computed_batches"] == 2
    assert more["protocol"]["cache"]["real"]["computed_batches"] == 0


def test_repeats_are_refused_for_given_videos(tmp_path, detector):
    write_frame_folders(tmp_path / "v", moving_videos(2, 10, 16, seed=0))
    folder = str(tmp_path / "v")
    out = tmp_path / "m.json"
    result = _invoke(["--real", folder, "--fake", folder, "--i3d", str(detector), "--repeats", "2", "--out", str(out)])
    assert isinstance(result.exception, UsageError) and "--repeats go with --run" in str(result.exception)
    assert not out.exists()


def test_run_mode_takes_the_runs_own_protocol(tmp_path, detector, monkeypatch):
    """No protocol flags: context, predicted frames, samples and preset come from the run's `eval:` section."""
    monkeypatch.setitem(BACKENDS, CopyLastBackend.name, f"{__name__}:CopyLastBackend")
    data = _write_h5(tmp_path / "data", moving_videos(3, 12, 16, seed=3))
    run = _write_run(
        tmp_path / "run",
        noise=0.2,
        data={"frames": 6, "image_size": 16},
        protocol={"context_frames": 3, "predicted_frames": 9, "samples": 2, "fvd_preset": "stylegan-v"},
    )
    out = tmp_path / "m.json"
    result = _invoke(["--run", str(run), "--data", str(data), "--i3d", str(detector), "--out", str(out)])
    assert result.exit_code == 0, result.output
    protocol = json.loads(out.read_text())["protocol"]
    assert (protocol["context_frames"], protocol["predicted_frames"], protocol["samples_per_sequence"]) == (3, 9, 2)
    assert protocol["preset"] == "stylegan-v" and protocol["clip_length"] == 12 and protocol["precision"] == "fp32"
    assert "3 context -> 9 predicted frames, 2 sample(s)" in " ".join(result.output.split())
    # an explicit option still wins, and a protocol whose FVD clips are too short is refused before predicting
    short = _invoke(
        [
            "--run",
            str(run),
            "--data",
            str(data),
            "--i3d",
            str(detector),
            "--pred-frames",
            "7",
            "--no-context-in-fvd",
            "--out",
            str(out),
        ]
    )
    assert isinstance(short.exception, UsageError) and "these clips have 7" in str(short.exception)


def test_checkpoint_mode_uses_the_release_protocol_and_caches_by_file(tmp_path, monkeypatch):
    """`eval-fvd --checkpoint model.pth` predicts with published weights under their release's protocol
    (RIVER BAIR64: 1 context frame, 64 px frames; the 32 px test videos are resized; options still override
    single values, here its 100 samples per video), records where the weights came from, and a second identical call
    reuses every cached batch of that file."""
    from test_river import _published_checkpoint

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_cache"))  # LPIPS skipped: not what this checks
    checkpoint = _published_checkpoint(tmp_path / "model.pth")
    data = _write_h5(tmp_path / "data", moving_videos(2, 4, 32, seed=3))
    args = [
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(data),
        "--no-fvd",
        "--pred-frames",
        "1",
        "--steps",
        "2",
        "--samples",
        "1",
        "--cache",
        str(tmp_path / "cache"),
    ]
    first = _invoke([*args, "--out", str(tmp_path / "a.json")])
    assert first.exit_code == 0, first.output
    report = json.loads((tmp_path / "a.json").read_text())
    protocol = report["protocol"]
    assert protocol["mode"] == "checkpoint" and protocol["backend"] == "river"
    assert protocol["checkpoint"] == str(checkpoint.resolve()) and protocol["release"] is None
    assert (
        protocol["context_frames"] == 1 and protocol["predicted_frames"] == 1 and protocol["samples_per_sequence"] == 1
    )
    assert protocol["source_image_size"] == 64
    assert protocol["cache"]["computed_batches"] == 1 and np.isfinite(report["psnr"])

    again = _invoke([*args, "--out", str(tmp_path / "b.json")])
    assert again.exit_code == 0, again.output
    repeat = json.loads((tmp_path / "b.json").read_text())
    assert repeat["protocol"]["cache"]["reused_batches"] == 1 and repeat["psnr"] == report["psnr"]

    both = _invoke(
        [
            "--checkpoint",
            str(checkpoint),
            "--run",
            str(tmp_path),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "c.json"),
        ]
    )
    assert isinstance(both.exception, UsageError) and "either --run or --checkpoint" in str(both.exception)


def _write_latte_run(root, frames: int):
    """A tiny unconditional Latte run on 4 x 4 pixel patches (no autoencoder to train), generating
    `frames`-frame clips: its protocol gives no context, with the StyleGAN-V preset."""
    from safetensors.torch import save_file

    from vpt.models.latte import Latte, LatteConfig
    from vpt.runs import Run

    model_cfg = dict(
        autoencoder="pixels:4",
        latent_channels=48,
        num_frames=frames,
        patch_size=1,
        num_layers=2,
        hidden_size=16,
        num_heads=2,
        head_dim=8,
        timestep_emb_dim=16,
        sampler="ddim",
        steps=2,
    )
    torch.manual_seed(0)
    model = Latte(LatteConfig(**model_cfg))
    torch.nn.init.normal_(model.denoiser.final.linear.weight, std=0.1)  # a fresh DiT predicts ε = 0
    run = Run.open(root)
    run.write_config(
        {
            "backend": "latte",
            "model": model_cfg,
            "data": {"frames": frames, "image_size": 16},
            "eval": {"predicted_frames": frames, "fvd_preset": "stylegan-v"},
        }
    )
    pending = run.pending_dir(1)
    pending.mkdir(parents=True)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, pending / "model.safetensors")
    run.commit_checkpoint(1, keep_last=1)
    return root


def test_run_mode_scores_an_unconditional_generator(tmp_path, detector):
    """A run whose protocol gives no context generates one clip per test clip; only FVD/KVD score it,
    against the real clips, with the run's preset recorded."""
    from vpt.metrics.evaluate import quantise, sample_seed
    from vpt.metrics.fvd import detector_features, fvd_from_stats, get_preset, stats_of
    from vpt.metrics.i3d import load_detector

    videos = moving_videos(5, 10, 16, seed=6)
    data = _write_h5(tmp_path / "data", videos)
    run = _write_latte_run(tmp_path / "run", frames=10)
    out = tmp_path / "m.json"
    result = _invoke(["--run", str(run), "--data", str(data), "--i3d", str(detector), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert not {"psnr", "ssim", "lpips"} & set(report)  # a generated clip has no ground truth
    protocol = report["protocol"]
    assert (protocol["task"], protocol["context_frames"], protocol["predicted_frames"]) == ("generation", 0, 10)
    assert protocol["preset"] == "stylegan-v" and protocol["covariance"] == "population"
    assert protocol["counts"] == {"sequences": 5, "skipped_short": 0, "real_clips": 5, "fake_clips": 5}
    assert protocol["frame_metrics"] is None

    preset = get_preset("stylegan-v")
    i3d = load_detector(detector, bn_eps=preset.bn_eps)
    model = Backend.from_run(run)
    generator = torch.Generator().manual_seed(sample_seed(0, 0, 0))  # one batch, first clip 0, sample 0
    with torch.no_grad():
        generated = quantise(model.predict(torch.zeros(5, 0, 3, 16, 16), 10, generator=generator))  # (5, 10, 3, 16, 16)
    fake = detector_features(i3d, generated.permute(0, 1, 3, 4, 2), preset)
    real = detector_features(i3d, torch.from_numpy(videos), preset)
    assert report["fvd"] == pytest.approx(fvd_from_stats(stats_of(real), stats_of(fake), preset), rel=1e-6)

    no_fvd = _invoke(["--run", str(run), "--data", str(data), "--i3d", str(detector), "--no-fvd", "--out", str(out)])
    assert isinstance(no_fvd.exception, UsageError) and "FVD/KVD only" in str(no_fvd.exception)


def test_frames_smaller_than_the_ssim_window_are_one_line(tmp_path, detector):
    """8 px frames scored in pairs: SSIM's 11-tap window does not fit, said in one line, no metrics.json."""
    write_frame_folders(tmp_path / "v", moving_videos(2, 10, 8, seed=0))
    folder = str(tmp_path / "v")
    args = [
        "--real",
        folder,
        "--fake",
        folder,
        "--paired",
        "--no-fvd",
        "--frames",
        "10",
        "--out",
        str(tmp_path / "m.json"),
    ]
    result = _invoke(args)
    assert isinstance(result.exception, UsageError), result.output
    assert "SSIM needs frames of at least 11x11 pixels, got 8x8" in str(result.exception)
    assert not (tmp_path / "m.json").exists()
