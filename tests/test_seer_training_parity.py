"""20 optimiser steps of vpt's training loop against upstream Seer's own training step (tests/recorded_training.py
says how a recording is replayed; tests/fixtures/seer/README.md how it was made)."""

from __future__ import annotations

import json

import torch
from einops import rearrange
from fixture_paths import fill_seeded, fixture
from recorded_training import LOSS_RTOL, WEIGHT_RTOL, largest_loss_error, replay, weight_errors
from safetensors import safe_open
from safetensors.torch import load_file

from vpt.models.seer import Seer, SeerConfig
from vpt.models.seer.backend import FSTextSection, TextSection, UNetSection
from vpt.training import TrainConfig

UNET_SEED, FSTEXT_SEED, CLIP_SEED, DATA_SEED = 9, 10, 11, 5  # the recording's fill_seeded and batch seeds
# The last temporal block's output bias adds one constant per channel, which the output GroupNorm (32 groups of one
# channel at this width) removes: its gradient is rounding noise in both trainers, which Adam turns into lr-sized
# steps of random sign. It is compared by its effect on the output instead (`_normalised_bias_effect`).
NORMALISED_BIAS = "up_blocks.3.temporal_attentions.1.proj_out.bias"


def _normalised_bias_effect(unet, upstream_bias: torch.Tensor, inputs: list[torch.Tensor]) -> float:
    """Relative change of the UNet's output (training call) when its last output bias takes upstream's value."""
    bias = unet.get_submodule(NORMALISED_BIAS.rsplit(".", 1)[0]).bias
    with torch.no_grad():
        before = unet(*inputs, reference_frames=2)
        ours = bias.detach().clone()
        bias.copy_(upstream_bias)
        after = unet(*inputs, reference_frames=2)
        bias.copy_(ours)
    return ((before - after).norm() / before.norm()).item()


def test_twenty_training_steps_match_upstream_train_py(tmp_path):
    path = fixture("seer", "training.safetensors")
    record = load_file(path)
    with safe_open(path, "pt") as recorded:
        prompts = json.loads(recorded.metadata()["prompts"])
    seed, batch, accum, steps, warmup, reference, predicted, lr, weight_decay, max_grad_norm = record[
        "settings"
    ].tolist()
    frames, micro_batches = int(reference + predicted), int(steps * accum)
    model = Seer(
        SeerConfig(
            vae="none",  # 3-channel latents pass straight to the UNet, as the recording fed them
            frames=frames,
            context_frames=int(reference),
            unet=UNetSection(block_out_channels=[32, 32, 32, 32], layers_per_block=1, heads=4),
            fstext=FSTextSection(layers=1, heads=2, pos_frames=frames),
            text=TextSection(hidden_size=32, layers=1, heads=2, max_length=8),
            clip_fstext=False,  # upstream clips the UNet's gradient alone
        )
    )
    torch.testing.assert_close(fill_seeded(model.unet, UNET_SEED), record["weights.unet_sums"], rtol=1e-12, atol=0)
    torch.testing.assert_close(
        fill_seeded(model.fstext, FSTEXT_SEED), record["weights.fstext_sums"], rtol=1e-12, atol=0
    )
    fill_seeded(model.text_encoder, CLIP_SEED)
    initial_pos_embed = model.fstext.pos_embed.detach().clone()
    videos = torch.randn(
        micro_batches, int(batch), 3, frames, 16, 16, generator=torch.Generator().manual_seed(DATA_SEED)
    )
    torch.testing.assert_close(videos.double().sum()[None], record["videos.sum"], rtol=1e-12, atol=0)

    train_cfg = TrainConfig(  # train.py's optimiser, accumulation, clipping and schedule as accelerate steps it
        max_steps=int(steps),
        batch_size=int(batch),
        grad_accum=int(accum),
        lr=lr,
        weight_decay=weight_decay,
        betas=[0.9, 0.999],
        lr_schedule="cosine",
        warmup_steps=int(warmup * accum),
        warmup_from_zero=True,
        lr_schedule_steps=int(steps * accum),
        grad_clip=max_grad_norm,
        precision="no",
        seed=int(seed),
        log_every=1,
        checkpoint_every=int(steps),
    )
    batches = rearrange(videos, "n b c f h w -> n b f c h w")
    losses, learning_rates, calls = replay(model, model.unet, batches, train_cfg, tmp_path / "run", prompts=prompts)

    times = torch.stack([inputs[1] for inputs in calls])  # (micro-batches, B)
    assert torch.equal(times, record["draws.timesteps"])
    torch.testing.assert_close(calls[0][0], rearrange(record["draws.noisy[0]"], "b c f h w -> b f c h w"))
    torch.testing.assert_close(learning_rates, record["learning_rates"], rtol=1e-6, atol=0)
    loss_error = largest_loss_error(losses, record["losses"].view(-1, int(accum)).mean(1))  # logged per update
    ours = {f"unet.{k}": v.detach() for k, v in model.unet.named_parameters() if ".temporal_attentions." in k}
    ours |= {f"fstext.{k}": v for k, v in model.fstext.state_dict().items() if k != "pos_embed"}
    ours["fstext.pos_embed[:tokens]"] = model.fstext.pos_embed[:, :, :8].detach()
    upstream = {k.removeprefix("final."): v for k, v in record.items() if k.startswith("final.")}
    tail_ratio = model.fstext.pos_embed[:, :, 8:].detach().double() / initial_pos_embed[:, :, 8:].double()
    upstream.pop("fstext.pos_embed[tokens:]/initial")
    errors = weight_errors(ours, upstream)
    inert = _normalised_bias_effect(model.unet, upstream[f"unet.{NORMALISED_BIAS}"], calls[-1])
    normalised_error = errors.pop(f"unet.{NORMALISED_BIAS}")
    worst = max(errors, key=errors.get)
    print(
        f"\nloss {loss_error:.1e}, weights {errors[worst]:.1e} ({worst}); {NORMALISED_BIAS} {normalised_error:.1e}, "
        f"its effect {inert:.1e} of the output"
    )
    assert loss_error <= LOSS_RTOL
    assert errors[worst] <= WEIGHT_RTOL, worst
    assert inert <= 1e-5  # rounding: the GroupNorm removes the bias whatever its value
    # positions past the prompt's tokens get no gradient: AdamW's weight decay alone shrinks them, as upstream
    torch.testing.assert_close(
        tail_ratio, record["final.fstext.pos_embed[tokens:]/initial"].expand_as(tail_ratio), rtol=1e-6, atol=0
    )
