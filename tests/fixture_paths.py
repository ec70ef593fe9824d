"""Upstream reference files kept in tests/fixtures/<backend>/ (each folder's README.md says where they come from)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"


def fixture(backend: str, name: str) -> Path:
    """tests/fixtures/<backend>/<name>; a missing file fails the test, since a parity test that skips proves nothing."""
    path = FIXTURES_DIR / backend / name
    if not path.exists():
        pytest.fail(
            f"fixture file missing: tests/fixtures/{backend}/{name} (it is part of the repository; restore it "
            f"with git)",
            pytrace=False,
        )
    return path


def key_shapes(backend: str, name: str) -> dict[str, tuple[int, ...]]:
    """A recorded key list (`key<TAB>shape<TAB>dtype` lines, shapes as (..) or [..]) -> {key: shape}."""
    shapes = {}
    for line in fixture(backend, name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.strip("()[]").split(",") if s.strip())
    return shapes


@torch.no_grad()
def fill_seeded(module: nn.Module, seed: int) -> torch.Tensor:
    """Overwrite every parameter of `module` by a fixed rule, so that a recording and a test build the same
    random network without storing its weights; returns each parameter's sum (float64, in the rule's order)
    for a recording to keep and a test to compare.

    Parameters are visited by name in sorted order, one `torch.Generator` seeded `seed` drawing a standard
    normal tensor of each one's shape: tensors of two or more dimensions become 0.5 draw / sqrt(fan-in) (elements
    per output row), 1-D `...weight` (norm gains) 1 + 0.1 draw, other 1-D tensors (biases, shifts) 0.1 draw.
    Buffers keep their constructed values."""
    generator = torch.Generator().manual_seed(seed)
    sums = []
    for name, parameter in sorted(module.named_parameters()):
        draw = torch.randn(parameter.shape, generator=generator)
        if parameter.dim() >= 2:
            value = 0.5 * draw / math.sqrt(parameter[0].numel())
        elif name.endswith("weight"):
            value = 1.0 + 0.1 * draw
        else:
            value = 0.1 * draw
        parameter.copy_(value)
        sums.append(parameter.double().sum())
    return torch.stack(sums)
