"""`vpt train-ae` on the shared loop: a tiny VQGAN learns the built-in shapes; runs resume, record a
missing LPIPS backbone, start from other weights, and refuse bad configs with one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from data_helpers import shapes_h5 as make_shapes_h5

from vpt.runs import Run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ae" / "shapes.yaml"
TINY = [
    "--set",
    "autoencoder.arch.ch=8",
    "--set",
    "autoencoder.arch.ch_mult=[1,2]",
    "--set",
    "autoencoder.arch.resolution=32",
    "--set",
    "autoencoder.arch.n_embed=64",
    "--set",
    "autoencoder.arch.norm_groups=4",
    "--set",
    "train.batch_size=8",
]


@pytest.fixture(scope="module")
def shapes_h5(tmp_path_factory) -> Path:
    """`make-data shapes` (40 videos of 8 frames at 32x32) converted to HDF5."""
    return make_shapes_h5(tmp_path_factory.mktemp("shapes"), num_videos=40, frames=8)


def _val_records(run: Path) -> list[dict]:
    return [r for r in Run(run).read_metrics() if "val_psnr" in r]


def _background_psnr(h5: Path) -> float:
    """PSNR of the best shape-free guess: every val frame replaced by its median colour."""
    from vpt.data.h5 import VideoH5

    source = VideoH5(h5 / "val")
    scores = []
    for i in range(len(source)):
        frame = source.read(i, [0])[0].astype(np.float64) / 255  # what validation scores: frame 0 of each clip
        flat = np.broadcast_to(np.median(frame.reshape(-1, 3), axis=0), frame.shape)
        scores.append(10 * np.log10(1 / np.mean((frame - flat) ** 2)))
    return float(np.mean(scores))


@pytest.mark.slow
def test_tiny_vqgan_learns_the_shapes(shapes_h5, tmp_path, invoke):
    run = tmp_path / "run"
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIG,
        "--data",
        shapes_h5,
        "--run",
        run,
        *TINY,
        "--set",
        "loss.discriminator=none",
        "--set",
        "train.lr=6e-3",
        "--set",
        "train.lr_schedule=constant",
        "--set",
        "train.val_every=100",
        "--set",
        "train.sample_every=300",
        "--max-steps",
        "300",
    )
    assert code == 0, output
    records = _val_records(run)
    assert [r["step"] for r in records] == [100, 200, 300]
    baseline = _background_psnr(shapes_h5)  # about 17.7 dB: the flat background alone
    # measured 23.5-23.9 dB at step 300 (1 or 2 threads); the bound keeps ~1 dB of room
    assert records[-1]["val_psnr"] > 22.5 > baseline + 4, (records, baseline)
    assert records[-1]["val_ssim"] > 0.85
    assert (run / "samples" / "step_000300.png").is_file()


def test_train_ae_run_resumes_records_missing_lpips_and_loads(shapes_h5, tmp_path, invoke):
    run = tmp_path / "run"
    common = [
        "--data",
        shapes_h5,
        "--run",
        run,
        *TINY,
        "--set",
        "train.batch_size=2",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.val_every=2",
        "--set",
        "train.sample_every=2",
        "--set",
        "train.log_every=1",
        "--set",
        "loss.disc_start=0",
        "--set",
        "loss.disc_channels=8",
        "--set",
        "loss.perceptual_weight=1.0",
        "--set",
        f"loss.lpips_backbone={tmp_path / 'vgg16.pth'}",
    ]
    code, output = invoke("train-ae", "--config", CONFIG, *common, "--max-steps", "2")
    assert code == 0, output
    assert "training without LPIPS" in output and "vgg16.pth" in output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert list(config) == ["autoencoder", "data", "loss", "train"]
    assert config["autoencoder"]["type"] == "vqgan" and config["autoencoder"]["arch"]["ch"] == 8
    events = [r for r in Run(run).read_metrics() if r.get("event") == "lpips_disabled"]
    assert len(events) == 1 and "vgg16.pth" in events[0]["reason"]
    losses = [r for r in Run(run).read_metrics() if "loss" in r]
    assert losses[-1]["gan_weight"] > 0 and "g_loss" in losses[-1] and "d_loss" in losses[-1]  # GAN on from step 0
    assert (run / "samples" / "step_000002.png").is_file() and _val_records(run)[-1]["step"] == 2

    code, output = invoke("train-ae", "--config", CONFIG, *common, "--max-steps", "4")
    assert code == 0, output
    assert "Resuming" in output and "from step 2" in output
    assert Run(run).latest_step() == 4
    assert len([r for r in Run(run).read_metrics() if r.get("event") == "lpips_disabled"]) == 1

    from vpt.models.autoencoders import load_autoencoder

    ae = load_autoencoder(run)
    assert ae.provenance["format"] == "vpt-run" and ae.provenance["checkpoint"] == "step_000004"
    assert ae.encode(torch.zeros(1, 3, 3, 32, 32)).shape == (1, 3, 4, 16, 16)
    assert not any(k.startswith("discriminator") for k in ae.state_dict())


def test_init_from_copies_weights_and_architecture(shapes_h5, tmp_path, invoke):
    from safetensors.torch import save_file

    from vpt.models.autoencoders import build_autoencoder

    torch.manual_seed(3)
    source = build_autoencoder("river-vqvae", {"num_embeddings": 32})
    weights = tmp_path / "vqvae.safetensors"
    save_file(source.state_dict(), weights)
    run = tmp_path / "run"
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIG,
        "--data",
        shapes_h5,
        "--run",
        run,
        "--init-from",
        weights,
        "--set",
        "autoencoder.type=ours",
        "--set",
        "autoencoder.arch={}",
        "--set",
        "train.lr=0.0",
        "--set",
        "train.batch_size=1",
        "--set",
        "loss.discriminator=none",
        "--set",
        "train.val_every=0",
        "--set",
        "train.sample_every=0",
        "--max-steps",
        "1",
    )
    assert code == 0, output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["autoencoder"]["type"] == "river-vqvae" and config["autoencoder"]["arch"]["num_embeddings"] == 32
    from vpt.models.autoencoders import load_autoencoder

    trained = dict(load_autoencoder(run).named_parameters())
    for key, value in source.named_parameters():  # lr 0: parameters unchanged (BatchNorm statistics do move)
        torch.testing.assert_close(trained[key], value)


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("autoencoder.type=vqgann", "did you mean 'vqgan'"),
        ("autoencoder.arch.chanels=8", "unknown key 'autoencoder.arch.chanels'"),
        ("autoencoder.arch.preset=f32", "unknown preset 'f32'"),
        ("loss.gan_loss=wasserstein", "loss.gan_loss"),
    ],
)
def test_config_mistakes_are_one_line_with_exit_code_2(shapes_h5, tmp_path, invoke, setting, needle):
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIG,
        "--data",
        shapes_h5,
        "--run",
        tmp_path / "run",
        "--set",
        setting,
        "--max-steps",
        "1",
    )
    assert code == 2 and needle in output and "Traceback" not in output, output
