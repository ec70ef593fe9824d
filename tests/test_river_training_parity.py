"""20 optimiser steps of vpt's training loop against upstream RIVER's own training code.

The fixtures (tests/fixtures/river/record_training.py) hold upstream's initial and final regressor
weights, the batches it trained on, its per-step losses and learning rates, and the draws its loss made
(x_t, frame distances, flow times). Here the same weights and batches go through `vpt.training.train` — the
loop `vpt train` runs — with a `train:` section set to upstream's optimiser and schedule. The draws are not
injected: River.loss and the regressor's dropout take them from the global generator in upstream's order,
and the loop seeds it with `train.seed` as upstream's training_loop seeds it with --random-seed; the
recorded draws are compared to prove that.
"""

from __future__ import annotations

import pytest
import torch
from fixture_paths import fixture
from safetensors.torch import load_file
from torch.utils.data import Dataset

from vpt.models.river import River, RiverConfig
from vpt.models.uvit import convert_upstream_regressor
from vpt.runs import Run
from vpt.training import TrainConfig, train
from vpt.training.sampler import ResumableSampler, SampleKey

LOSS_RTOL = 1e-4  # per step, relative
WEIGHT_RTOL = 1e-5  # per tensor, of the largest upstream value in it


def _recorded(head: str) -> dict[str, torch.Tensor]:
    return load_file(fixture("river", f"training_{head}.safetensors"))


def _prefixed(record: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return convert_upstream_regressor({k.removeprefix(prefix): v for k, v in record.items() if k.startswith(prefix)})


class RecordedBatches(Dataset):
    """Upstream's batches, placed so that the loop's sampler (seeded by `seed`) hands them out in order."""

    def __init__(self, batches: torch.Tensor, seed: int):  # (steps, B, T, c, h, w)
        clips = batches.flatten(0, 1)  # (steps * B, T, c, h, w), in training order
        sampler = iter(ResumableSampler(len(clips), seed=seed))
        order = torch.tensor([next(sampler).index for _ in range(len(clips))])  # dataset item at each position
        self.clips = torch.empty_like(clips)
        self.clips[order] = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        return {"latents": self.clips[key.index]}  # (T, c, h, w)


@pytest.mark.parametrize("head", ["ln", "bn"])
def test_twenty_training_steps_match_upstream_trainer(tmp_path, head):
    record = _recorded(head)
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
    model.regressor.load_state_dict(_prefixed(record, "initial."))
    train_cfg = TrainConfig(  # upstream's Trainer.init_optimizer, and nothing else
        max_steps=int(steps),
        batch_size=int(batch_size),
        lr=lr,
        weight_decay=weight_decay,
        betas=[0.9, 0.999],
        lr_schedule="polynomial",
        lr_power=0.5,
        min_lr_ratio=1e-7 / lr,  # transformers' lr_end
        warmup_steps=int(warmup),
        warmup_from_zero=True,
        grad_clip=0.0,
        precision="no",
        seed=int(seed),
        log_every=1,
        checkpoint_every=int(steps),
    )
    draws = []
    model.regressor.register_forward_pre_hook(lambda module, args: draws.append([a.detach() for a in args]))

    train(model, RecordedBatches(record["batches"], int(seed)), train_cfg, Run.open(tmp_path / "run"))

    noisy, _, _, distances, times = (torch.stack(d) for d in zip(*draws))
    assert torch.equal(distances, record["draws.distances"])
    torch.testing.assert_close(times, record["draws.timestamps"], rtol=0, atol=0)
    torch.testing.assert_close(noisy, record["draws.noisy"], rtol=1e-5, atol=1e-5)

    metrics = [m for m in Run(tmp_path / "run").read_metrics() if "loss" in m]
    losses = torch.tensor([m["loss"] for m in metrics], dtype=torch.float64)
    expected_losses = record["losses"].double()
    loss_error = ((losses - expected_losses).abs() / expected_losses).max().item()
    lr_error = (torch.tensor([m["lr"] for m in metrics], dtype=torch.float64) - record["learning_rates"]).abs().max()
    assert lr_error.item() <= 1e-12 * lr

    final = model.regressor.state_dict()
    expected = _prefixed(record, "final.")
    assert final.keys() == expected.keys()
    weight_errors = {
        name: _relative_error(final[name], value, _query_and_value if name.endswith("attn.qkv.bias") else None)
        for name, value in expected.items()
        if value.is_floating_point()
    }
    worst = max(weight_errors, key=weight_errors.get)
    print(f"\n{head}: largest loss error {loss_error:.2e}; largest weight error {weight_errors[worst]:.2e} ({worst})")
    assert loss_error <= LOSS_RTOL
    assert weight_errors[worst] <= WEIGHT_RTOL, worst
    for name, value in expected.items():
        if not value.is_floating_point():  # BatchNorm's num_batches_tracked
            assert torch.equal(final[name], value), name

    # The key bias: its gradient is 0 in exact arithmetic (adding q.b to every logit of a row leaves the
    # softmax unchanged), so both sides see rounding noise that Adam rescales into lr-sized steps of random
    # sign. It differs from upstream's by about its own size, and the network does not depend on it.
    model.regressor.eval()
    inputs = [d[-1] for d in zip(*draws)]  # the last step's regressor inputs
    with torch.no_grad():
        ours = model.regressor(*inputs)
        model.regressor.load_state_dict({**final, **_with_upstream_key_bias(final, expected)})
        with_upstream_key_bias = model.regressor(*inputs)
    key_bias_effect = ((ours - with_upstream_key_bias).norm() / ours.norm()).item()
    print(f"{head}: upstream's key biases instead of vpt's change the output by {key_bias_effect:.1e}")
    assert key_bias_effect <= 1e-5  # rounding: the same shift added to every logit of a row


def _query_and_value(bias: torch.Tensor) -> torch.Tensor:
    """The query and value thirds of a packed q/k/v bias (3D,) -> (2D,)."""
    query, _, value = bias.chunk(3)
    return torch.cat([query, value])


def _relative_error(ours: torch.Tensor, upstream: torch.Tensor, part=None) -> float:
    """Largest elementwise difference over the largest upstream magnitude in the tensor (or its `part`)."""
    if part is not None:
        ours, upstream = part(ours), part(upstream)
    return ((ours.double() - upstream.double()).abs().max() / upstream.double().abs().max()).item()


def _with_upstream_key_bias(ours: dict, upstream: dict) -> dict[str, torch.Tensor]:
    spliced = {}
    for name, bias in ours.items():
        if name.endswith("attn.qkv.bias"):
            query, _, value = bias.chunk(3)
            spliced[name] = torch.cat([query, upstream[name].chunk(3)[1], value])
    return spliced
