"""20 steps of `vpt train-ae`'s loop against VideoGeneration-PyTorch's own frame-VAE training step (train_vae.py),
with LPIPS in the loss at upstream's weight and its LSGAN discriminator switched on at `disc_start`
(tests/recorded_training.py says how a recording is replayed; tests/fixtures/latte/README.md how it was made).
Both sides' LPIPS run on the same random VGG-16 (`seeded_vgg16_features`, here through `loss.lpips_backbone`) and
the lpips wheel's v0.1 heads: the check is of the loss's maths, not of ImageNet features."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from fixture_paths import fixture, seeded_vgg16_features
from recorded_training import (
    LOSS_RTOL,
    WEIGHT_RTOL,
    largest_loss_error,
    part_errors,
    prefixed,
    published_train_config,
    replay,
)
from safetensors.torch import load_file, save_file

from vpt.models.autoencoders import build_autoencoder
from vpt.models.autoencoders.objective import LossConfig, load_perceptual
from vpt.runs import Run
from vpt.weights import read_weights

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ae" / "vg_mnist.yaml"


@contextmanager
def float64_default():
    """Upstream's VAE draws its posterior noise in the default dtype and vpt's in the mean's: float64 for both."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def test_vae_training_matches_upstream_train_vae(tmp_path):
    record = load_file(fixture("latte", "vae_training.safetensors"))
    seed, batch_size, lr, disc_start, acc_steps, steps, perceptual_weight = record["settings"].tolist()
    seed, batch_size, disc_start, acc_steps, steps = (int(v) for v in (seed, batch_size, disc_start, acc_steps, steps))
    tiny = yaml.safe_load(fixture("latte", "config_tiny.yaml").read_text())
    vae, disc = tiny["vae_tiny_attn"], tiny["disc_tiny"]
    arch = {k: v for k, v in vae["autoencoder_params"].items() if k != "codebook_size"}
    autoencoder = build_autoencoder("latte-vae", {**arch, "in_channels": vae["im_channels"]})
    autoencoder.load_state_dict(read_weights(fixture("latte", "vae_tiny_attn_state_dict.pt")))
    autoencoder.train().requires_grad_(True)  # as train-ae makes a loaded autoencoder trainable
    published = yaml.safe_load(CONFIG.read_text())
    widths = disc["conv_channels"]
    backbone = tmp_path / "vgg16.safetensors"  # the recording's VGG-16 stand-in; the heads: the lpips wheel's
    save_file(seeded_vgg16_features(), backbone)
    loss = LossConfig(  # the published loss section with the recording's backbone, discriminator and disc_start
        **{
            **published["loss"],
            "lpips_backbone": str(backbone),
            "disc_channels": widths[0],
            "disc_layers": len(widths),
            "disc_start": disc_start,
        }
    )
    assert loss.perceptual_weight == perceptual_weight
    train_cfg = published_train_config(  # the published train section (Adam betas, no clipping) at the recording's size
        published["train"], steps=steps, seed=seed, batch_size=batch_size, grad_accum=acc_steps
    )
    assert train_cfg.lr == lr
    images = record["batches"].double()  # (steps, B, C, H, W)
    with float64_default():  # the recording's precision (its docstring says why float64)
        perceptual, reason = load_perceptual(loss)  # what train_autoencoder builds (here in float64)
        assert perceptual is not None, reason
        objective = autoencoder.build_objective(loss, grad_accum=acc_steps, perceptual=perceptual)
        objective.discriminator.load_state_dict(read_weights(fixture("latte", "disc_tiny_state_dict.pt")))
        objective.double()
        frames = images[:, :, None]  # (steps, B, 1, C, H, W): one-frame clips of upstream's images
        losses, _, calls = replay(objective, objective.discriminator, {"video": frames}, train_cfg, tmp_path / "run")

    # The discriminator runs only from disc_start on, three times a step: generator term, fake, real.
    assert len(calls) == 3 * (steps - disc_start)
    real = torch.stack([inputs[0] for inputs in calls[2::3]])  # (steps - disc_start, B, C, H, W)
    torch.testing.assert_close(real, images[disc_start:], rtol=0, atol=0)
    metrics = [m for m in Run(tmp_path / "run").read_metrics() if "loss" in m]
    assert ["d_loss" in m for m in metrics] == [step >= disc_start for step in range(steps)]
    lpips_error = largest_loss_error(
        torch.tensor([m["lpips"] for m in metrics], dtype=torch.float64), record["lpips_losses"]
    )
    # vpt's loss is both players' (upstream logs the generator's); the discriminator's is 0 before disc_start
    loss_error = largest_loss_error(losses, record["g_losses"] + record["d_losses"])
    upstream = {part: prefixed(record, f"final.{part}.") for part in ("autoencoder", "discriminator")}
    errors = part_errors(objective, upstream)
    worst = max(errors, key=errors.get)
    print(f"\nloss {loss_error:.1e}, LPIPS {lpips_error:.1e}, weights {errors[worst]:.1e} ({worst})")
    assert lpips_error <= LOSS_RTOL
    assert loss_error <= LOSS_RTOL
    assert errors[worst] <= WEIGHT_RTOL, worst
