"""8 optimizer steps (24 micro-batches) of `vpt train-ae`'s loop against upstream PVDM's own autoencoder-training
step, `first_stage_train`, with its alternating autoencoder / discriminator phases, `disc_start` and LPIPS (weight
4 on the drawn frame of each clip) on a seeded random VGG-16 with the `lpips` wheel's heads on both sides
(tests/recorded_training.py says how a recording is replayed; tests/fixtures/pvdm/README.md how it was made)."""

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

DISCRIMINATORS = ("discriminator_2d", "discriminator_3d")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ae" / "pvdm_ucf101.yaml"


def test_autoencoder_training_matches_upstream_first_stage_train(tmp_path):
    record = load_file(fixture("pvdm", "ae_training.safetensors"))
    seed, batch_size, lr, disc_start, disc_channels, disc_layers, accum_iter, perceptual_weight = record[
        "settings"
    ].tolist()
    seed, batch_size, disc_start, disc_channels, disc_layers, accum_iter = (
        int(v) for v in (seed, batch_size, disc_start, disc_channels, disc_layers, accum_iter)
    )
    autoencoder = (
        autoencoder_from_upstream_state(
            {
                **read_weights(fixture("pvdm", "ae_tiny_state_dict_part1.pt")),
                **read_weights(fixture("pvdm", "ae_tiny_state_dict_part2.pt")),
            },
            where="ae_tiny",
        )
        .train()
        .requires_grad_(True)
    )  # as train-ae's --init-from makes a loaded autoencoder trainable
    published = yaml.safe_load(CONFIG.read_text())
    save_file(seeded_vgg16_features(), tmp_path / "vgg16.safetensors")  # the recording's VGG-16 stand-in
    loss = LossConfig(  # the published loss section with the recording's VGG-16, discriminators and disc_start
        **{
            **published["loss"],
            "lpips_backbone": str(tmp_path / "vgg16.safetensors"),
            "disc_layers": disc_layers,
            "disc_channels": disc_channels,
            "disc_start": disc_start,
        }
    )
    assert loss.perceptual_weight == perceptual_weight
    perceptual, reason = load_perceptual(loss)  # the heads: the installed lpips wheel's, as upstream's in the recording
    assert perceptual is not None, reason
    objective = autoencoder.build_objective(  # what train_autoencoder builds
        loss, grad_accum=accum_iter, perceptual=perceptual.double()
    )
    objective.load_upstream_discriminators(prefixed(record, "initial."))
    objective.double()  # the recording's precision (its docstring says why float64)
    iterations = len(record["losses"])
    steps = iterations // accum_iter
    train_cfg = published_train_config(  # the published train section (optimizer, clipping, accumulation) at the recording's size
        published["train"], steps=steps, seed=seed, batch_size=batch_size
    )
    assert (train_cfg.lr, train_cfg.grad_accum) == (lr, accum_iter)
    videos = record["batches"].double() / 127.5 - 1  # (iterations, B, T, C, H, W): upstream's normalisation

    losses, _, calls = replay(objective, objective.discriminator_2d, {"video": videos}, train_cfg, tmp_path / "run")

    # Every micro-batch's first 2-D discriminator call sees its real frames: the frame draws are upstream's.
    shown = torch.stack([inputs[0] for inputs in calls[::2]])  # (iterations, B, C, H, W)
    rows = torch.arange(batch_size)
    expected = torch.stack([clip[rows, frames] for clip, frames in zip(videos, record["draws.frames"])])
    torch.testing.assert_close(shown, expected, rtol=0, atol=0)
    phases = record["phases"].view(steps, accum_iter)
    assert (phases == phases[:, :1]).all()  # upstream's phases are whole updates
    trained_discriminators = ["d_loss" in m for m in Run(tmp_path / "run").read_metrics() if "loss" in m]
    assert trained_discriminators == phases[:, 0].tolist()
    assert torch.equal(phases[:, 0], torch.tensor([objective.trains_discriminators(s) for s in range(steps)]))

    loss_error = largest_loss_error(losses, record["losses"].double().view(steps, accum_iter).mean(dim=1))
    upstream_final = {
        "autoencoder": load_file(fixture("pvdm", "ae_training.final.safetensors")),
        **{name: prefixed(record, f"final.{name}.") for name in DISCRIMINATORS},
    }
    errors = part_errors(objective, upstream_final)
    worst = max(errors, key=errors.get)
    print(f"\nloss {loss_error:.1e}, weights {errors[worst]:.1e} ({worst})")
    assert loss_error <= LOSS_RTOL
    assert errors[worst] <= WEIGHT_RTOL, worst
