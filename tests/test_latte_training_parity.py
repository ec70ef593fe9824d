"""20 iterations of vpt's training loop against each Latte upstream's own training step: official Latte's train.py
and VideoGeneration-PyTorch's train_vae_ditv.py (tests/recorded_training.py says how a recording is replayed;
tests/fixtures/latte/README.md how it was made)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from fixture_paths import fixture
from recorded_training import (
    LOSS_RTOL,
    WEIGHT_RTOL,
    key_bias_effect,
    largest_loss_error,
    published_train_config,
    replay,
    trained_ema,
    weight_errors,
)
from safetensors.torch import load_file

from vpt.models.latte import Latte, LatteConfig, convert_official_state, convert_vg_state
from vpt.training import TrainConfig
from vpt.weights import read_weights

VG_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "latte" / "vg_ucf.yaml"


def _weights(record: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return convert_official_state({k.removeprefix(prefix): v for k, v in record.items() if k.startswith(prefix)})


def test_twenty_training_steps_match_official_train_py(tmp_path):
    record = load_file(fixture("latte", "training_official.safetensors"))
    settings = record["settings"].tolist()
    seed, batch_size, frames, channels, patch, width, depth, heads, classes = map(int, settings[:9])
    lr, clip_max_norm, start_clip_iter, ema_decay, steps = settings[9:]
    model = Latte(
        LatteConfig(
            latent_channels=channels,
            num_frames=frames,
            patch_size=patch,
            num_layers=depth,
            hidden_size=width,
            num_heads=heads,
            head_dim=width // heads,
            timestep_emb_dim=256,
            num_classes=classes,
            class_dropout=0.1,
            position_order="column",
            learn_sigma=True,
        )
    )
    model.denoiser.load_state_dict(_weights(record, "initial."))
    train_cfg = TrainConfig(  # train.py's optimiser, schedule, clipping and EMA
        max_steps=int(steps),
        batch_size=batch_size,
        lr=lr,
        weight_decay=0.0,
        betas=[0.9, 0.999],
        lr_schedule="constant",
        grad_clip=clip_max_norm,
        grad_clip_start=int(start_clip_iter),
        skip_first_update=True,
        ema_decay=ema_decay,
        precision="no",
        seed=seed,
        log_every=1,
        checkpoint_every=int(steps),
    )

    run_dir = tmp_path / "run"
    losses, _, calls = replay(model, model.denoiser, record["batches"], train_cfg, run_dir, labels=record["labels"])

    noisy, times = (torch.stack(inputs) for inputs in list(zip(*calls))[:2])  # per step
    assert torch.equal(times, record["draws.timesteps"])
    torch.testing.assert_close(noisy, record["draws.noisy"], rtol=1e-5, atol=1e-5)
    loss_error = largest_loss_error(losses, record["losses"])
    errors = weight_errors(model.denoiser.state_dict(), _weights(record, "final."))
    ema_errors = weight_errors(trained_ema(run_dir, "denoiser."), _weights(record, "ema."))
    worst, worst_ema = max(errors, key=errors.get), max(ema_errors, key=ema_errors.get)
    inert = key_bias_effect(model.denoiser, _weights(record, "final."), calls[-1])
    print(
        f"\nloss {loss_error:.1e}, weights {errors[worst]:.1e} ({worst}), EMA {ema_errors[worst_ema]:.1e} "
        f"({worst_ema}), key biases {inert:.1e} of the output"
    )
    assert loss_error <= LOSS_RTOL
    assert errors[worst] <= WEIGHT_RTOL, worst
    assert ema_errors[worst_ema] <= WEIGHT_RTOL, worst_ema
    assert inert <= 1e-5  # rounding: the same shift is added to every logit of a row


def test_twenty_training_steps_match_videogeneration_pytorch_train_vae_ditv(tmp_path):
    record = load_file(fixture("latte", "training_vg.safetensors"))
    seed, batch_size, num_images, acc_steps, lr, steps = record["settings"].tolist()
    seed, batch_size, num_images, acc_steps, steps = (int(v) for v in (seed, batch_size, num_images, acc_steps, steps))
    tiny = yaml.safe_load(fixture("latte", "config_tiny.yaml").read_text())["ditv_tiny"]
    published = yaml.safe_load(VG_CONFIG.read_text())
    model = Latte(  # the published model section's conventions at the tiny fixture's size
        LatteConfig(
            **{
                **{k: v for k, v in published["model"].items() if k != "size"},
                **tiny["ditv_params"],  # upstream's ditv_params names are LatteConfig's
                "latent_channels": tiny["im_channels"],
                "num_frames": tiny["num_frames"],
                "num_images": num_images,
            }
        )
    )
    model.denoiser.load_state_dict(convert_vg_state(read_weights(fixture("latte", "ditv_tiny_state_dict.pt"))))
    train_cfg = published_train_config(  # the published train section (AdamW, constant lr, no clipping, no EMA)
        published["train"], steps=steps, seed=seed, batch_size=batch_size, grad_accum=acc_steps
    )
    assert (train_cfg.lr, train_cfg.ema_decay) == (lr, 0.0)
    videos = record["batches"]  # (steps, B, F + images, c, h, w)
    # upstream's loader drew each clip's images from random videos: what vpt's data.joint_images hands the loss
    batches = {"latents": videos, "joint_images": torch.full(videos.shape[:2], num_images)}

    losses, _, calls = replay(model, model.denoiser, batches, train_cfg, tmp_path / "run")

    noisy, times = (torch.stack(inputs) for inputs in list(zip(*calls))[:2])  # per step
    assert torch.equal(times, record["draws.timesteps"])  # the draws, in upstream's order (noise, then t)
    torch.testing.assert_close(noisy, record["draws.noisy"], rtol=1e-5, atol=1e-5)
    loss_error = largest_loss_error(losses, record["losses"])
    upstream_final = convert_vg_state(
        {k.removeprefix("final."): v for k, v in record.items() if k.startswith("final.")}
    )
    errors = weight_errors(model.denoiser.state_dict(), upstream_final)
    worst = max(errors, key=errors.get)
    inert = key_bias_effect(model.denoiser, upstream_final, calls[-1], num_images=num_images)
    print(f"\nloss {loss_error:.1e}, weights {errors[worst]:.1e} ({worst}), key biases {inert:.1e} of the output")
    assert loss_error <= LOSS_RTOL
    assert errors[worst] <= WEIGHT_RTOL, worst
    assert inert <= 1e-5
