"""LPIPS (Zhang et al. 2018, v0.1 linear heads) without torchvision, for metrics and as a training loss.

The backbone is an ImageNet VGG-16 (the usual choice for a perceptual *loss*) or AlexNet (the usual
choice for video-prediction *metrics*; numbers are not comparable across the two). Their `features`
stacks are written here with torchvision's parameter names, so torchvision's files load from a local
path (`vgg16-397923af.pth`, `alexnet-owt-7be5be79.pth`); the calibrated linear heads are read from the
installed `lpips` wheel by file path (importing `lpips` would import torchvision).

    d(x, y) = sum_l mean_hw || w_l * (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|) ||^2
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vpt.errors import VptError
from vpt.weights import read_state_dict

Net = Literal["vgg", "alex"]
SHIFT = (-0.030, -0.088, -0.188)  # LPIPS ScalingLayer: inputs in [-1, 1] -> ImageNet-normalised
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10

# torchvision `features` layouts: ("conv", in, out, kernel, stride, padding) | ("relu",) | ("pool", kernel, stride).
_VGG16 = [
    ("conv", 3, 64, 3, 1, 1),
    ("relu",),
    ("conv", 64, 64, 3, 1, 1),
    ("relu",),
    ("pool", 2, 2),
    ("conv", 64, 128, 3, 1, 1),
    ("relu",),
    ("conv", 128, 128, 3, 1, 1),
    ("relu",),
    ("pool", 2, 2),
    ("conv", 128, 256, 3, 1, 1),
    ("relu",),
    ("conv", 256, 256, 3, 1, 1),
    ("relu",),
    ("conv", 256, 256, 3, 1, 1),
    ("relu",),
    ("pool", 2, 2),
    ("conv", 256, 512, 3, 1, 1),
    ("relu",),
    ("conv", 512, 512, 3, 1, 1),
    ("relu",),
    ("conv", 512, 512, 3, 1, 1),
    ("relu",),
    ("pool", 2, 2),
    ("conv", 512, 512, 3, 1, 1),
    ("relu",),
    ("conv", 512, 512, 3, 1, 1),
    ("relu",),
    ("conv", 512, 512, 3, 1, 1),
    ("relu",),
]
_ALEXNET = [
    ("conv", 3, 64, 11, 4, 2),
    ("relu",),
    ("pool", 3, 2),
    ("conv", 64, 192, 5, 1, 2),
    ("relu",),
    ("pool", 3, 2),
    ("conv", 192, 384, 3, 1, 1),
    ("relu",),
    ("conv", 384, 256, 3, 1, 1),
    ("relu",),
    ("conv", 256, 256, 3, 1, 1),
    ("relu",),
]


@dataclass(frozen=True)
class BackboneSpec:
    layers: list
    taps: tuple[int, ...]  # indices in `features` after which LPIPS reads an activation (relu outputs)
    channels: tuple[int, ...]
    torchvision_file: str
    env: str
    min_size: int  # smallest frame side the pools accept


BACKBONES: dict[str, BackboneSpec] = {
    "vgg": BackboneSpec(
        _VGG16, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), "vgg16-397923af.pth", "VPT_LPIPS_VGG", 16
    ),
    "alex": BackboneSpec(
        _ALEXNET, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), "alexnet-owt-7be5be79.pth", "VPT_LPIPS_ALEX", 31
    ),
}


def _features(layers: list) -> nn.Sequential:
    modules = []
    for spec in layers:
        if spec[0] == "conv":
            _, cin, cout, kernel, stride, padding = spec
            modules.append(nn.Conv2d(cin, cout, kernel, stride, padding))
        elif spec[0] == "relu":
            modules.append(nn.ReLU(inplace=False))
        else:
            modules.append(nn.MaxPool2d(spec[1], spec[2]))
    return nn.Sequential(*modules)


class LPIPS(nn.Module):
    """Frozen LPIPS: (N, 3, H, W) x2 in [-1, 1] -> (N,) distances. Gradients flow to the inputs, so it
    works as a perceptual loss; the module's own parameters never train."""

    def __init__(self, net: Net = "vgg"):
        super().__init__()
        spec = BACKBONES[net]
        self.net, self.taps = net, spec.taps
        self.features = _features(spec.layers[: spec.taps[-1] + 1])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in spec.channels)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LPIPS:  # frozen: dropout/BN-free, stays in eval whatever the caller does
        return super().train(False)

    def activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.shift) / self.scale  # (N, 3, H, W)
        found = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                found.append(x)
        return found

    def forward(self, a: torch.Tensor, b: torch.Tensor, *, head_dropout: float = 0.0) -> torch.Tensor:
        """`head_dropout`: dropout in front of each linear head, drawn from the global generator (the `lpips`
        package's heads carry it, active when an upstream trainer leaves the network in training mode)."""
        if min(a.shape[-2:]) < BACKBONES[self.net].min_size:
            raise VptError(
                f"LPIPS-{self.net} needs frames of at least {BACKBONES[self.net].min_size} px, got "
                f"{tuple(a.shape[-2:])}; resize them (MCVD scores LPIPS at 128x128) or drop LPIPS"
            )
        distance = 0.0
        for feat_a, feat_b, lin in zip(self.activations(a), self.activations(b), self.lins):
            unit_a = feat_a / (feat_a.square().sum(dim=1, keepdim=True).sqrt() + NORM_EPS)
            unit_b = feat_b / (feat_b.square().sum(dim=1, keepdim=True).sqrt() + NORM_EPS)
            difference = (unit_a - unit_b).square()  # (N, C_l, H_l, W_l)
            if head_dropout:
                difference = F.dropout(difference, head_dropout, training=True)
            distance = distance + lin(difference).mean(dim=(1, 2, 3))  # (N,)
        return distance


