"""20 optimiser steps of vpt's training loop against upstream RSVP's own denoiser-training step (`mosoDDPM`),
value clipping and EMA included (tests/recorded_training.py says how a recording is replayed;
tests/fixtures/rsvp/README.md how it was made)."""

from __future__ import annotations

import re

import torch
from fixture_paths import fill_seeded, fixture
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

from vpt.models.rsvp import RSVPM, RSVPMConfig
from vpt.training import TrainConfig

# Width 32 means GroupNorm's 32 groups hold one channel each (as in PVDM's training test), so every GroupNorm
# removes a per-channel constant: the biases of the convolutions writing into the residual stream, and the
# bias of a transformer's last layer (its MLP output, which reaches the stream through proj_out), get a zero
# gradient in exact arithmetic, so Adam turns rounding noise into lr-sized steps of random sign on both sides.
# They are left out of the weight bounds, and the test checks that upstream's values of them change vpt's
# output by nothing.
RESIDUAL_BIAS = re.compile(
    r"(input_blocks\.0\.0|in_layers\.2|out_layers\.3|skip_connection|proj_out|ff\.net\.2)\.bias$"
)
# The convolution weights before those GroupNorms have a direction that only moves the per-channel mean, which
# gets no gradient either; its rounding noise leaves differences up to 9.7e-5 of the tensor's scale (measured,
# middle_block.2.out_layers.3.weight; every other tensor within 2e-5) while the loss agrees to 1.5e-7, so the
# weights are held to 2e-4 rather than WEIGHT_RTOL (1e-5).
RSVP_WEIGHT_RTOL = 20 * WEIGHT_RTOL


def _without_inert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value for name, value in state.items() if not RESIDUAL_BIAS.search(name)}


def _inert_effect(unet: torch.nn.Module, upstream: dict[str, torch.Tensor], inputs: list[torch.Tensor]) -> float:
    """How much the output changes (relative, eval mode) when `unet` takes upstream's values of the inert biases."""
    ours = unet.state_dict()
    spliced = {name: upstream[name] if RESIDUAL_BIAS.search(name) else value for name, value in ours.items()}
    return splice_effect(unet, spliced, inputs)


def test_twenty_training_steps_match_upstream_moso_ddpm(tmp_path):
    record = load_file(fixture("rsvp", "training.safetensors"))
    seed, batch_size, lr, ema_every, ema_decay, clip_value = record["settings"].tolist()
    model = RSVPM(  # the recorder's MosoModel: motion width 4 on a 4 x 4 grid, 6 frames, width 32, one level
        RSVPMConfig(
            latent_channels=4,
            latent_size=4,
            clip_frames=6,
            given_frames=3,  # upstream's random_mask: the first half
            model_channels=32,
            channel_mult=[1],
            num_res_blocks=1,
            attention_resolutions=[1],
            num_heads=2,
        )
    )
    assert torch.allclose(fill_seeded(model.unet, 6), record["weights.parameter_sums"], rtol=1e-6, atol=1e-6)
    initial = {name: value.clone() for name, value in model.unet.state_dict().items()}
    final = {k.removeprefix("final."): initial[k.removeprefix("final.")] + v for k, v in _load("final").items()}
    ema = {k.removeprefix("ema."): initial[k.removeprefix("ema.")] + v for k, v in _load("ema").items()}
    train_cfg = TrainConfig(  # configs/pvdm/rsvp_m_ucf101.yaml's train section, with the recording's cadences
        max_steps=len(record["losses"]),
        batch_size=int(batch_size),
        lr=lr,
        weight_decay=0.01,
        grad_clip=clip_value,
        grad_clip_mode="value",
        precision="no",
        ema_decay=ema_decay,
        ema_every=int(ema_every),
        ema_offset=1,
        ema_warmup=True,
        seed=int(seed),
        log_every=1,
        checkpoint_every=len(record["losses"]),
    )

    batches = {"x": record["x"], "context": record["context"]}
    losses, _, calls = replay(model, model.unet, batches, train_cfg, tmp_path / "run")

    noisy, mask, timesteps, context = (torch.stack(inputs) for inputs in zip(*calls))  # per step
    assert torch.equal(timesteps, record["draws.timesteps"])
    torch.testing.assert_close(noisy.double().sum(dim=(1, 2, 3, 4, 5)), record["draws.noisy_sum"], rtol=1e-6, atol=1e-3)
    assert torch.equal(context, record["context"])
    assert mask[:, :, :3].all() and not mask[:, :, 3:].any()
    assert record["clipped"].min() > 0  # value clipping acted at every step
    loss_error = largest_loss_error(losses, record["losses"])
    errors = weight_errors(_without_inert(model.unet.state_dict()), _without_inert(final))
    averaged = trained_ema(tmp_path / "run", "unet.")
    ema_errors = weight_errors(_without_inert(averaged), _without_inert(ema))
    worst, worst_ema = max(errors, key=errors.get), max(ema_errors, key=ema_errors.get)
    inert = _inert_effect(model.unet, final, calls[-1])
    print(
        f"\nloss {loss_error:.1e}, weights {errors[worst]:.1e} ({worst}), EMA {ema_errors[worst_ema]:.1e} "
        f"({worst_ema}), inert biases {inert:.1e} of the output"
    )
    assert loss_error <= LOSS_RTOL
    assert errors[worst] <= RSVP_WEIGHT_RTOL, worst
    assert ema_errors[worst_ema] <= RSVP_WEIGHT_RTOL, worst_ema
    assert inert <= 1e-5


def _load(kind: str) -> dict[str, torch.Tensor]:
    """Upstream's final weights or EMA, stored as differences from the initial weights."""
    return load_file(fixture("rsvp", f"training.{kind}.safetensors"))
