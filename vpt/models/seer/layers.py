"""Frame-aware building blocks of the Seer video UNet and FSText.

Every 2D layer runs frame by frame on a folded `(B*F, C, H, W)` batch, with two exceptions that make
this more than "diffusers' 2D blocks on a bigger batch":

- GroupNorm statistics span the whole clip (all frames, reference frames included), because
  upstream applied `nn.GroupNorm` to `(b, c, f, h, w)` tensors and the released weights depend on it.
- The new temporal blocks (SAWT) attend across frames inside spatial windows, causally.

Parameter names follow upstream (= diffusers names for the SD parts), so SD v1.5 and Seer state
dicts load without renaming. SD's attention runs through diffusers' processors (SDPA), SAWT's through
`vpt.models.attention.attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock, FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from einops import rearrange
from torch import nn

from vpt.models.attention import attention

# --- normalisation --------------------------------------------------------------------------------


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are taken over (C/G channels x all frames x H x W) of each clip.

    Input is the folded batch `(B*F, C, H, W)`. Seen as `(B, C, F, H*W)` (a transposed view, no copy) the
    clip is what native `group_norm` expects, so one kernel computes the statistics and the affine map;
    it returns that layout transposed back, which the next conv or reshape consumes as it is.
    Computed in float32 and returned in the input dtype: a no-op in fp32, and what CUDA autocast does to
    `group_norm` anyway (CPU autocast would keep bf16 in and out; upstream normalised in float32).
    """

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # (B*F, C, H, W)
        folded, channels, height, width = x.shape
        clip = x.reshape(folded // num_frames, num_frames, channels, height * width).transpose(1, 2)  # (B, C, F, H*W)
        weight, bias = (None, None) if not self.affine else (self.weight.float(), self.bias.float())
        normed = F.group_norm(clip.float(), self.num_groups, weight, bias, self.eps)
        return normed.transpose(1, 2).reshape(folded, channels, height, width).to(x.dtype)


# --- attention ------------------------------------------------------------------------------------


def use_diffusers_attention(module: nn.Module) -> None:
    """SD's spatial self/cross attention (every diffusers `Attention` below `module`) through diffusers' own
    processors: `AttnProcessor2_0` (torch SDPA, what vpt's `attention` computes) or, when vpt's attention
    backend is xformers on a CUDA machine, `XFormersAttnProcessor`. SAWT is not a diffusers `Attention`
    and keeps its own (see `SAWTAttention`)."""
    from diffusers.models.attention_processor import AttnProcessor2_0, XFormersAttnProcessor

    from vpt.models.attention import backend_name

    xformers = backend_name() == "xformers" and torch.cuda.is_available()
    for child in module.modules():
        if isinstance(child, Attention):
            child.set_processor(XFormersAttnProcessor() if xformers else AttnProcessor2_0())


class RotaryEmbedding(nn.Module):
    """Rotary positions on the first `dim` channels of each head, channel pairs (2i, 2i+1) interleaved.

    The frequencies 1/theta^(2i/dim) are a persistent buffer named `freqs` because the upstream
    checkpoints (rotary-embedding-torch 0.1.5) store them; they are never trained.
    `fp16_angles` reproduces upstream under fp16 autocast, where the angles p*freq were rounded to
    the activation dtype before cos/sin (exact float32 angles otherwise).
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        self.register_buffer("freqs", 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim))
        self.fp16_angles = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., S, d) with positions 0..S-1 on axis -2
        rotary_dim = 2 * self.freqs.numel()
        positions = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)
        angles = (positions[:, None] * self.freqs.float()[None]).repeat_interleave(2, dim=-1)  # (S, rotary_dim)
        if self.fp16_angles:
            angles = angles.to(x.dtype)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
        even, odd = rotated[..., 0::2], rotated[..., 1::2]
        turned = torch.stack((-odd, even), dim=-1).flatten(-2)  # (x0, x1) -> (-x1, x0) per pair
        return torch.cat([rotated * cos + turned * sin, passed], dim=-1)


def sawt_window(height: int, width: int) -> int | None:
    """Window side of SAWT at a feature map of `height` x `width`: 8 from 32 px up, 4 above 4 px, else none."""
    if height <= 4:
        return None
    size = 8 if height // 8 >= 4 else 4
    if height % size or width % size:
        raise ValueError(f"SAWT needs feature maps divisible by its window {size}, got {height}x{width}")
    return size


class SAWTAttention(nn.Module):
    """Scaled autoregressive window temporal attention.

    Rotary positions are applied on the flattened clip (p = f*h*w + y*w + x) *before* the plane is
    cut into windows; every window then holds its tokens from all frames, ordered (frame, row, col),
    under a token-level causal mask. With height = width = 1 this is plain causal attention over
    frames with rotary frame indices (FSText's temporal block).

    Why not a diffusers attention processor: rotary positions over the flattened clip and the per-window
    causal layout change what q, k and v are, which no diffusers processor computes; the product itself
    still goes through vpt's `attention` (SDPA, or xformers when selected).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, rotary_dim: int = 32):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.rotary_emb = RotaryEmbedding(min(rotary_dim, head_dim))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:  # (B, F*h*w, C)
        q, k, v = (
            rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (self.to_q(x), self.to_k(x), self.to_v(x))
        )
        q, k = self.rotary_emb(q), self.rotary_emb(k)
        window = sawt_window(height, width)
        if window is None:
            out = rearrange(attention(q, k, v, causal=True), "b h n d -> b n (h d)")
        else:
            split = dict(f=frames, y=height // window, i=window, x=width // window, j=window)
            q, k, v = (rearrange(t, "b h (f y i x j) d -> (b y x) h (f i j) d", **split) for t in (q, k, v))
            out = rearrange(attention(q, k, v, causal=True), "(b y x) h (f i j) d -> b (f y i x j) (h d)", **split)
        return self.to_out[1](self.to_out[0](out))


class CausalTemporalBlock(nn.Module):
    """LN -> SAWT self-attention -> residual; LN -> GEGLU FF -> residual, skipped for reference tokens.

    `reference_frames` R > 0 leaves the first R frames' tokens out of the feed-forward (upstream's
    training call); upstream sampling passes R = 0 (`sampler.reference_ff_skip: false`).
    """

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SAWTAttention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x: torch.Tensor, frames: int, height: int, width: int, reference_frames: int = 0) -> torch.Tensor:
        x = self.attn1(self.norm1(x), frames, height, width) + x  # (B, F*h*w, C)
        skip = reference_frames * height * width
        reference, target = x[:, :skip], x[:, skip:]
        target = self.ff(self.norm3(target)) + target
        return torch.cat([reference, target], dim=1) if skip else target


# --- transformer shells (norm -> 1x1 proj_in -> block -> 1x1 proj_out -> residual) ------------------


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialised output projection: a new block starts as the identity (upstream's zero_module)."""
    for param in module.parameters():
        nn.init.zeros_(param)
    return module


class SpatialTransformer(nn.Module):
    """SD's Transformer2DModel (conv projections) applied per frame; frame f cross-attends to its own text row."""

    def __init__(self, channels: int, heads: int, cross_attention_dim: int):
        super().__init__()
        self.norm = FrameGroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    channels, heads, channels // heads, cross_attention_dim=cross_attention_dim, activation_fn="geglu"
                )
            ]
        )
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x (B*F, C, H, W); context (B*F, L, D)
        height, width = x.shape[-2:]
        h = rearrange(self.proj_in(self.norm(x, num_frames)), "n c y x -> n (y x) c")
        for block in self.transformer_blocks:
            h = block(h, encoder_hidden_states=context)
        h = rearrange(h, "n (y x) c -> n c y x", y=height, x=width)
        return self.proj_out(h) + x


