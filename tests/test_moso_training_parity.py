"""20 steps of `vpt train-ae`'s loop on RSVP-M's first stage, MOSO's three-stream VQ-VAE, against MOSO's own
training step (`train_dist.py` around `MoCoVQVAE_wCD_shareCB`): its EMA codebook updates, its single Adam and
cosine schedule, its alternating generator / discriminator iterations from `disc_start_step` on and LPIPS (weight 1
on every frame, dropout before its heads as upstream's training-mode network) on a seeded random VGG-16 with the
`lpips` wheel's heads on both sides
(tests/recorded_training.py says how a recording is replayed; tests/fixtures/rsvp/README.md how it was made)."""

from __future__ import annotations

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

from vpt.models.autoencoders import autoencoder_from_upstream_state
from vpt.models.autoencoders.objective import LossConfig, load_perceptual
from vpt.runs import Run
from vpt.weights import read_weights

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ae" / "moso_ucf101.yaml"
PHASE_NO_GAN, PHASE_AUTOENCODER, PHASE_DISCRIMINATOR = -1, 0, 1  # upstream's optimizer_idx


def test_twenty_training_steps_match_upstream_moso_train_dist(tmp_path):
    record = load_file(fixture("rsvp", "moso_training.safetensors"))
    settings = record["settings"].tolist()
    seed, batch_size, lr, disc_start, disc_channels, disc_layers, schedule_steps, perceptual_weight, dropout = settings
    seed, batch_size, disc_start, disc_channels, disc_layers, schedule_steps = (
        int(v) for v in (seed, batch_size, disc_start, disc_channels, disc_layers, schedule_steps)
    )
    autoencoder = (
        autoencoder_from_upstream_state(
            read_weights(fixture("moso", "moso_tiny_state_dict.pt")), arch={"resolution": 32}
        )
        .train()
        .requires_grad_(True)
    )  # as train-ae's --init-from makes a loaded autoencoder trainable; split inputs off (arch default), as recorded
    published = yaml.safe_load(CONFIG.read_text())
    save_file(seeded_vgg16_features(), tmp_path / "vgg16.safetensors")  # the recording's VGG-16 stand-in
    loss = LossConfig(  # the published loss section with the recording's VGG-16, discriminator and disc_start
        **{
            **published["loss"],
            "lpips_backbone": str(tmp_path / "vgg16.safetensors"),
            "disc_channels": disc_channels,
            "disc_layers": disc_layers,
            "disc_start": disc_start,
        }
    )
    assert (loss.perceptual_weight, loss.lpips_head_dropout) == (perceptual_weight, dropout)
    perceptual, reason = load_perceptual(loss)  # the heads: the installed lpips wheel's, as upstream's in the recording
    assert perceptual is not None, reason
    objective = autoencoder.build_objective(loss, perceptual=perceptual.double())  # what train_autoencoder builds
    objective.discriminator.load_state_dict(prefixed(record, "initial._discriminator."))
    objective.double()  # the recording's precision (its docstring says why float64)
    iterations = len(record["losses"])
    train_cfg = published_train_config(  # the published train section (Adam, cosine over upstream's span) at the recording's size
        published["train"], steps=iterations, seed=seed, batch_size=batch_size, lr=lr, lr_schedule_steps=schedule_steps
    )
    videos = record["batches"].double() / 127.5 - 1  # (iterations, B, T, C, H, W): upstream's x / 255 on [-1, 1]

    losses, learning_rates, calls = replay(
        objective, objective.discriminator, {"video": videos}, train_cfg, tmp_path / "run"
    )

    phases = record["phases"]
    assert phases.tolist() == [  # the recording crosses disc_start and alternates: odd iterations train D
        PHASE_NO_GAN if i < disc_start else PHASE_DISCRIMINATOR if i % 2 else PHASE_AUTOENCODER
        for i in range(iterations)
    ]
    assert phases.eq(PHASE_DISCRIMINATOR).tolist() == [objective.trains_discriminator(s) for s in range(iterations)]
    metrics = [m for m in Run(tmp_path / "run").read_metrics() if "loss" in m]
    assert ["d_loss" in m for m in metrics] == phases.eq(PHASE_DISCRIMINATOR).tolist()
    assert ["g_loss" in m for m in metrics] == phases.eq(PHASE_AUTOENCODER).tolist()
    # the discriminator judges real and reconstructed clips in its own steps, the reconstructions in the other's
    assert len(calls) == 2 * int(phases.eq(PHASE_DISCRIMINATOR).sum()) + int(phases.eq(PHASE_AUTOENCODER).sum())
    # upstream's LambdaLR is one step ahead (cosine at step + 1): 2e-9 of lr over 20 of 250,000 steps
    torch.testing.assert_close(learning_rates, record["learning_rates"], rtol=1e-8, atol=0)

    loss_error = largest_loss_error(losses, record["losses"])
    upstream_final = {
        "autoencoder": load_file(fixture("rsvp", "moso_training.final.safetensors")),
        "discriminator": prefixed(record, "final._discriminator."),
    }
    errors = part_errors(objective, upstream_final)
    worst = max(errors, key=errors.get)
    codebook = errors["autoencoder._vq_ema.embeddings"]
    print(f"\nloss {loss_error:.1e}, weights {errors[worst]:.1e} ({worst}), codebook {codebook:.1e}")
    assert loss_error <= LOSS_RTOL
    assert errors[worst] <= WEIGHT_RTOL, worst