def lpips_heads_path(net: Net = "vgg") -> Path | None:
    """The v0.1 linear heads shipped in the installed `lpips` wheel (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"
    return path if path.is_file() else None


def find_backbone(net: Net = "vgg", path: str | os.PathLike | None = None) -> Path | None:
    """`path`, else $VPT_LPIPS_VGG / $VPT_LPIPS_ALEX, else torchvision's download cache; None if absent."""
    spec = BACKBONES[net]
    chosen = path or os.environ.get(spec.env)
    if chosen:
        return Path(chosen).expanduser()
    torch_home = Path(
        os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "torch"
    )
    cached = torch_home.expanduser() / "hub" / "checkpoints" / spec.torchvision_file
    return cached if cached.is_file() else None


def missing_weights_message(net: Net = "vgg") -> str:
    spec = BACKBONES[net]
    return (
        f"LPIPS needs the ImageNet {'VGG-16' if net == 'vgg' else 'AlexNet'} weights: put torchvision's "
        f"{spec.torchvision_file} somewhere and pass --lpips-weights PATH or set {spec.env}"
    )


def load_lpips(
    net: Net = "vgg",
    *,
    backbone_path: str | os.PathLike | None = None,
    heads_path: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> LPIPS:
    """Build a frozen LPIPS from local files; raises VptError naming the missing file otherwise."""
    if net not in BACKBONES:
        raise VptError(f"unknown LPIPS backbone '{net}'; choose vgg or alex")
    backbone = find_backbone(net, backbone_path)
    if backbone is None or not backbone.is_file():
        where = f" ({backbone} does not exist)" if backbone is not None else ""
        raise VptError(missing_weights_message(net) + where)
    heads = Path(heads_path) if heads_path else lpips_heads_path(net)
    if heads is None or not heads.is_file():
        raise VptError(
            "LPIPS linear heads not found: `pip install --no-deps lpips` ships them (weights/v0.1/"
            f"{net}.pth), or pass heads_path"
        )
    model = LPIPS(net)
    state = read_state_dict(backbone)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    wanted = model.features.state_dict()
    missing = [k for k in wanted if k not in features]
    if missing:
        raise VptError(f"{backbone}: not a torchvision {net} state dict (missing features.{missing[0]})")
    model.features.load_state_dict({k: features[k] for k in wanted})
    head_state = read_state_dict(heads)  # keys lin{i}.model.1.weight (Dropout, Conv) in the lpips package
    try:
        for index, lin in enumerate(model.lins):
            lin.weight.copy_(head_state[f"lin{index}.model.1.weight"])
    except (KeyError, RuntimeError) as exc:
        raise VptError(f"{heads}: not LPIPS {net} linear heads ({exc})") from None
    return model.to(device)
