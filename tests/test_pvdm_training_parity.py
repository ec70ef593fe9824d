"""20 optimiser steps of vpt's training loop against upstream PVDM's own diffusion-training step, EMA included
(tests/recorded_training.py says how a recording is replayed; tests/fixtures/pvdm/README.md how it was made)."""

from __future__ import annotations

import re

import torch
from fixture_paths import fixture
from recorded_training import (
    LOSS_RTOL,
    WEIGHT_RTOL,
    largest_loss_error,
    replay,
    splice_effect,
    trained_ema,
    weight_errors,
)
from safetensors.torch import load_file

from vpt.models.pvdm import PVDM, PVDMConfig, convert_upstream_unet
from vpt.training import TrainConfig

# Width 32 means GroupNorm's 32 groups hold one channel each, so every GroupNorm removes a per-channel constant
# and the UNet's output cannot depend on one added to its residual stream: the biases of the convolutions
# writing into that stream, and the key and value parts of the attention biases (a key bias shifts every logit
# of a row alike; a value bias, averaged with weights summing to 1, is such a constant). Their gradient is zero
# in exact arithmetic, so Adam turns rounding noise into lr-sized steps of random sign on both sides: they are
# left out of the weight bounds, and the test checks that upstream's values change vpt's output by nothing.
RESIDUAL_BIAS = re.compile(r"(input_blocks\.0\.0|in_layers\.2|out_layers\.3|skip_connection|proj_out)\.bias$")
HEADS = 2
# The convolution weights before those GroupNorms have a direction that only moves the per-channel mean, which
# gets no gradient either; its rounding noise leaves differences up to 5e-5 of the tensor's scale (measured)
# while the loss agrees to 2e-7, so the weights are held to 1e-4 rather than WEIGHT_RTOL (1e-5).
PVDM_WEIGHT_RTOL = 10 * WEIGHT_RTOL


def _inert(name: str, value: torch.Tensor) -> torch.Tensor:
    """Mask of the entries of `name` the network's output does not depend on (see above)."""
    mask = torch.zeros_like(value, dtype=torch.bool)
    if RESIDUAL_BIAS.search(name):
        mask[:] = True
    elif name.endswith("qkv.bias"):  # per head [q | k | v], as upstream's legacy attention
        mask.view(HEADS, 3, -1)[:, 1:] = True
    return mask


def _without_inert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value[~_inert(name, value)] for name, value in state.items() if not _inert(name, value).all()}


def _inert_effect(unet: torch.nn.Module, upstream: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> float:
    """How much the output changes (relative, eval mode) when `unet` takes upstream's values of the inert entries."""
    ours = unet.state_dict()
    spliced = {name: torch.where(_inert(name, value), upstream[name], value) for name, value in ours.items()}
    return splice_effect(unet, spliced, inputs)


def _weights(record: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return convert_upstream_unet({k.removeprefix(prefix): v for k, v in record.items() if k.startswith(prefix)})


def test_twenty_training_steps_match_upstream_latent_ddpm(tmp_path):
    record = load_file(fixture("pvdm", "training.safetensors"))
    final = _weights(load_file(fixture("pvdm", "training.final.safetensors")), "final.")
    ema = _weights(load_file(fixture("pvdm", "training.ema.safetensors")), "ema.")
    seed, batch_size, lr, cond_prob, ema_every, ema_decay = record["settings"].tolist()
    model = PVDM(  # the recorder's UNet: upstream's 32 x 32 + 16 x 32 + 16 x 32 planes, width 32, one level
        PVDMConfig(
            model_channels=32,
            channel_mult=[1],
            num_res_blocks=1,
            attention_resolutions=[1],
            num_heads=2,
            cond_model=True,
            cond_prob=cond_prob,
        )
    )
    model.unet.load_state_dict(_weights(record, "initial."))
    train_cfg = TrainConfig(  # configs/pvdm/ucf101.yaml's train section, with the recording's EMA cadence
        max_steps=len(record["losses"]),
        batch_size=int(batch_size),
        lr=lr,
        weight_decay=0.01,
        grad_clip=0.0,
        precision="no",
        ema_decay=ema_decay,
        ema_every=int(ema_every),
        ema_offset=1,
        ema_warmup=True,
        seed=int(seed),
        log_every=1,
        checkpoint_every=len(record["losses"]),
    )
    latents = record["batches"].float() / 127.5 - 1  # upstream's normalisation of its loader's bytes
    batches = latents.squeeze(-2)  # (steps, B, clips, c, L)

    losses, _, calls = replay(model, model.unet, batches, train_cfg, tmp_path / "run")

    noisy, cond, timesteps = (torch.stack(inputs) for inputs in zip(*calls))  # per step
    conditioned = cond.flatten(1).any(dim=1)
    assert torch.equal(conditioned, record["draws.conditioned"])
    assert torch.equal(timesteps, record["draws.timesteps"])
    torch.testing.assert_close(noisy.double().sum(dim=(1, 2, 3)), record["draws.noisy_sum"], rtol=1e-6, atol=1e-2)
    assert torch.equal(cond[conditioned], batches[conditioned][:, :, 0])  # the condition is the first clip
    loss_error = largest_loss_error(losses, record["losses"])
    errors = weight_errors(_without_inert(model.unet.state_dict()), _without_inert(final))
    averaged = trained_ema(tmp_path / "run", "unet.")
    ema_errors = weight_errors(_without_inert(averaged), _without_inert(ema))
    worst, worst_ema = max(errors, key=errors.get), max(ema_errors, key=ema_errors.get)
    inert = _inert_effect(model.unet, final, calls[-1])
    print(
        f"\nloss {loss_error:.1e}, weights {errors[worst]:.1e} ({worst}), EMA {ema_errors[worst_ema]:.1e} "
        f"({worst_ema}), inert entries {inert:.1e} of the output"
    )
    assert loss_error <= LOSS_RTOL
    assert errors[worst] <= PVDM_WEIGHT_RTOL, worst
    assert ema_errors[worst_ema] <= PVDM_WEIGHT_RTOL, worst_ema
    assert inert <= 1e-5
