"""A tiny model and dataset for exercising the shared training loop (imported by tests and by the
multi-process script below). The loss draws noise from the global torch RNG and the dataset draws
from the per-sample seed, so exact resume needs both the RNG states and the sampler position."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from vpt.runs import Run
from vpt.training import TrainConfig, train
from vpt.training.sampler import SampleKey


class TinyDataset(torch.utils.data.Dataset):
    def __init__(self, num_items: int = 37):
        generator = torch.Generator().manual_seed(123)
        self.inputs = torch.randn(num_items, 8, generator=generator)  # (N, 8)
        self.targets = self.inputs @ torch.randn(8, 2, generator=generator)  # (N, 2)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, key):
        index, seed = (key.index, key.seed) if isinstance(key, SampleKey) else (key, 0)
        jitter = torch.randn(8, generator=torch.Generator().manual_seed(seed)) * 0.01
        return {"x": self.inputs[index] + jitter, "y": self.targets[index]}


class TinyModel(nn.Module):
    def __init__(self, *, poison_at: int | None = None, kill_at: int | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
        self.poison_at, self.kill_at, self.calls = poison_at, kill_at, 0

    def loss(self, batch):
        self.calls += 1
        if self.kill_at is not None and self.calls >= self.kill_at:
            raise KeyboardInterrupt("simulated kill")
        noise = torch.randn_like(batch["y"]) * 0.1  # global RNG: must be restored on resume
        mse = ((self.net(batch["x"]) - batch["y"] - noise) ** 2).mean()
        if self.poison_at is not None and self.calls >= self.poison_at:
            mse = mse * float("nan")
        return {"loss": mse, "mse": mse.detach()}


def tiny_config(**overrides) -> TrainConfig:
    values = dict(
        max_steps=8,
        batch_size=4,
        lr=1e-2,
        log_every=1,
        checkpoint_every=2,
        keep_last=2,
        ema_decay=0.9,
        warmup_steps=2,
        lr_schedule="cosine",
        seed=7,
    )
    values.update(overrides)
    return TrainConfig(**values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    parser.add_argument("--kill-at", type=int, default=None, help="raise in the Nth loss call")
    args = parser.parse_args()
    torch.manual_seed(0)
    run = Run.open(Path(args.run))
    try:
        train(
            TinyModel(kill_at=args.kill_at),
            TinyDataset(),
            tiny_config(max_steps=args.max_steps),
            run,
            checkpoint_on_ctrl_c=True,
        )
    except KeyboardInterrupt:
        raise SystemExit(130)


if __name__ == "__main__":
    main()
