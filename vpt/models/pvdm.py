"""PVDM: latent diffusion over projected triplane video latents (Yu et al., "Video Probabilistic
Diffusion Models in Projected Latent Space", CVPR 2023).

One file, in reading order: config, the triplane UNet (time embedding, ResBlocks, per-plane and joint
attention, the network), the diffusion maths (β schedule, DDIM loop with upstream's time grid), the
`pvdm` backend (training from frames or cached latents, clip-by-clip prediction) and the converter
for the released diffusion checkpoints.

The autoencoder (`autoencoder.type: pvdm`) turns a clip of 16 frames into three 2-D latent planes,
stored flat as one (c, L) tensor: [xy (h·w) | yt (t·w) | xt (t·h)], h = w the spatial latent side and
t the latent frame count. The UNet runs every block on each plane separately with the SAME weights
(2-D convolutions, 2-D attention inside a plane), then lets all tokens of the three planes attend to
each other once (a joint 1-D attention after every block). The conditional model sees the previous
clip's latent stacked on the channels; with no previous clip, a zero latent.

Differences from upstream (docs/upstream-differences.md): plane sizes come from the config instead of
the hard-coded 32 / 16 / 2048; any `attention_resolutions` works (upstream needs 1 in the list or
fails at construction); no gradient checkpointing; `loss_type` and `num_timesteps` are honoured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from einops import rearrange
from torch import nn

from vpt.errors import ConfigError, UsageError
from vpt.models.attention import attention
from vpt.models.backend import EvalProtocol
from vpt.models.diffusion import DiffusionTables, ddim_sample, ddim_time_pairs
from vpt.models.embeddings import sinusoidal_embedding
from vpt.models.latent import LatentBackend, build_autoencoder, clip_from_batch
from vpt.models.unet import GroupNorm32, ResBlock, UNetBlock, check_unet_fields, zero_init
from vpt.weights import UnsafeWeightsError, read_weights, settings_beside, strip_module_prefix

# --- config -----------------------------------------------------------------------------------------


@dataclass
class PVDMConfig:
    """The `model:` section of a PVDM run (defaults: the released UCF-101 / SkyTimelapse model)."""

    # Frozen PVDM autoencoder: a `vpt train-ae` run (autoencoder.type pvdm) or its released weights.
    autoencoder: Optional[str] = None
    latent_channels: int = 4
    latent_size: int = 32  # h = w of the xy plane (frame size / AE patch size)
    latent_frames: int = 16  # t of the yt and xt planes
    # UNet
    model_channels: int = 256  # GroupNorm of 32 groups: a multiple of 32
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [4, 2, 1])  # downsample factors with 2-D attention
    num_heads: int = 8
    dropout: float = 0.0
    cond_model: bool = True  # next clip from the previous clip's latent (False: unconditional clips)
    cond_prob: float = 0.3  # training: share of batches with a real condition (upstream: UCF-101 0.3, SKY 0.2)
    # Diffusion: β_t = (linspace(√linear_start, √linear_end, num_timesteps))², ε-prediction, fixed variance.
    num_timesteps: int = 1000
    linear_start: float = 0.0015
    linear_end: float = 0.0195
    loss_type: Literal["l2", "l1"] = "l2"  # upstream's YAML says l1 but never passes it on: l2 is what trained
    # Sampling defaults of `predict` (`vpt sample --steps/--option` override them).
    steps: int = 100  # DDIM steps on upstream's truncated grid (the released models: 100 or 400)
    eta: float = 1.0
    w: float = 0.0  # guidance: (1 + w) ε(x, c) - w ε(x, 0)
    context_frames: int = 16  # one clip

    def __post_init__(self) -> None:
        check_unet_fields(self, ("latent_size", "latent_frames"))
        if not 0.0 <= self.cond_prob <= 1.0:
            raise ValueError(f"model.cond_prob must be in [0, 1], got {self.cond_prob}")

    def plane_shapes(self) -> list[tuple[int, int]]:
        """(rows, cols) of the xy, yt and xt planes, in their order in the flat latent."""
        side, frames = self.latent_size, self.latent_frames
        return [(side, side), (frames, side), (frames, side)]

    @property
    def latent_length(self) -> int:
        """L: tokens of the three planes together (2048 for the released models)."""
        return sum(rows * cols for rows, cols in self.plane_shapes())


# --- the triplane UNet ------------------------------------------------------------------------------


class TokenAttention(nn.Module):
    """Self-attention over the positions of (N, C, *positions): GN, 1x1 qkv, heads, zero-init 1x1 out,
    residual. The qkv channels are laid out per head as [q | k | v] (ADM's "legacy" order), so that
    released weights load as they are. Used inside one plane (2-D attention) and across all tokens
    of the three planes (the joint 1-D attention)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2)  # (N, C, L)
        qkv = rearrange(self.qkv(self.norm(tokens)), "n (h three d) l -> three n h l d", three=3, h=self.num_heads)
        q, k, v = qkv.contiguous()  # strided inputs send CPU SDPA to its slow reference kernel
        out = attention(q, k, v)  # (N, heads, L, d); scale 1/√d as ADM's d^-¼ on q and on k
        out = self.proj_out(rearrange(out, "n h l d -> n (h d) l"))
        return (tokens + out).reshape(x.shape)


