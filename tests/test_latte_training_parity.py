"""20 iterations of vpt's training loop against official Latte's own training step (tests/recorded_training.py
says how a recording is replayed; tests/fixtures/latte/README.md how it was made)."""

from __future__ import annotations

import torch
from fixture_paths import fixture
from recorded_training import LOSS_RTOL, WEIGHT_RTOL, key_bias_effect, largest_loss_error, replay, weight_errors
from safetensors.torch import load_file

from vpt.models.latte import Latte, LatteConfig, convert_official_state
from vpt.runs import Run
from vpt.training import TrainConfig
from vpt.weights import read_weights


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
    ema = read_weights(Run(run_dir).latest_checkpoint() / "ema.safetensors")
    ema_errors = weight_errors({k.removeprefix("denoiser."): v for k, v in ema.items()}, _weights(record, "ema."))
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
