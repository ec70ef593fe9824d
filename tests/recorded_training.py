"""Replaying a training trajectory recorded with upstream's own trainer through `vpt.training.train`.

The recordings (tests/fixtures/<backend>/record_training.py) hold upstream's initial and final weights, the
batches it trained on, its per-step losses and learning rates and the states its loss fed the network.
vpt's loop — the one `vpt train` runs — gets the same weights and batches and a `train:` section set to
upstream's optimiser and schedule. The random draws are not injected: the backends' losses and the
U-ViT's dropout take them from the global generator in upstream's order, and the loop seeds it with
`train.seed` as upstream's training_loop seeds it with --random-seed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from vpt.runs import Run
from vpt.training import TrainConfig, train
from vpt.training.sampler import ResumableSampler, SampleKey
from vpt.weights import read_weights

LOSS_RTOL = 1e-4  # per step, relative
WEIGHT_RTOL = 1e-5  # per tensor, of the largest upstream value in it


class RecordedBatches(Dataset):
    """Upstream's batches, placed so that the loop's sampler (seeded by `seed`) hands them out in order."""

    def __init__(
        self,
        batches: torch.Tensor | dict[str, torch.Tensor],
        seed: int,
        labels: torch.Tensor | None = None,
        prompts: list[str] | None = None,
    ):
        # batches (steps, B, T, c, h, w) latents, or {name: (steps, B, ...)} batch entries as the backend's loss
        # reads them; labels (steps, B) class indices, prompts steps * B texts, when upstream trained on them
        if isinstance(batches, dict):
            recorded = {name: values.flatten(0, 1) for name, values in batches.items()}  # (steps * B, ...)
        else:
            recorded = {"latents": batches.flatten(0, 1)}  # (steps * B, T, c, h, w), in training order
        if labels is not None:
            recorded["label"] = labels.flatten()  # (steps * B,)
        count = len(next(iter(recorded.values())))
        sampler = iter(ResumableSampler(count, seed=seed))
        order = torch.tensor([next(sampler).index for _ in range(count)])  # dataset item at each position
        self.items = {}
        for key, values in recorded.items():
            self.items[key] = torch.empty_like(values)
            self.items[key][order] = values
        if prompts is not None:
            self.items["text"] = [""] * count
            for position, prompt in zip(order.tolist(), prompts):
                self.items["text"][position] = prompt

    def __len__(self) -> int:
        return len(next(iter(self.items.values())))

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor]:
        return {name: values[key.index] for name, values in self.items.items()}  # e.g. latents (T, c, h, w)


def upstream_trainer_config(
    *, steps: int, batch_size: int, lr: float, weight_decay: float, warmup: int, lr_end: float, seed: int
) -> TrainConfig:
    """The `train:` section of upstream's Trainer.init_optimizer (RIVER and NeuralSDE share it): AdamW with
    betas (0.9, 0.999), transformers' polynomial schedule (power 0.5, warm-up from lr 0), no clipping, fp32."""
    return TrainConfig(
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        betas=[0.9, 0.999],
        lr_schedule="polynomial",
        lr_power=0.5,
        min_lr_ratio=lr_end / lr,
        warmup_steps=warmup,
        warmup_from_zero=True,
        grad_clip=0.0,
        precision="no",
        seed=seed,
        log_every=1,
        checkpoint_every=steps,
    )


def published_train_config(section: dict, *, steps: int, seed: int, **recording) -> TrainConfig:
    """A shipped config's `train:` section (its optimiser, schedule, clipping) at a recording's size: the
    recording's steps, seed and `recording` settings (batch size, accumulation, lr ...), fp32, a log line per
    step, no validation or samples, one checkpoint at the end."""
    return TrainConfig(
        **{
            **section,
            **recording,
            "max_steps": steps,
            "precision": "no",
            "seed": seed,
            "log_every": 1,
            "val_every": 0,
            "sample_every": 0,
            "checkpoint_every": steps,
        }
    )


