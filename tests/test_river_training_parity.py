"""20 optimiser steps of vpt's training loop against upstream RIVER's own training code (tests/recorded_training.py
says how a recording is replayed; tests/fixtures/river/README.md how it was made)."""

from __future__ import annotations

import pytest
import torch
from fixture_paths import fixture
from recorded_training import (
    LOSS_RTOL,
    WEIGHT_RTOL,
    key_bias_effect,
    largest_loss_error,
    replay,
    upstream_trainer_config,
    weight_errors,
)
from safetensors.torch import load_file

from vpt.models.river import River, RiverConfig
from vpt.models.uvit import convert_upstream_regressor


def _weights(record: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return convert_upstream_regressor({k.removeprefix(prefix): v for k, v in record.items() if k.startswith(prefix)})


@pytest.mark.parametrize("head", ["ln", "bn"])
def test_twenty_training_steps_match_upstream_trainer(tmp_path, head):
    record = load_file(fixture("river", f"training_{head}.safetensors"))
    seed, batch_size, _, channels, _, inner_dim, lr, weight_decay, warmup, steps, sigma = record["settings"].tolist()
    cfg = RiverConfig(
        latent_channels=int(channels),
        inner_dim=int(inner_dim),
        depth=1,
        mid_depth=1,
        heads=8,
        out_norm=head,
        dropout=0.05,
        sigma_min=sigma,
    )
    model = River(cfg)
    model.regressor.load_state_dict(_weights(record, "initial."))
    train_cfg = upstream_trainer_config(
        steps=int(steps),
        batch_size=int(batch_size),
        lr=lr,
        weight_decay=weight_decay,
        warmup=int(warmup),
        lr_end=1e-7,  # transformers' default, which upstream keeps
        seed=int(seed),
    )

    losses, learning_rates, calls = replay(model, model.regressor, record["batches"], train_cfg, tmp_path / "run")

    noisy, _, _, distances, times = (torch.stack(inputs) for inputs in zip(*calls))  # per step
    assert torch.equal(distances, record["draws.distances"])
    assert torch.equal(times, record["draws.timestamps"])
    torch.testing.assert_close(noisy, record["draws.noisy"], rtol=1e-5, atol=1e-5)
    assert (learning_rates - record["learning_rates"]).abs().max().item() <= 1e-12 * lr
    loss_error = largest_loss_error(losses, record["losses"])
    errors = weight_errors(model.regressor.state_dict(), _weights(record, "final."))
    worst = max(errors, key=errors.get)
    inert = key_bias_effect(model.regressor, _weights(record, "final."), calls[-1])
    print(
        f"\n{head}: loss {loss_error:.1e}, weights {errors[worst]:.1e} ({worst}), key biases {inert:.1e} of the output"
    )
    assert loss_error <= LOSS_RTOL
    assert errors[worst] <= WEIGHT_RTOL, worst
    assert inert <= 1e-5  # rounding: the same shift is added to every logit of a row