class TemporalTransformer(nn.Module):
    """The trained SAWT module inserted after every spatial transformer (`temporal_attentions.i`)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.norm = FrameGroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([CausalTemporalBlock(channels, heads, channels // heads)])
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, num_frames: int, reference_frames: int = 0) -> torch.Tensor:
        height, width = x.shape[-2:]  # x (B*F, C, H, W)
        h = rearrange(self.proj_in(self.norm(x, num_frames)), "(b f) c y x -> b (f y x) c", f=num_frames)
        for block in self.transformer_blocks:
            h = block(h, num_frames, height, width, reference_frames)
        h = rearrange(h, "b (f y x) c -> (b f) c y x", f=num_frames, y=height, x=width)
        return self.proj_out(h) + x


class FrameResnet(ResnetBlock2D):
    """diffusers' ResnetBlock2D (same parameters) with clip-wide GroupNorm and one time embedding per clip."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, eps: float, groups: int = 32):
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            temb_channels=temb_channels,
            eps=eps,
            groups=groups,
            non_linearity="silu",
        )
        self.norm1 = FrameGroupNorm(groups, in_channels, eps=eps)
        self.norm2 = FrameGroupNorm(groups, out_channels, eps=eps)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x (B*F, C, H, W); temb (B, T)
        h = self.conv1(self.nonlinearity(self.norm1(x, num_frames)))
        time = self.time_emb_proj(self.nonlinearity(temb)).repeat_interleave(num_frames, dim=0)  # (B*F, C_out)
        h = self.nonlinearity(self.norm2(h + time[:, :, None, None], num_frames))
        h = self.conv2(self.dropout(h))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return (skip + h) / self.output_scale_factor


def nearest_frames(table: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resize a (1, F0, L, C) table to `num_frames` rows on axis 1 with torch's nearest rule (row i <- i*F0//F)."""
    if table.shape[1] == num_frames:
        return table
    resized = F.interpolate(rearrange(table, "o f l c -> o c f l"), size=(num_frames, table.shape[2]))
    return rearrange(resized, "o c f l -> o f l c")
