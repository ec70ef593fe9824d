"""MOSO's three-stream VQ-VAE (`MoCoVQVAE_wCD_shareCB`), the first stage of RSVP-M: a clip of k frames
becomes scene (background), object (identity) and motion tokens from ONE shared EMA codebook.

    scene    per-frame conv stack (ds_background stride-2 levels) -> frames stacked on channels -> conv
             -> residual stack -> 1x1 conv -> tokens (H/2^ds_background)^2                32x32 at 256^2
    object   the same network with its own weights at ds_identity levels               16x16 at 256^2
    motion   per-frame conv stack (ds_motion levels) on the second temporal difference
             2 x_t - x_{t-1} - x_{t+1}, self-attention over windows of `time_head` frames at each
             location, residual stack, 1x1 conv -> tokens per frame                      16 x 8x8 at 256^2
    decoder  codes -> 1x1 transposed convs (`_suf_vq_*`) -> scene and object brought to the content
             grid (2^ds_content) -> a three-scale gate mixes scene and object per pixel, steered by
             the motion features -> conv + residual stack -> ds_content transposed convs -> frames

Parameter names are upstream's, so its `{'state': ...}` checkpoints load (the discriminator and
LPIPS copies they also hold are dropped by `load_autoencoder`). Upstream works on frames in [0, 1];
this module takes vpt's [-1, 1], maps them to [0, 1] inside and maps the decoder output back with
2y - 1, so upstream weights give the same pictures. L1 on [-1, 1] frames is twice upstream's L1 on
[0, 1] frames, so `loss.reconstruction_weight: 0.5` reproduces its `ABS_weight: 1.0`.

The latent of one clip, as `encode_clips` returns and `vpt save-latents` caches it, is the token
ids as float32 in one channel of length L (exact: float32 holds integers up to 2^24), shape (1, L):

    [scene (Hs*Ws) | object (Ho*Wo) | motion (k*Hm*Wm)], each grid row-major, motion frame-major

(`identity()["layout"]` records the grid of each part). A diffusion backend turns them into its
input and context with `split_latent`, `diffusion_input` and `context`, and samples back to frames
with `decode_diffusion`.

What differs from upstream, and what could not be established:
- Motion input at the clip's ends: upstream reads one frame before and one after the clip. By default
  (`motion_context: repeat`) an autoencoder here sees exactly k frames, so the first and last frame
  are repeated outward (the motion input of the end frames is a first, not a second, difference).
  `motion_context: neighbours` reads upstream's way: a clip is k + 2 frames whose outer two only enter
  the motion input, so training takes `data.frames` = k + 2 and `encode` n k + 2 frames (see `to_clips`).
- Upstream restarts never-chosen codes (`if_augcb: 2`): every 10th update one of them gets the mean
  vector and moving-average sum of the used codes, but its moving-average count stays near zero, so
  the next update divides that sum by the tiny count and throws the code far from every feature.
  Not reproduced: here, as in upstream between restarts, a code never chosen sits at the zero vector
  after the first update (its moving-average sum is zero).
- The split inputs of upstream's first 100k steps (`split_input_steps`): the object stream sees the
  pixels whose largest channel of |2 x_t - x_{t-1} - x_{t+1}| lies in [0.1, 0.9], the scene stream
  the rest; afterwards both see whole frames. The band is upstream's data default (`limit` 0.5 with
  its fixed +-0.4); tokens are always extracted from whole frames, as upstream does.
- The GAN: upstream alternates generator and discriminator steps once it is on; `loss.gan_schedule:
  alternating` does the same (the default `joint` moves both on every step, see `moso_objective.py`).
  The published UCF-101 run never switched it on.
- Neither repository publishes trained weights, so checkpoint loading was checked against upstream's
  code on random weights (names, shapes, outputs), not on a released model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from vpt.errors import ConfigError, VptError
from vpt.models.attention import attention
from vpt.models.autoencoders.base import Autoencoder, TrainOutput, count_indices
from vpt.models.autoencoders.quantize import EMAVectorQuantizer

SPLIT_BAND = (0.1, 0.9)  # upstream: limit 0.5 +- 0.4, on the [0, 1] scale of its frames


@dataclass
class MosoConfig:
    """The `autoencoder.arch` section (defaults: RSVP's `configs/moso-vqvae/test_UCF.yaml`)."""

    in_channels: int = 3
    resolution: int = 256  # square frames
    frames: int = 16  # k: frames per clip
    num_hiddens: int = 256  # encoder / decoder width (also the diffusion input and context width)
    num_residual_layers: int = 4  # residual blocks in each encoder (the decoder has ds_content of them)
    num_residual_hiddens: int = 128
    embedding_dim: int = 256  # code vector size
    num_embeddings: int = 16384  # codes in the one shared codebook
    ds_background: int = 3  # log2 downsampling of the scene tokens
    ds_identity: int = 4  # ... of the object tokens
    ds_motion: int = 5  # ... of the motion tokens
    ds_content: int = 3  # ... of the decoder's working grid (scene and object are resampled to it)
    num_heads: int = 4  # motion encoder attention
    head_dim: int = 64
    time_head: int = 4  # frames per motion-attention window
    attention_dropout: float = 0.1  # upstream's attention and output dropout
    decay: float = 0.99  # codebook moving-average decay
    commitment_cost: float = 0.25
    epsilon: float = 1e-5  # Laplace smoothing of the code counts
    split_input_steps: int = 0  # train on split scene/object inputs for this many steps (upstream: 100000)
    # The motion input 2 x_t - x_{t-1} - x_{t+1} at a clip's first and last frame: `repeat` the end frames outward
    # (clips of k frames), or read the real `neighbours` before and after the clip, as upstream (k + 2 frames).
    motion_context: Literal["repeat", "neighbours"] = "repeat"

    def __post_init__(self) -> None:
        for name in (
            "in_channels",
            "resolution",
            "frames",
            "num_hiddens",
            "num_residual_layers",
            "num_residual_hiddens",
            "embedding_dim",
            "num_embeddings",
            "ds_background",
            "ds_identity",
            "ds_motion",
            "ds_content",
            "num_heads",
            "head_dim",
            "time_head",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"autoencoder.arch.{name} must be >= 1, got {getattr(self, name)}")
        if self.ds_content > min(self.ds_background, self.ds_identity):
            raise ConfigError(
                f"autoencoder.arch.ds_content {self.ds_content} must not exceed ds_background "
                f"{self.ds_background} or ds_identity {self.ds_identity} (the decoder upsamples them to it)"
            )
        if not 0 <= self.ds_motion - self.ds_content <= 2:
            raise ConfigError(
                f"autoencoder.arch.ds_motion must be ds_content to ds_content + 2 (the decoder's three scales), "
                f"got {self.ds_motion} with ds_content {self.ds_content}"
            )
        factor = 2 ** max(self.ds_background, self.ds_identity, self.ds_motion, self.ds_content + 2)
        if self.resolution % factor:
            raise ConfigError(
                f"autoencoder.arch.resolution {self.resolution} is not divisible by {factor}: the token grids "
                f"(ds {self.ds_background}/{self.ds_identity}/{self.ds_motion}) and the decoder's "
                f"scales (2^(ds_content+2)) need whole cells"
            )
        if self.frames % self.time_head:
            raise ConfigError(f"autoencoder.arch.frames {self.frames} is not divisible by time_head {self.time_head}")
        if self.num_hiddens % 2:
            raise ConfigError(
                f"autoencoder.arch.num_hiddens must be even (the decoder halves it), got {self.num_hiddens}"
            )
        for name in ("commitment_cost", "split_input_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"autoencoder.arch.{name} must be >= 0, got {getattr(self, name)}")
        if self.epsilon <= 0:
            raise ConfigError(f"autoencoder.arch.epsilon must be > 0, got {self.epsilon}")
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"autoencoder.arch.decay must be in [0, 1), got {self.decay}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ConfigError(f"autoencoder.arch.attention_dropout must be in [0, 1), got {self.attention_dropout}")

    def grid(self, ds: int) -> int:
        return self.resolution >> ds


# --- building blocks (upstream module names) -------------------------------------------------------


def _downsampling_stack(in_channels: int, width: int, levels: int) -> nn.ModuleList:
    """Per level: conv5 s2 + BN + GELU + conv3 + BN + GELU (a ReLU follows in `_downsample`)."""
    return nn.ModuleList(
        nn.Sequential(
            nn.Conv2d(in_channels if i == 0 else width, width, 5, stride=2, padding=2),
            nn.BatchNorm2d(width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.GELU(),
        )
        for i in range(levels)
    )


def _downsample(layers: nn.ModuleList, frames: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        frames = F.relu(layer(frames))
    return frames


class ResidualStack(nn.Module):
    """h += conv3 -> BN -> GELU -> conv1 -> BN -> GELU (each block), then GELU."""

    def __init__(self, width: int, blocks: int, hidden: int):
        super().__init__()
        self._layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden),
                nn.GELU(),
                nn.Conv2d(hidden, width, 1),
                nn.BatchNorm2d(width),
                nn.GELU(),
            )
            for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._layers:
            x = x + layer(x)
        return F.gelu(x)


class ContentEncoder(nn.Module):
    """Scene or object stream: (N, k, C, H, W) -> (N, width, H/2^ds, W/2^ds), one map per clip."""

    def __init__(self, cfg: MosoConfig, levels: int):
        super().__init__()
        width = cfg.num_hiddens
        self._layers = _downsampling_stack(cfg.in_channels, width, levels)
        # upstream's suf_method "conv": the frames' features stacked on channels, mixed by one conv
        self._suf_layer = nn.Sequential(
            nn.Conv2d(cfg.frames * width, width, 3, padding=1), nn.BatchNorm2d(width), nn.GELU()
        )
        self._residual = ResidualStack(width, cfg.num_residual_layers, cfg.num_residual_hiddens)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        n = clips.shape[0]
        features = _downsample(self._layers, clips.flatten(0, 1))  # (N*k, width, h, w)
        return self._residual(self._suf_layer(rearrange(features, "(n t) c h w -> n (t c) h w", n=n)))


class MultiHeadAttention(nn.Module):
    """Post-LN attention block: LayerNorm(x + dropout(fc(softmax(q k^T / sqrt(d)) v))), bias-free projections."""

    def __init__(self, width: int, heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.w_qs = nn.Linear(width, heads * head_dim, bias=False)
        self.w_ks = nn.Linear(width, heads * head_dim, bias=False)
        self.w_vs = nn.Linear(width, heads * head_dim, bias=False)
        self.fc = nn.Linear(heads * head_dim, width, bias=False)
        self.layer_norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (S, n, width): S independent sequences of n tokens
        q, k, v = (
            rearrange(proj(x), "s n (h d) -> s h n d", h=self.heads) for proj in (self.w_qs, self.w_ks, self.w_vs)
        )
        p = self.dropout if self.training else 0.0
        out = rearrange(attention(q, k, v, dropout=p), "s h n d -> s n (h d)")
        return self.layer_norm(x + F.dropout(self.fc(out), p, self.training))


class MotionEncoder(nn.Module):
    """Motion stream: (N, k, C, H, W) second differences -> (N, k, width, H/2^ds, W/2^ds)."""

    def __init__(self, cfg: MosoConfig):
        super().__init__()
        self.time_head = cfg.time_head
        self._layers = _downsampling_stack(cfg.in_channels, cfg.num_hiddens, cfg.ds_motion)
        self._attention = MultiHeadAttention(cfg.num_hiddens, cfg.num_heads, cfg.head_dim, cfg.attention_dropout)
        self._residual = ResidualStack(cfg.num_hiddens, cfg.num_residual_layers, cfg.num_residual_hiddens)

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        n = motion.shape[0]
        features = _downsample(self._layers, motion.flatten(0, 1))  # (N*k, width, h, w)
        height, width = features.shape[2:]
        # attention over each run of `time_head` consecutive frames at every location
        tokens = rearrange(features, "(s t) c h w -> (s h w) t c", t=self.time_head)
        features = rearrange(self._attention(tokens), "(s h w) t c -> (s t) c h w", h=height, w=width)
        return rearrange(self._residual(features), "(n t) c h w -> n t c h w", n=n)


def _halving_conv(width: int) -> nn.Conv2d:
    return nn.Conv2d(width, width, 3, stride=2, padding=1)


def _gate_mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3 * width, width, 1), nn.ReLU(), nn.Conv2d(width, width, 1))


class MergeModule(nn.Module):
    """Per-pixel gate w in (0, 1) mixing scene and object features on the content grid: w * scene +
    (1 - w) * object, w predicted from [motion, scene, object] at three scales (content, /2, /4),
    coarse to fine."""

    def __init__(self, width: int, motion_offset: int):
        super().__init__()
        self.motion_offset = motion_offset  # ds_motion - ds_content: which scale the motion features sit at
        for i in range(1, 3 - motion_offset):
            setattr(self, f"_mo_ds_{i}", _halving_conv(width))
        self._bg_ds_1, self._bg_ds_2, self._id_ds_1, self._id_ds_2 = (_halving_conv(width) for _ in range(4))
        self._fc_l1, self._fc_l2, self._fc_l3 = (_gate_mlp(width) for _ in range(3))
        self._fc = nn.Conv2d(width, width, 1)

    def _motion_scales(self, motion: torch.Tensor) -> list[torch.Tensor]:
        """Motion features at the content scale, /2 and /4: upsampled where coarser, strided convs where finer."""
        scales = [motion]
        for _ in range(self.motion_offset):
            scales.insert(0, _upsample(scales[0]))
        for i in range(1, 3 - self.motion_offset):
            scales.append(getattr(self, f"_mo_ds_{i}")(scales[-1]))
        return scales

    def forward(self, scene: torch.Tensor, obj: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        # scene, obj (M, C, h, w) on the content grid; motion (M, C, h', w'); M = clips * frames
        mo1, mo2, mo3 = self._motion_scales(motion)
        bg2 = self._bg_ds_1(scene)
        id2 = self._id_ds_1(obj)
        gate = self._fc_l3(torch.cat([mo3, self._bg_ds_2(bg2), self._id_ds_2(id2)], dim=1))
        gate = self._fc_l2(torch.cat([mo2, bg2, id2], dim=1)) + _upsample(gate)
        gate = self._fc_l1(torch.cat([mo1, scene, obj], dim=1)) + _upsample(gate)
        weight = torch.sigmoid(self._fc(gate))
        return weight * scene + (1 - weight) * obj


def _upsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return x if factor == 1 else F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)


class Decoder(nn.Module):
    """(scene (N, C, Hs, Ws), object (N, C, Ho, Wo), motion (N, k, C, Hm, Wm)) -> frames (N, k, C_img, H, W),
    upstream's [0, 1] scale."""

    def __init__(self, cfg: MosoConfig):
        super().__init__()
        width = cfg.num_hiddens
        self.scene_factor = 2 ** (cfg.ds_background - cfg.ds_content)
        self.object_factor = 2 ** (cfg.ds_identity - cfg.ds_content)
        self.merge = MergeModule(width, cfg.ds_motion - cfg.ds_content)
        self._pre_layer = nn.Conv2d(width, width, 3, padding=1)
        self._residual = ResidualStack(width, cfg.ds_content, cfg.num_residual_hiddens)  # upstream: ds_content blocks
        self._layers = nn.ModuleList(
            nn.ConvTranspose2d(width, width // 2 if i == cfg.ds_content - 1 else width, 5, stride=2, padding=2)
            for i in range(cfg.ds_content)
        )
        self._last_layer = nn.Conv2d(width // 2, cfg.in_channels, 3, padding=1)

    def forward(self, scene: torch.Tensor, obj: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        n, k = motion.shape[:2]
        scene = repeat(_upsample(scene, self.scene_factor), "n c h w -> (n k) c h w", k=k)
        obj = repeat(_upsample(obj, self.object_factor), "n c h w -> (n k) c h w", k=k)
        x = self.merge(scene, obj, motion.flatten(0, 1))  # (N*k, C, h, w)
        x = self._residual(self._pre_layer(x))
        for layer in self._layers:
            x = F.gelu(layer(x, output_size=(2 * x.shape[2], 2 * x.shape[3])))
        return rearrange(self._last_layer(x), "(n k) c h w -> n k c h w", n=n)


# --- the autoencoder -------------------------------------------------------------------------------


def second_difference(frames: torch.Tensor, *, outer_frames: bool = False) -> torch.Tensor:
    """2 x_t - x_{t-1} - x_{t+1}: (N, k, C, H, W) -> (N, k, C, H, W), the end frames repeated outward; with
    `outer_frames`, (N, k + 2, C, H, W) -> (N, k, C, H, W) for the k inner frames, their neighbours all given."""
    if not outer_frames:
        frames = torch.cat([frames[:, :1], frames, frames[:, -1:]], dim=1)  # (N, k + 2, C, H, W)
    return 2 * frames[:, 1:-1] - frames[:, :-2] - frames[:, 2:]


class MosoAutoencoder(Autoencoder):
    type = "moso"
    Config = MosoConfig

    @classmethod
    def recognizes_state(cls, state: dict[str, torch.Tensor]) -> bool:
        return "_vq_ema.embeddings" in state and "_encoder_mo._attention.w_qs.weight" in state

    @classmethod
    def arch_from_state(cls, state: dict[str, torch.Tensor]) -> dict:
        """Sizes from the tensors. The attention heads assume upstream's 64 dimensions per head (one head
        when narrower); `resolution` and `time_head` leave no trace in the weights (defaults or `arch`)."""
        width = state["_encoder_bg._layers.0.0.weight"].shape[0]
        embedding_dim, num_embeddings = state["_vq_ema.embeddings"].shape
        attention_width = state["_encoder_mo._attention.w_qs.weight"].shape[0]
        heads = max(1, attention_width // 64)
        return dict(
            in_channels=state["_encoder_bg._layers.0.0.weight"].shape[1],
            num_hiddens=width,
            frames=state["_encoder_bg._suf_layer.0.weight"].shape[1] // width,
            num_residual_layers=count_indices(state, r"_encoder_bg\._residual\._layers\.(\d+)\."),
            num_residual_hiddens=state["_encoder_bg._residual._layers.0.0.weight"].shape[0],
            embedding_dim=embedding_dim,
            num_embeddings=num_embeddings,
            ds_background=count_indices(state, r"_encoder_bg\._layers\.(\d+)\."),
            ds_identity=count_indices(state, r"_encoder_id\._layers\.(\d+)\."),
            ds_motion=count_indices(state, r"_encoder_mo\._layers\.(\d+)\."),
            ds_content=count_indices(state, r"_decoder\._layers\.(\d+)\."),
            num_heads=heads,
            head_dim=attention_width // heads,
        )

    @property
    def codebook_size(self) -> int:
        return self.config.num_embeddings

    def __init__(self, config: MosoConfig):
        super().__init__(config)
        width, dim = config.num_hiddens, config.embedding_dim
        self._encoder_bg = ContentEncoder(config, config.ds_background)
        self._encoder_id = ContentEncoder(config, config.ds_identity)
        self._encoder_mo = MotionEncoder(config)
        self._decoder = Decoder(config)
        self._pre_vq_bg, self._pre_vq_id, self._pre_vq_mo = (nn.Conv2d(width, dim, 1) for _ in range(3))
        self._suf_vq_bg, self._suf_vq_id, self._suf_vq_mo = (nn.ConvTranspose2d(dim, width, 1) for _ in range(3))
        self._vq_ema = EMAVectorQuantizer(
            config.num_embeddings,
            dim,
            commitment_cost=config.commitment_cost,
            decay=config.decay,
            epsilon=config.epsilon,
        )
        self.split_inputs = False  # set by the training objective during upstream's split-input phase

    # --- sizes ---
    @property
    def frames_per_latent(self) -> int:
        return self.config.frames

    @property
    def context_frames(self) -> int:
        return int(self.config.motion_context == "neighbours")

    def token_grids(self) -> dict[str, tuple[int, ...]]:
        """Token grid of each stream, in latent order: scene (Hs, Ws), object (Ho, Wo), motion (k, Hm, Wm)."""
        c = self.config
        return {
            "scene": (c.grid(c.ds_background),) * 2,
            "object": (c.grid(c.ds_identity),) * 2,
            "motion": (c.frames, *(c.grid(c.ds_motion),) * 2),
        }

    def latent_dims(self, height: int, width: int) -> tuple[int, ...]:
        if (height, width) != (self.config.resolution,) * 2:
            raise VptError(
                f"moso autoencoder is built for {self.config.resolution}x{self.config.resolution} frames, "
                f"got {height}x{width} (set autoencoder.arch.resolution or resize the frames)"
            )
        return (1, sum(math.prod(grid) for grid in self.token_grids().values()))

    # --- encoding ---
    def _check_clips(self, clips: torch.Tensor) -> None:
        n, k, _, height, width = clips.shape
        self.latent_dims(height, width)
        if k != self.config.frames + 2 * self.context_frames:
            outer = " and the frame before and after it (motion_context: neighbours)" if self.context_frames else ""
            raise VptError(f"moso autoencoder encodes clips of {self.config.frames} frames{outer}, got {k} frames")

    def _stream_inputs(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[-1, 1] clips (N, k + 2c, C, H, W) -> (scene, object, motion) encoder inputs (N, k, C, H, W) each, on
        upstream's [0, 1] scale; context frames (c = 1) enter the motion input only."""
        frames = (clips + 1) / 2
        motion = second_difference(frames, outer_frames=bool(self.context_frames))
        frames = self.without_context(frames)
        if not (self.split_inputs and self.training):
            return frames, frames, motion
        change = motion.abs().amax(dim=2, keepdim=True)  # (N, k, 1, H, W)
        moving = ((change >= SPLIT_BAND[0]) & (change <= SPLIT_BAND[1])).to(frames.dtype)
        return frames * (1 - moving), frames * moving, motion

    def _features(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pre-quantisation vectors: scene (N, D, Hs, Ws), object (N, D, Ho, Wo), motion (N*k, D, Hm, Wm)."""
        self._check_clips(clips)
        scene, obj, motion = self._stream_inputs(clips)
        return {
            "scene": self._pre_vq_bg(self._encoder_bg(scene)),
            "object": self._pre_vq_id(self._encoder_id(obj)),
            "motion": self._pre_vq_mo(self._encoder_mo(motion).flatten(0, 1)),
        }

    def _clip_tokens(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, k + 2c, C, H, W) -> scene (N, Hs, Ws), object (N, Ho, Wo), motion (N, k, Hm, Wm) int64."""
        features = self._features(clips)
        found = {name: self._vq_ema.nearest(value) for name, value in features.items()}
        found["motion"] = found["motion"].unflatten(0, (len(clips), -1))
        return found

    def tokens(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, T, H, W) in [-1, 1], T = arch.frames (+ 2 with motion_context: neighbours) -> {scene (B, Hs, Ws), object (B, Ho, Wo),
        motion (B, T, Hm, Wm)}, int64 code indices."""
        return self._clip_tokens(rearrange(video, "b c t h w -> b t c h w"))

    def encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        return self.join_tokens(self._clip_tokens(clips)).float()

    def join_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """{scene, object, motion} -> (N, 1, L) in the latent layout (token ids, int64)."""
        return torch.cat([tokens[name].flatten(1) for name in self.token_grids()], dim=1)[:, None]

    def split_latent(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cached latents (N, 1, L) (token ids as floats) -> {scene (N, Hs, Ws), object (N, Ho, Wo), motion
        (N, k, Hm, Wm)} int64; the inverse of `join_tokens`."""
        grids = self.token_grids()
        expected = sum(math.prod(grid) for grid in grids.values())
        if latents.shape[-1] != expected:
            raise VptError(f"moso latents must have length {expected}, got {latents.shape[-1]}")
        ids = latents.flatten(1).round().long().clamp_(0, self.config.num_embeddings - 1)
        pieces = ids.split([math.prod(grid) for grid in grids.values()], dim=-1)
        return {name: piece.unflatten(-1, grid) for (name, grid), piece in zip(grids.items(), pieces)}

    # --- what the RSVP-M diffusion model sees ---
    def diffusion_input(self, motion_tokens: torch.Tensor) -> torch.Tensor:
        """Motion tokens (B, T, Hm, Wm) -> codes through the motion suffix conv, (B, num_hiddens, T, Hm, Wm):
        upstream's `x` for its MosoModel."""
        batch = motion_tokens.shape[0]
        features = self._suf_vq_mo(self._vq_ema.lookup(motion_tokens.flatten(0, 1)))  # (B*T, C, Hm, Wm)
        return rearrange(features, "(b t) c h w -> b c t h w", b=batch)

    def _content_features(
        self, scene_tokens: torch.Tensor, object_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> scene (B, C, Hs, Ws) and object (B, C, Ho, Wo) codes through their suffix convs."""
        return self._suf_vq_bg(self._vq_ema.lookup(scene_tokens)), self._suf_vq_id(self._vq_ema.lookup(object_tokens))

    def context(self, scene_tokens: torch.Tensor, object_tokens: torch.Tensor) -> torch.Tensor:
        """Scene (B, Hs, Ws) and object (B, Ho, Wo) tokens -> (B, Hs*Ws + Ho*Wo, num_hiddens): scene then
        object code vectors, each through its suffix conv and flattened row-major, as upstream feeds
        its cross-attention."""
        scene, obj = self._content_features(scene_tokens, object_tokens)
        return torch.cat([rearrange(scene, "b c h w -> b (h w) c"), rearrange(obj, "b c h w -> b (h w) c")], dim=1)

    def decode_diffusion(
        self, x: torch.Tensor, scene_tokens: torch.Tensor, object_tokens: torch.Tensor
    ) -> torch.Tensor:
        """A sampled motion latent x (B, num_hiddens, T, Hm, Wm) with the clip's scene and object tokens ->
        video (B, C, T, H, W), roughly [-1, 1]. As upstream, x goes to the decoder as it is: no rounding
        to the nearest code (x lives after the suffix conv, where the codes have no fixed positions)."""
        scene, obj = self._content_features(scene_tokens, object_tokens)
        frames = self._decoder(scene, obj, rearrange(x, "b c t h w -> b t c h w"))
        return rearrange(2 * frames - 1, "b t c h w -> b c t h w")

    # --- decoding ---
    def decode_tokens(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """{scene, object, motion} token ids -> frames (N, k, C, H, W) in roughly [-1, 1]."""
        video = self.decode_diffusion(self.diffusion_input(tokens["motion"]), tokens["scene"], tokens["object"])
        return rearrange(video, "b c t h w -> b t c h w")

    def decode_clips(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decode_tokens(self.split_latent(latents))

    def forward_train(self, clips: torch.Tensor, *, move_codes: bool = True) -> TrainOutput:
        """`move_codes=False`: the codebook stays where it is (MOSO's discriminator phase, see `EMAVectorQuantizer`)."""
        features = self._features(clips)
        # one codebook, three calls in upstream's order: each training call moves the codebook the next one sees
        quantized = {name: self._vq_ema(value, move_codes=move_codes) for name, value in features.items()}
        scene = self._suf_vq_bg(quantized["scene"].quantized)
        obj = self._suf_vq_id(quantized["object"].quantized)
        motion = self._suf_vq_mo(quantized["motion"].quantized).unflatten(0, (len(clips), -1))  # (N, k, C, Hm, Wm)
        frames = 2 * self._decoder(scene, obj, motion) - 1
        return TrainOutput(frames, {"codebook": sum(q.loss for q in quantized.values())})

    def last_layer(self) -> nn.Parameter:
        return self._decoder._last_layer.weight

    def build_objective(self, loss_config, *, grad_accum: int = 1, perceptual: nn.Module | None = None) -> nn.Module:
        from vpt.models.autoencoders.moso_objective import MosoObjective

        return MosoObjective(self, loss_config, grad_accum=grad_accum, perceptual=perceptual)

    def identity(self) -> dict:
        return {
            **super().identity(),
            "layout": {name: list(grid) for name, grid in self.token_grids().items()},
            "latent_kind": "token_ids",
        }
