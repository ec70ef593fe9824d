"""PVDM's projected autoencoder: a clip of k frames -> three 2-D latent planes, parameter names as upstream's
`ViTAutoencoder` so its released `model_last.pth` loads as it is.

    encoder   TimeSformer over patch tokens (B, k*h*w, C): per layer temporal attention, spatial
              attention, GEGLU feed-forward; rotary positions, fixed 8 heads x 64
    project   per plane a learned token + 4-layer transformer summarises one axis of the (C, k, h, w)
              cube (xy: time, yt: rows, xt: columns), then a 1x1 conv to `embed_dim` and tanh
    decode    1x1 convs back to C, broadcast-sum of the three planes into the cube, TimeSformer,
              transposed-conv unpatchify, 2*sigmoid - 1

Latents of one clip: (embed_dim, h*w + k*w + k*h) = [xy (h, w) | yt (k, w) | xt (k, h)], each plane
flattened row-major (upstream's `extract` layout; (4, 2048) for the released 256^2 x 16 model).
Unlike upstream, every size is derived from the config (upstream fixes 16 frames and a /8 grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from vpt.errors import ConfigError, VptError
from vpt.models.attention import attention
from vpt.models.autoencoders.base import Autoencoder, TrainOutput, count_indices

HEADS, HEAD_DIM = 8, 64  # TimeSformer attention, fixed upstream whatever the width
PROJECTION_DEPTH, PROJECTION_HEADS, PROJECTION_MLP = 4, 4, 512
ROTARY_MAX_FREQ = 10


@dataclass
class PVDMConfig:
    """The `autoencoder.arch` section (defaults: PVDM's released UCF-101 / SkyTimelapse autoencoder)."""

    channels: int = 384  # transformer width C
    resolution: int = 256  # square frames of this size
    timesteps: int = 16  # frames per clip given to the autoencoder
    splits: int = 1  # the clip is encoded as `splits` chunks of timesteps // splits frames each
    embed_dim: int = 4  # latent channels per plane
    patch_size: int = 8
    in_channels: int = 3
    depth: int = 8  # TimeSformer layers in the encoder and in the decoder
    checkpointing: bool = False  # recompute TimeSformer layers in the backward pass (less memory, ~30% slower)

    def __post_init__(self) -> None:
        for name in (
            "channels",
            "resolution",
            "timesteps",
            "splits",
            "embed_dim",
            "patch_size",
            "in_channels",
            "depth",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"autoencoder.arch.{name} must be >= 1, got {getattr(self, name)}")
        if self.resolution % self.patch_size:
            raise ConfigError(
                f"autoencoder.arch.resolution {self.resolution} is not divisible by patch_size {self.patch_size}"
            )
        if self.timesteps % self.splits:
            raise ConfigError(f"autoencoder.arch.timesteps {self.timesteps} is not divisible by splits {self.splits}")
        if self.channels < 8:
            raise ConfigError(
                f"autoencoder.arch.channels must be >= 8 (the plane transformers use C/8 per head), got {self.channels}"
            )

    @property
    def frames(self) -> int:
        return self.timesteps // self.splits

    @property
    def grid(self) -> int:
        return self.resolution // self.patch_size


# --- rotary positions ------------------------------------------------------------------------------


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(..., d) with adjacent pairs (a, b) -> (-b, a)."""
    pairs = rearrange(x, "... (d two) -> ... d two", two=2)
    return rearrange(torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1), "... d two -> ... (d two)")


def _apply_rotary(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_pairs(x) * sin


class FrameRotary(nn.Module):
    """1-D rotary angles over frame indices; the 32 frequencies appear twice in a row (not interleaved)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("inv_freqs", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, frames: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        angles = torch.outer(torch.arange(frames, device=device, dtype=self.inv_freqs.dtype), self.inv_freqs)
        angles = torch.cat((angles, angles), dim=-1)  # (f, d)
        return angles.sin(), angles.cos()


class AxialRotary(nn.Module):
    """2-D rotary angles: rows then columns on [-1, 1] at log-spaced scales, each angle repeated for its pair."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("scales", torch.logspace(0.0, math.log2(ROTARY_MAX_FREQ / 2), dim // 4, base=2))

    def forward(self, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.linspace(-1.0, 1.0, height, device=device)[:, None] * self.scales * math.pi  # (h, d/4)
        cols = torch.linspace(-1.0, 1.0, width, device=device)[:, None] * self.scales * math.pi  # (w, d/4)
        angles = torch.cat((rows[:, None].expand(-1, width, -1), cols[None].expand(height, -1, -1)), dim=-1)
        angles = angles.reshape(height * width, -1).repeat_interleave(2, dim=-1)  # (h*w, d)
        return angles.sin(), angles.cos()


# --- transformer pieces (upstream module names: norm/fn, to_qkv, to_out.0, net.0/net.3) -------------


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


class Attention(nn.Module):
    """Multi-head self-attention through SDPA; `pattern` regroups the tokens (B, N, ...) into the
    independent sequences that attend within themselves (e.g. each spatial location over time)."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * head_dim, dim))

    def forward(self, x: torch.Tensor, pattern: str = "b n", rotary=None, **sizes) -> torch.Tensor:
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)  # each (B, N, heads*d)
        sizes["b"] = x.shape[0]
        grouped = f"{pattern} (h d)"
        q, k, v = (rearrange(t, f"{grouped} -> {_sequences(pattern)} h n d", h=self.heads, **sizes) for t in (q, k, v))
        if rotary is not None:
            sin, cos = rotary  # (n, d) float32: the angles need more precision than bf16 keeps
            rotated = torch.promote_types(q.dtype, torch.float32)  # float64 stays float64, as upstream's
            q, k = (_apply_rotary(t.to(rotated), sin, cos).to(v.dtype) for t in (q, k))
        out = attention(q, k, v)  # (sequences, heads, n, d)
        out = rearrange(out, f"{_sequences(pattern)} h n d -> {grouped}", **sizes)
        return self.to_out(out)


def _sequences(pattern: str) -> str:
    """The axes of `pattern` other than the attended axis `n`, grouped: they index independent sequences."""
    others = [axis for axis in pattern.replace("(", " ").replace(")", " ").split() if axis != "n"]
    return "(" + " ".join(others) + ")"


class FeedForward(nn.Module):
    """Linear -> GELU (or GEGLU: value * GELU(gate) over a doubled first layer) -> Linear."""

    def __init__(self, dim: int, hidden: int, *, gated: bool):
        super().__init__()
        first = nn.Linear(dim, hidden * 2 if gated else hidden)
        # the Identity stands where upstream has a (zero) dropout, keeping its `net.3` name for the output layer
        self.net = nn.Sequential(first, _GEGLU() if gated else nn.GELU(), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return value * F.gelu(gate)


class TimeSformer(nn.Module):
    """Divided space-time attention over tokens laid out (frame, row, col); with `patch_dim` it first
    embeds flattened patches (the encoder), without it it works on a given token cube (the decoder)."""

    def __init__(self, dim: int, depth: int, *, patch_dim: int | None = None, checkpointing: bool = False):
        super().__init__()
        if patch_dim is not None:
            self.to_patch_embedding = nn.Linear(patch_dim, dim)
        self.frame_rot_emb = FrameRotary(HEAD_DIM)
        self.image_rot_emb = AxialRotary(HEAD_DIM)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(dim, Attention(dim, HEADS, HEAD_DIM)),
                    PreNorm(dim, Attention(dim, HEADS, HEAD_DIM)),
                    PreNorm(dim, FeedForward(dim, 4 * dim, gated=True)),
                ]
            )
            for _ in range(depth)
        )
        self.checkpointing = checkpointing

    def forward(self, tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        # tokens (B, f*h*w, C)
        time_rotary = self.frame_rot_emb(frames, tokens.device)
        space_rotary = self.image_rot_emb(height, width, tokens.device)
        for layer in self.layers:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(self._layer, layer, tokens, frames, time_rotary, space_rotary, use_reentrant=False)
            else:
                tokens = self._layer(layer, tokens, frames, time_rotary, space_rotary)
        return tokens

    @staticmethod
    def _layer(layer, tokens, frames, time_rotary, space_rotary):
        time_attn, space_attn, feed_forward = layer
        tokens = time_attn(tokens, pattern="b (n s)", rotary=time_rotary, n=frames) + tokens  # each location over time
        tokens = space_attn(tokens, pattern="b (f n)", rotary=space_rotary, f=frames) + tokens  # each frame over space
        return feed_forward(tokens) + tokens


class PlaneTransformer(nn.Module):
    """The small pre-LN transformer that summarises one axis into a plane (upstream `*_quant_attn`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(dim, Attention(dim, PROJECTION_HEADS, dim // 8)),
                    PreNorm(dim, FeedForward(dim, PROJECTION_MLP, gated=False)),
                ]
            )
            for _ in range(PROJECTION_DEPTH)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, feed_forward in self.layers:
            x = attn(x) + x
            x = feed_forward(x) + x
        return x


# --- the autoencoder -------------------------------------------------------------------------------


class PVDMAutoencoder(Autoencoder):
    type = "pvdm"
    Config = PVDMConfig

    @classmethod
    def recognizes_state(cls, state: dict[str, torch.Tensor]) -> bool:
        return "xy_quant_attn.layers.0.0.fn.to_qkv.weight" in state

    @classmethod
    def arch_from_state(cls, state: dict[str, torch.Tensor]) -> dict:
        """Sizes from the tensors; `splits` cannot be told apart from a shorter clip, so it stays 1."""
        unpatchify = state["to_pixel.1.weight"]  # (C, C_img, p, p)
        patch = unpatchify.shape[-1]
        return dict(
            channels=unpatchify.shape[0],
            in_channels=unpatchify.shape[1],
            patch_size=patch,
            embed_dim=state["pre_xy.weight"].shape[0],
            timesteps=state["xy_pos_embedding"].shape[1] - 1,
            resolution=(state["yt_pos_embedding"].shape[1] - 1) * patch,
            depth=count_indices(state, r"encoder\.layers\.(\d+)\."),
        )

    def __init__(self, config: PVDMConfig):
        super().__init__(config)
        c, k, g, p = config.channels, config.frames, config.grid, config.patch_size
        self.encoder = TimeSformer(
            c, config.depth, patch_dim=config.in_channels * p * p, checkpointing=config.checkpointing
        )
        self.decoder = TimeSformer(c, config.depth, checkpointing=config.checkpointing)
        self.to_pixel = nn.Sequential(
            Rearrange("b (t h w) c -> (b t) c h w", h=g, w=g), nn.ConvTranspose2d(c, config.in_channels, p, stride=p)
        )
        self.register_buffer("coords", torch.linspace(-1, 1, k)[:, None])  # unused; in upstream checkpoints
        # torch.randn like upstream; each learned token is appended to the sequence it summarises
        self.xy_token, self.xt_token, self.yt_token = (nn.Parameter(torch.randn(1, 1, c)) for _ in range(3))
        self.xy_pos_embedding = nn.Parameter(torch.randn(1, k + 1, c))  # sequence: the k frames
        self.xt_pos_embedding = nn.Parameter(torch.randn(1, g + 1, c))  # sequence: the columns
        self.yt_pos_embedding = nn.Parameter(torch.randn(1, g + 1, c))  # sequence: the rows
        self.xy_quant_attn, self.yt_quant_attn, self.xt_quant_attn = (PlaneTransformer(c) for _ in range(3))
        e = config.embed_dim
        self.pre_xy, self.pre_xt, self.pre_yt = (nn.Conv2d(c, e, 1) for _ in range(3))
        self.post_xy, self.post_xt, self.post_yt = (nn.Conv2d(e, c, 1) for _ in range(3))

    # --- sizes ---
    @property
    def frames_per_latent(self) -> int:
        return self.config.frames

    def plane_shapes(self) -> dict[str, tuple[int, int]]:
        """(rows, cols) of each plane in latent order."""
        k, g = self.config.frames, self.config.grid
        return {"xy": (g, g), "yt": (k, g), "xt": (k, g)}

    def latent_dims(self, height: int, width: int) -> tuple[int, ...]:
        if (height, width) != (self.config.resolution,) * 2:
            raise VptError(
                f"pvdm autoencoder is built for {self.config.resolution}x{self.config.resolution} frames, "
                f"got {height}x{width} (set autoencoder.arch.resolution or resize the frames)"
            )
        return (self.config.embed_dim, sum(r * c for r, c in self.plane_shapes().values()))

    # --- encoder ---
    def encode_tokens(self, clips: torch.Tensor) -> torch.Tensor:
        """(N, k, C, H, W) -> TimeSformer tokens (N, k*h*w, width), ordered (frame, row, col)."""
        n, k, _, height, width = clips.shape
        self.latent_dims(height, width)
        if k != self.config.frames:
            raise VptError(f"pvdm autoencoder encodes clips of {self.config.frames} frames, got {k}")
        p, g = self.config.patch_size, self.config.grid
        patches = rearrange(clips, "n f c (h p1) (w p2) -> n (f h w) (p1 p2 c)", p1=p, p2=p)
        return self.encoder(self.encoder.to_patch_embedding(patches), k, g, g)

    def _summarise(
        self, sequences: torch.Tensor, token: nn.Parameter, position: nn.Parameter, transformer: PlaneTransformer
    ) -> torch.Tensor:
        """(M, n, C) -> (M, C): upstream keeps output position 0, not the appended learned token."""
        x = torch.cat([sequences, token.expand(len(sequences), -1, -1)], dim=1)  # (M, n+1, C)
        return transformer(x + position[:, : x.shape[1]])[:, 0]

    def encode_planes(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, k, C, H, W) -> tanh planes {xy (N, e, h, w), yt (N, e, k, w), xt (N, e, k, h)}."""
        k, g = self.config.frames, self.config.grid
        cube = rearrange(self.encode_tokens(clips), "n (t h w) c -> n c t h w", t=k, h=g)
        batch = len(cube)
        xy = self._summarise(
            rearrange(cube, "n c t h w -> (n h w) t c"), self.xy_token, self.xy_pos_embedding, self.xy_quant_attn
        )
        yt = self._summarise(
            rearrange(cube, "n c t h w -> (n t w) h c"), self.yt_token, self.yt_pos_embedding, self.yt_quant_attn
        )
        xt = self._summarise(
            rearrange(cube, "n c t h w -> (n t h) w c"), self.xt_token, self.xt_pos_embedding, self.xt_quant_attn
        )
        return {
            "xy": torch.tanh(self.pre_xy(rearrange(xy, "(n h w) c -> n c h w", n=batch, h=g))),
            "yt": torch.tanh(self.pre_yt(rearrange(yt, "(n t w) c -> n c t w", n=batch, w=g))),
            "xt": torch.tanh(self.pre_xt(rearrange(xt, "(n t h) c -> n c t h", n=batch, h=g))),
        }

    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        planes = self.encode_planes(clips)
        return torch.cat([planes[name].flatten(2) for name in self.plane_shapes()], dim=-1)  # (N, e, L)

    # --- decoder ---
    def split_planes(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, e, L) -> {plane: (N, e, rows, cols)}."""
        shapes = self.plane_shapes()
        if latents.shape[-1] != sum(r * c for r, c in shapes.values()):
            raise VptError(
                f"pvdm latents must have length {sum(r * c for r, c in shapes.values())}, got {latents.shape[-1]}"
            )
        pieces = latents.split([r * c for r, c in shapes.values()], dim=-1)
        return {name: piece.unflatten(-1, shape) for (name, shape), piece in zip(shapes.items(), pieces)}

    def planes_to_cube(self, planes: dict[str, torch.Tensor]) -> torch.Tensor:
        """Broadcast-sum of the widened planes -> the decoder's input cube (N, C, k, h, w)."""
        xy = self.post_xy(planes["xy"])[:, :, None]  # (N, C, 1, h, w)
        yt = self.post_yt(planes["yt"])[:, :, :, None]  # (N, C, k, 1, w)
        xt = self.post_xt(planes["xt"])[..., None]  # (N, C, k, h, 1)
        return xy + yt + xt

    def decode_cube(self, cube: torch.Tensor) -> torch.Tensor:
        """(N, C, k, h, w) -> frames (N, k, C_img, H, W) in (-1, 1)."""
        n, _, k, h, w = cube.shape
        tokens = self.decoder(rearrange(cube, "n c f h w -> n (f h w) c"), k, h, w)
        frames = 2 * torch.sigmoid(self.to_pixel(tokens)) - 1  # ((N k), C_img, H, W), frame index fastest
        return rearrange(frames, "(n k) c h w -> n k c h w", n=n)

    def decode_clips(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_cube(self.planes_to_cube(self.split_planes(latents)))

    def forward_train(self, clips: torch.Tensor) -> TrainOutput:
        return TrainOutput(self.decode_cube(self.planes_to_cube(self.encode_planes(clips))))

    def last_layer(self) -> nn.Parameter:
        return self.to_pixel[1].weight

    def build_objective(self, loss_config, *, grad_accum: int = 1, perceptual: nn.Module | None = None) -> nn.Module:
        from vpt.models.autoencoders.pvdm_objective import PVDMObjective

        return PVDMObjective(self, loss_config, grad_accum=grad_accum, perceptual=perceptual)

    def identity(self) -> dict:
        return {**super().identity(), "planes": {name: list(shape) for name, shape in self.plane_shapes().items()}}