def prefixed(record: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a recording under `prefix`, with the prefix removed."""
    return {key.removeprefix(prefix): value for key, value in record.items() if key.startswith(prefix)}


def trained_ema(run_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The EMA weights of a run's newest checkpoint, named as inside the network `prefix` names (e.g. "unet.")."""
    averaged = read_weights(Run(run_dir).latest_checkpoint() / "ema.safetensors")
    return prefixed(averaged, prefix)


def part_errors(owner: nn.Module, upstream: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """`weight_errors` of each named submodule of `owner` (e.g. autoencoder, discriminator) against upstream's
    final weights of that part, keyed "part.tensor"."""
    return {
        f"{part}.{name}": error
        for part, weights in upstream.items()
        for name, error in weight_errors(getattr(owner, part).state_dict(), weights).items()
    }


def replay(
    model: nn.Module,
    network: nn.Module,
    batches: torch.Tensor | dict[str, torch.Tensor],
    cfg: TrainConfig,
    run_dir: Path,
    labels: torch.Tensor | None = None,
    prompts: list[str] | None = None,
):
    """Train `model` with vpt's loop; returns the per-step (losses, learning rates) it logged and the
    positional inputs `network` received at every call (non-tensor arguments, such as a None label, as given)."""
    calls = []
    network.register_forward_pre_hook(
        lambda module, args: calls.append([a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    )
    train(model, RecordedBatches(batches, cfg.seed, labels, prompts), cfg, Run.open(run_dir))
    metrics = [m for m in Run(run_dir).read_metrics() if "loss" in m]
    losses = torch.tensor([m["loss"] for m in metrics], dtype=torch.float64)
    learning_rates = torch.tensor([m["lr"] for m in metrics], dtype=torch.float64)
    return losses, learning_rates, calls


def largest_loss_error(losses: torch.Tensor, upstream: torch.Tensor) -> float:
    upstream = upstream.double()
    return ((losses - upstream).abs() / upstream.abs()).max().item()


def weight_errors(ours: dict[str, torch.Tensor], upstream: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per floating tensor: largest difference over the largest upstream magnitude in it. Attention key
    biases (the middle third of a packed q/k/v bias) are left out: see `key_bias_effect`."""
    assert ours.keys() == upstream.keys()
    errors = {}
    for name, expected in upstream.items():
        if not expected.is_floating_point():
            assert torch.equal(ours[name], expected), name  # BatchNorm's num_batches_tracked
            continue
        mine = ours[name]
        if name.endswith("attn.qkv.bias"):
            mine, expected = _without_key_bias(mine), _without_key_bias(expected)
        errors[name] = ((mine.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
    return errors


def key_bias_effect(
    network: nn.Module, upstream: dict[str, torch.Tensor], inputs: list[torch.Tensor], **kwargs
) -> float:
    """How much the output changes (relative, eval mode) when `network` takes upstream's key biases
    (`kwargs` go to the network's call, as for `splice_effect`).

    A key bias gets a zero gradient in exact arithmetic (adding q.b to every logit of a row leaves the
    softmax unchanged), so both trainers see rounding noise that Adam rescales into lr-sized steps of random
    sign: the values differ by about their own size, and the network does not depend on them.
    """
    spliced = dict(network.state_dict())
    for name, bias in spliced.items():
        if name.endswith("attn.qkv.bias"):
            query, _, value = bias.chunk(3)
            spliced[name] = torch.cat([query, upstream[name].chunk(3)[1], value])
    return splice_effect(network, spliced, inputs, **kwargs)


def splice_effect(network: nn.Module, spliced: dict[str, torch.Tensor], inputs: list[torch.Tensor], **kwargs) -> float:
    """Relative change of `network(*inputs, **kwargs)` (eval mode) when it takes the state `spliced` (its own
    with some entries replaced by upstream's); its own state is restored afterwards."""
    ours = {name: value.clone() for name, value in network.state_dict().items()}
    network.eval()
    with torch.no_grad():
        before = network(*inputs, **kwargs)
        network.load_state_dict(spliced)
        after = network(*inputs, **kwargs)
    network.load_state_dict(ours)
    return ((before - after).norm() / before.norm()).item()


def _without_key_bias(bias: torch.Tensor) -> torch.Tensor:
    query, _, value = bias.chunk(3)  # (3D,) -> (2D,)
    return torch.cat([query, value])