class TriplaneUNet(nn.Module):
    """ε(x_t, c, t): (B, c, L) noisy triplane latents (+ the (B, c, L) condition) -> (B, c, L).

    Module names follow upstream's `UNetModel`, so released weights load after dropping the
    `diffusion_model.` prefix.
    """

    def __init__(self, cfg: PVDMConfig):
        super().__init__()
        self.plane_shapes = cfg.plane_shapes()
        self.model_channels = cfg.model_channels
        self.cond_model = cfg.cond_model
        channels, heads = cfg.latent_channels, cfg.num_heads
        if cfg.cond_model:  # the condition of a clip without a predecessor (and of `forward(x, None, t)`)
            self.register_buffer("zeros", torch.zeros(1, channels, cfg.latent_length))
        emb_channels = 4 * cfg.model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )

        def res_block(ch_in: int, ch_out: int, resample=None) -> ResBlock:
            return ResBlock(ch_in, emb_channels, ch_out, cfg.dropout, resample)

        first_in = channels * (2 if cfg.cond_model else 1)
        self.input_blocks = nn.ModuleList([UNetBlock(nn.Conv2d(first_in, cfg.model_channels, 3, padding=1))])
        self.input_attns = nn.ModuleList([nn.Identity()])
        skip_channels, ch, factor = [cfg.model_channels], cfg.model_channels, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                if factor in cfg.attention_resolutions:
                    layers.append(TokenAttention(ch, heads))
                self._add_input(UNetBlock(*layers), ch, heads, skip_channels)
            if level != len(cfg.channel_mult) - 1:
                self._add_input(UNetBlock(res_block(ch, ch, "down")), ch, heads, skip_channels)
                factor *= 2
        self.middle_block = UNetBlock(res_block(ch, ch), TokenAttention(ch, heads), res_block(ch, ch))
        self.mid_attn = TokenAttention(ch, heads)
        self.output_blocks, self.output_attns = nn.ModuleList(), nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for index in range(cfg.num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                if factor in cfg.attention_resolutions:
                    layers.append(TokenAttention(ch, heads))
                if level and index == cfg.num_res_blocks:
                    layers.append(res_block(ch, ch, "up"))
                    factor //= 2
                self.output_blocks.append(UNetBlock(*layers))
                self.output_attns.append(TokenAttention(ch, heads))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, channels, 3, padding=1)))

    def _add_input(self, block: UNetBlock, ch: int, heads: int, skip_channels: list[int]) -> None:
        self.input_blocks.append(block)
        self.input_attns.append(TokenAttention(ch, heads))
        skip_channels.append(ch)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, t: torch.Tensor) -> torch.Tensor:
        """x (B, c, L), cond (B, c, L) or None (the zero condition), t (B,) integer steps -> (B, c, L)."""
        emb = self.time_embed(sinusoidal_embedding(t, self.model_channels).to(x.dtype))  # (B, 4 model_channels)
        h = x
        if self.cond_model:
            h = torch.cat([h, self.zeros.expand(len(x), -1, -1) if cond is None else cond], dim=1)  # (B, 2c, L)
        planes = self._split(h, self.plane_shapes)
        skips = []
        for block, joint in zip(self.input_blocks, self.input_attns):
            planes = self._joint(joint, [block(plane, emb) for plane in planes])
            skips.append(planes)
        planes = self._joint(self.mid_attn, [self.middle_block(plane, emb) for plane in planes])
        for block, joint in zip(self.output_blocks, self.output_attns):
            skip = skips.pop()
            planes = self._joint(joint, [block(torch.cat([plane, s], dim=1), emb) for plane, s in zip(planes, skip)])
        return torch.cat([self.out(plane).flatten(2) for plane in planes], dim=-1).type(x.dtype)

    @staticmethod
    def _split(tokens: torch.Tensor, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """(N, C, L) -> one (N, C, rows, cols) map per plane."""
        sizes = [rows * cols for rows, cols in shapes]
        return [part.reshape(*part.shape[:2], *shape) for part, shape in zip(tokens.split(sizes, dim=-1), shapes)]

    def _joint(self, joint: nn.Module, planes: list[torch.Tensor]) -> list[torch.Tensor]:
        """The joint attention over the tokens of all three planes (identity after the first conv)."""
        if isinstance(joint, nn.Identity):
            return planes
        tokens = joint(torch.cat([plane.flatten(2) for plane in planes], dim=-1))  # (N, C, L_level)
        return self._split(tokens, [tuple(plane.shape[-2:]) for plane in planes])


# --- the backend ------------------------------------------------------------------------------------


class PVDM(DiffusionTables, LatentBackend):
    """PVDM on the shared backend surface: `loss` (ε-prediction DDPM on triplane latents, with the
    previous clip as condition) and `predict` (clip-by-clip DDIM rollout)."""

    name = "pvdm"
    Config = PVDMConfig
    generates_without_context = True  # the first clip comes from the zero condition

    def __init__(self, cfg: PVDMConfig, autoencoder: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.unet = TriplaneUNet(cfg)
        self._register_schedule(cfg)
        self._attach_autoencoder(autoencoder)

    def _check_latents(self, latents: torch.Tensor) -> None:
        """Latent clips are (..., c, L); L must be the token count of the configured planes."""
        channels, length = latents.shape[-2:]
        if channels != self.cfg.latent_channels or length != self.cfg.latent_length:
            raise ConfigError(
                f"the autoencoder gives latents of {channels} x {length} but the model expects "
                f"{self.cfg.latent_channels} x {self.cfg.latent_length} (model.latent_channels, and planes of "
                f"model.latent_size={self.cfg.latent_size}, latent_frames={self.cfg.latent_frames}); set them to "
                f"the autoencoder's"
            )

    @property
    def clip_frames(self) -> int:
        """Frames per latent clip (the autoencoder's; 16 for PVDM's)."""
        return self._require_autoencoder().frames_per_latent

    # --- training -------------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε for (B, c, L) latents and (B,) steps."""
        return (
            self.sqrt_alphas_cumprod[t][:, None, None] * x0
            + self.sqrt_one_minus_alphas_cumprod[t][:, None, None] * noise
        )

    def diffusion_loss(
        self, x0: torch.Tensor, cond: torch.Tensor | None, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Mean over (c, L) of the ε error per clip (squared, or absolute with loss_type l1), then over the batch."""
        error = self.unet(self.q_sample(x0, t, noise), cond, t).float() - noise
        per_clip = (error.abs() if self.cfg.loss_type == "l1" else error**2).mean(dim=(1, 2))
        return per_clip.mean()

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """One diffusion step per clip, t ~ U{0..T-1}.

        The conditional model (as upstream, one draw per batch): with probability `cond_prob` the
        target is a clip and the condition the clip right before it; otherwise the target is a clip
        window at a random start (any frame; latents: any clip) and the condition is zero. Batches of
        frames (T >= 2 clips for the conditional model) are encoded here; cached latents are
        (B, n, c, L) clips. A clip the loader padded in front with black frames (data.pad_short: the
        batch's "padded_frames" > 0) gets a zero condition and, without one drawn, its last clip as
        the target, as upstream's trainer treats clips whose condition half is black."""
        clip, is_latent = clip_from_batch(batch)
        span = 1 if is_latent else self.clip_frames  # positions per latent clip along axis 1
        positions = clip.shape[1]
        conditioned = self.cfg.cond_model and bool(torch.rand(()) < self.cfg.cond_prob)
        needed = (2 if self.cfg.cond_model else 1) * span
        if positions < needed:
            unit = "latent clips" if is_latent else "frames"
            what = "a condition clip and its successor" if self.cfg.cond_model else "one clip"
            raise ConfigError(
                f"pvdm trains on clips of {needed} {unit} ({what}) or more, got {positions} (data.frames)"
            )

        def latent_at(start: int) -> torch.Tensor:  # (B, c, L) latent of the clip at `start`
            piece = clip[:, start : start + span]
            latents = piece if is_latent else self.encode(piece)
            self._check_latents(latents)
            return latents[:, 0].float()

        def random_start(choices: int) -> int:  # one choice takes no draw, as upstream's fixed condition split
            return int(torch.randint(0, choices, ())) if choices > 1 else 0

        padded_frames = batch.get("padded_frames") if isinstance(batch, dict) else None  # (B,) or None
        padded = None if padded_frames is None else (padded_frames > 0).to(clip.device)[:, None, None]  # (B, 1, 1)
        if conditioned:
            start = random_start(positions - 2 * span + 1)
            cond, target = latent_at(start), latent_at(start + span)
            if padded is not None:
                cond = cond.masked_fill(padded, 0.0)
        else:
            start = random_start(positions - span + 1)
            target = latent_at(start)
            if padded is not None and bool(padded.any()):
                target = torch.where(padded, latent_at(positions - span), target)  # the real frames are last
            cond = torch.zeros_like(target) if self.cfg.cond_model else None
        t = torch.randint(0, self.cfg.num_timesteps, (len(target),), device=target.device)
        return {"loss": self.diffusion_loss(target, cond, t, torch.randn_like(target))}

    # --- sampling -------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        context: torch.Tensor,
        num_frames: int,
        *,
        prompt: list[str] | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        eta: float | None = None,
        w: float | None = None,
    ) -> torch.Tensor:
        """(B, n, 3, H, W) context in [-1, 1] -> (B, num_frames, 3, H, W), one clip at a time.

        Each clip is conditioned on the latent of the clip before it: the newest clip of the context
        first, then the previous predicted clip. A context shorter than a clip is padded in front with
        black frames (-1), as upstream's loader pads short videos; an empty one starts from the zero
        condition (generation). The last clip is cut to `num_frames`. Options: `steps` (DDIM steps),
        `eta`, `w` (guidance weight)."""
        self.check_request(prompt, num_frames)
        cond = self._context_latent(context)  # (B, c, L) or None
        clips = []
        for _ in range(-(-num_frames // self.clip_frames)):
            self.frames_started(len(context) * self.clip_frames)
            latent = self.sample_latents(len(context), cond, steps=steps, generator=generator, eta=eta, w=w)
            clips.append(latent)
            cond = latent if self.cfg.cond_model else None
            self.frames_done(len(context) * self.clip_frames)
        frames = self.decode(torch.stack(clips, dim=1))  # (B, clips * k, 3, H, W)
        return frames[:, :num_frames]

    def _context_latent(self, context: torch.Tensor) -> torch.Tensor | None:
        """The condition of the first predicted clip: the latent of the newest context clip."""
        k = self.clip_frames
        if not self.cfg.cond_model:
            if context.shape[1]:
                self.warn_once("pvdm: this model is unconditional (model.cond_model false); the context is ignored")
            return None
        if context.shape[1] == 0:
            return None
        if context.shape[1] < k:
            self.warn_once(
                f"pvdm: a context of {context.shape[1]} frames is padded in front with black frames to one "
                f"{k}-frame clip, as upstream pads short videos; the model saw such clips only rarely"
            )
            pad = context.new_full((context.shape[0], k - context.shape[1], *context.shape[2:]), -1.0)
            context = torch.cat([pad, context], dim=1)
        return self.encode(context[:, -k:])[:, 0].float()

    @torch.no_grad()
    def sample_latents(
        self,
        batch_size: int,
        cond: torch.Tensor | None,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        eta: float | None = None,
        w: float | None = None,
    ) -> torch.Tensor:
        """One (B, c, L) latent clip by DDIM, conditioned on `cond` (None: the zero condition)."""
        steps = self.cfg.steps if steps is None else steps
        if not 1 <= steps <= self.cfg.num_timesteps:
            raise UsageError(f"steps must be in 1..{self.cfg.num_timesteps}, got {steps}")
        eta = self.cfg.eta if eta is None else eta
        w = self.cfg.w if w is None else w
        device = self.betas.device
        draw_device = generator.device if generator is not None else device
        shape = (batch_size, self.cfg.latent_channels, self.cfg.latent_length)

        def draw() -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=draw_device).to(device)

        if self.cfg.cond_model and cond is None:
            cond = self.unet.zeros.expand(batch_size, -1, -1)
        self.unet.eval()

        def eps(x: torch.Tensor, t: int) -> torch.Tensor:
            steps_t = torch.full((batch_size,), t, device=device, dtype=torch.long)
            out = self.unet(x, cond, steps_t)
            if cond is None or w == 0:
                return out
            return (1 + w) * out - w * self.unet(x, torch.zeros_like(cond), steps_t)

        pairs = ddim_time_pairs(self.cfg.num_timesteps, steps)
        return ddim_sample(eps, draw(), pairs, self.schedule(), eta, draw)

    def sample_record(self, **options: Any) -> dict[str, Any]:
        return {
            "sampler": "ddim (upstream's truncated grid)",
            "steps": options.get("steps") or self.cfg.steps,
            "eta": self.cfg.eta if options.get("eta") is None else options["eta"],
            "w": self.cfg.w if options.get("w") is None else options["w"],
            "conditioning": "previous clip's latent" if self.cfg.cond_model else "none (unconditional)",
        }

    # --- published checkpoints -----------------------------------------------------------------------
    @classmethod
    def recognizes_checkpoint(cls, path: Path) -> bool:
        """True for a released PVDM diffusion file (`model_*.pth` / `ema_model_*.pth`): a bare state
        dict with `diffusion_model.input_attns.*` (the joint attention no other UNet has)."""
        try:
            state = strip_module_prefix(read_weights(path, mmap=True))
        except UnsafeWeightsError:
            raise
        except Exception:  # not a torch file, or not a state dict
            return False
        return any(str(key).startswith("diffusion_model.input_attns.") for key in state)

    @classmethod
    def from_checkpoint(cls, path: Path, *, autoencoder: str | Path | None = None, preset: str | None = None) -> PVDM:
        """A released diffusion checkpoint with its autoencoder (`--ae model_last.pth` or a train-ae run).

        The widths come from the weights, the plane sizes and the frame size from the autoencoder, the
        sampling settings and evaluation protocol from `preset` (PUBLISHED; the two releases sample
        alike, so UCF-101 stands in when it is not given)."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"checkpoint not found: {path}")
        if autoencoder is None:
            raise UsageError(f"{path.name}: pass --ae with the release's autoencoder (model_last.pth)")
        release = preset or "ucf101"
        if release not in PUBLISHED:
            raise UsageError(f"--preset {release}: unknown PVDM release; choose one of {', '.join(PUBLISHED)}")
        ae = build_autoencoder(str(autoencoder))
        if not hasattr(ae, "plane_shapes"):
            raise UsageError(f"--ae {autoencoder}: not a PVDM autoencoder (its latents are not triplanes)")
        planes = ae.plane_shapes()
        state = convert_upstream_unet(read_weights(path, mmap=True))
        fields = config_from_unet_state(state)
        # the heads are not in the weights: a config.json beside them, else the release's (its UNet size only)
        beside, source = settings_beside(path)
        for key, value in beside.items():
            if key in fields and value != fields[key]:
                raise ConfigError(
                    f"{source}: model.{key} is {value!r}, but the weights in {path.name} have {fields[key]!r}"
                )
        released = PVDMConfig()  # the released UNet's widths
        widths = ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions")
        if "num_heads" not in beside and any(fields[key] != getattr(released, key) for key in widths):
            raise ConfigError(
                f"{path.name} is not the released UNet size, and its weights do not say its attention heads: "
                f"set model.num_heads in a config.json beside it"
            )
        from vpt.config import validate

        cfg = validate(
            PVDMConfig,
            {
                **PUBLISHED[release]["model"],
                **beside,
                **fields,
                "latent_size": planes["xy"][0],
                "latent_frames": planes["yt"][0],
            },
            source=source or str(path),
            prefix="model.",
        )
        if "zeros" in state and state["zeros"].shape[-1] != cfg.latent_length:
            raise UsageError(
                f"{path.name} was trained on latents of {state['zeros'].shape[-1]} tokens, but --ae "
                f"{autoencoder} gives {cfg.latent_length}"
            )
        model = cls(cfg, autoencoder=ae)
        model.unet.load_state_dict(state)
        model.release = release
        model.frame_size = ae.config.resolution
        return model.eval()

    def default_protocol(self) -> EvalProtocol | None:
        release = getattr(self, "release", None)  # set only on published checkpoints
        return EvalProtocol(**PUBLISHED[release]["protocol"]) if release else None


#: The released models: the README's sampling ("400/400-s, eta=1") and the paper's 16-frame FVD
#: protocol (StyleGAN-V's, 2048 clips), here scored on the clip predicted from 16 real frames, at the
#: autoencoder's frame size (256 px for both releases).
_PAPER_PROTOCOL = dict(
    context_frames=16, predicted_frames=16, fvd_preset="stylegan-v", clips=2048, context_in_fvd=False
)
PUBLISHED: dict[str, dict[str, Any]] = {
    "ucf101": {"model": dict(steps=400, cond_prob=0.3, num_heads=8), "protocol": _PAPER_PROTOCOL},
    "sky": {"model": dict(steps=400, cond_prob=0.2, num_heads=8), "protocol": _PAPER_PROTOCOL},
}


# --- converter for the released diffusion checkpoints -------------------------------------------------


def convert_upstream_unet(state: Any) -> dict[str, torch.Tensor]:
    """A released `DiffusionWrapper` state dict (`diffusion_model.` prefix, optionally `module.` from
    DDP) -> `TriplaneUNet` names (the same names without the prefix), float32."""
    if not isinstance(state, dict) or not any(str(k).startswith(("diffusion_model.", "module.")) for k in state):
        raise UsageError("not a PVDM diffusion checkpoint: expected a state dict with 'diffusion_model.' keys")
    state = strip_module_prefix(state)
    return {
        key.removeprefix("diffusion_model."): value.float()
        for key, value in state.items()
        if key.startswith("diffusion_model.")
    }


def config_from_unet_state(state: dict[str, torch.Tensor], *, num_heads: int | None = None) -> dict[str, Any]:
    """PVDMConfig width fields read off converted UNet weights. The attention heads are not in the
    shapes: `num_heads` when given, else left out for the caller to take from the release or a config.

    Levels = output blocks holding an upsampling ResBlock + 1; every level has num_res_blocks + 1
    output blocks; input block 1 + level (num_res_blocks + 1) + r is the r-th ResBlock of a level."""
    model_channels, first_in = state["input_blocks.0.0.weight"].shape[:2]
    latent_channels = state["out.2.weight"].shape[0]
    outputs = len({key.split(".")[1] for key in state if key.startswith("output_blocks.")})
    ups = {key.split(".")[1] for key in state if re.match(r"output_blocks\.\d+\.[12]\.in_layers\.", key)}
    levels = len(ups) + 1
    per_level = outputs // levels  # num_res_blocks + 1
    channel_mult = [
        state[f"output_blocks.{(levels - 1 - level) * per_level}.0.out_layers.3.weight"].shape[0] // model_channels
        for level in range(levels)
    ]
    attention = [2**level for level in range(levels) if f"input_blocks.{1 + level * per_level}.1.qkv.weight" in state]
    return {
        "latent_channels": latent_channels,
        "model_channels": model_channels,
        "channel_mult": channel_mult,
        "num_res_blocks": per_level - 1,
        "attention_resolutions": attention[::-1],
        "cond_model": first_in == 2 * latent_channels,
        **({"num_heads": num_heads} if num_heads is not None else {}),
    }
