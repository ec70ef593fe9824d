"""Upstream reference files kept in tests/fixtures/<backend>/ (each folder's README.md says where they come from)."""

from __future__ import annotations

import math
import types
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


# torchvision's vgg16 `features` stack: the index and (in, out) channels of each 3x3 convolution
VGG16_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256))
VGG16_CONVS += ((17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512))


def seeded_vgg16_features(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ImageNet-free stand-in for torchvision's `vgg16-397923af.pth` (only the `features.*` keys LPIPS
    reads), by a fixed rule a recording and a test share: one `torch.Generator` seeded `seed` draws, conv by
    conv in index order, a standard normal weight scaled by sqrt(2 / fan-in) (He, so activations keep their
    size through 13 ReLU layers) and then a bias of 0.01 draw. float32, as torchvision's file, whatever the default
    dtype (a float64 default would draw other numbers)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, cin, cout in VGG16_CONVS:
        weight = torch.randn(cout, cin, 3, 3, generator=generator, dtype=torch.float32) * math.sqrt(2.0 / (cin * 9))
        state[f"features.{index}.weight"] = weight
        state[f"features.{index}.bias"] = 0.01 * torch.randn(cout, generator=generator, dtype=torch.float32)
    return state


def torchvision_stand_in(seed: int = 0) -> types.ModuleType:
    """A module to register as `torchvision` for an upstream LPIPS in a recording: its `models.vgg16(...)` (whatever
    the arguments, `pretrained=True` included) returns a module whose `features` is torchvision's VGG-16 stack
    (3x3 convolutions, in-place ReLUs, 2x2 max pools at 4, 9, 16, 23, 30) holding `seeded_vgg16_features(seed)`."""
    convs = {index: (cin, cout) for index, cin, cout in VGG16_CONVS}
    pools = (4, 9, 16, 23, 30)

    def vgg16(*args, **kwargs) -> nn.Module:
        layers = [
            nn.Conv2d(*convs[i], 3, padding=1) if i in convs else nn.MaxPool2d(2, 2) if i in pools else nn.ReLU(True)
            for i in range(31)
        ]
        network = nn.Module()
        network.features = nn.Sequential(*layers)
        network.load_state_dict(seeded_vgg16_features(seed))
        return network

    torchvision = types.ModuleType("torchvision")
    torchvision.models = types.SimpleNamespace(vgg16=vgg16)
    return torchvision
