"""RSVP-M: latent diffusion over the motion tokens of a scene / object / motion VQ-VAE (MOSO), with the
given frames fixed by a mask (the `rsvp` backend; upstream: szhan227/RSVP, its `MosoModel` denoiser).

The first stage (`autoencoder.type: moso`) splits a clip of T frames into scene tokens, object tokens
(one grid each per clip) and motion tokens (one grid per frame). The denoiser sees the motion tokens
as continuous embeddings x (B, D, T, h, w) and cross-attends to the scene ++ object embeddings
(B, L, D). Which frames are given is a fixed mask over the T positions: training noises every
position, writes the clean embedding back at the given ones and learns ε at the others; sampling is
DDIM with the given positions reset after every step (inpainting).

One file, in reading order: config, the 3-D UNet (`MosoUNet`, upstream's names so its weights load
as they are), the masked objective and sampler, the backend. The ResBlocks, norms, DDIM grid and
loop are PVDM's (`vpt.models.pvdm`), run with 3-D convolutions.

Differences from upstream: the loss can leave the given positions out of its mean
(`loss_normalise: given_excluded`; upstream counts them as zeros); `predict` tokenises a clip whose
unknown frames are copies of the nearest given frame, where upstream's evaluation tokenised the whole
real clip (its scene and object tokens saw the frames it then predicted); the given frames are any set
of indices (upstream hard-codes the first half on `main`, frame 8 on its `MEA_new` branch); no
gradient checkpointing. RSVP published no metric, so there is nothing to reproduce beyond the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vpt.errors import ConfigError, UsageError
from vpt.models.attention import attention
from vpt.models.diffusion import DiffusionTables, ddim_sample, ddim_time_pairs
from vpt.models.embeddings import sinusoidal_embedding
from vpt.models.latent import LatentBackend, clip_from_batch
from vpt.models.unet import GroupNorm32, ResBlock, UNetBlock, check_unet_fields, zero_init

# --- config -----------------------------------------------------------------------------------------


@dataclass
class RSVPMConfig:
    """The `model:` section of an RSVP-M run (defaults: upstream's UCF-101 model at 256 px)."""

    # Frozen MOSO autoencoder: a `vpt train-ae` run with autoencoder.type moso.
    autoencoder: Optional[str] = None
    latent_channels: int = 256  # D: motion embedding width = UNet in/out channels = context width
    latent_size: int = 8  # h = w of the motion token grid
    clip_frames: int = 16  # T: frames per clip (one motion grid each)
    # Which of the T positions are given: N = the first N frames; a list = those frame indices
    # (upstream `main`: the first 8 of 16; its `MEA_new` branch: [8]).
    given_frames: int | list[int] = 8
    # UNet (upstream MosoModel: PVDM's widths, 3-D)
    model_channels: int = 256
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [4, 2, 1])  # downsample factors with a transformer
    num_heads: int = 8
    transformer_depth: int = 1
    dropout: float = 0.0
    # Diffusion: PVDM's β schedule, ε-prediction.
    num_timesteps: int = 1000
    linear_start: float = 0.0015
    linear_end: float = 0.0195
    loss_type: Literal["l1", "l2"] = "l1"  # RSVP changed the DDPM default to l1
    # all: mean over every element, the given ones counting as zero error (upstream);
    # given_excluded: mean over the predicted positions only (the loss no longer shrinks with more given frames).
    loss_normalise: Literal["all", "given_excluded"] = "all"
    # What the denoiser is conditioned on in training. whole_clip (upstream): the tokens of the real clip,
    # whose scene/object tokens and given motion tokens have seen the frames to predict; as_predicted:
    # the tokens `predict` can compute (the given frames with copies of the nearest one elsewhere), the
    # real clip only supplying the targets (needs frames: --ae on frame data, not cached tokens).
    train_tokens: Literal["whole_clip", "as_predicted"] = "whole_clip"
    # Sampling defaults of `predict`.
    steps: int = 100  # DDIM steps (upstream's validation)
    eta: float = 1.0
    clip_denoised: bool = True  # clamp x̂0 to [-1, 1] in every step, as upstream (embeddings beyond it get cut)

    def __post_init__(self) -> None:
        check_unet_fields(self, ("latent_size",))
        if self.clip_frames < 2:
            raise ValueError(f"model.clip_frames must be >= 2 (given and predicted frames), got {self.clip_frames}")
        given = self.given_indices()
        if not given or given[0] < 0 or given[-1] >= self.clip_frames - 1 or len(set(given)) != len(given):
            raise ValueError(
                f"model.given_frames ({self.given_frames}) must be a count in 1..{self.clip_frames - 1} or "
                f"distinct frame indices below {self.clip_frames - 1}, so that a frame after the last "
                f"given one is predicted"
            )

    def given_indices(self) -> list[int]:
        """The given frame positions of a clip, ascending."""
        if isinstance(self.given_frames, int):
            return list(range(self.given_frames)) if self.given_frames >= 1 else []
        return sorted(self.given_frames)


# --- the 3-D UNet -----------------------------------------------------------------------------------


class CrossAttention(nn.Module):
    """Multi-head attention of x (B, N, dim) to `context` (B, M, context_dim), or to itself without one.
    No biases on q, k, v (upstream's layout)."""

    def __init__(self, dim: int, heads: int, dropout: float, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        source = x if context is None else context
        q, k, v = (
            rearrange(proj(inp), "b n (h d) -> b h n d", h=self.heads)
            for proj, inp in ((self.to_q, x), (self.to_k, source), (self.to_v, source))
        )
        out = attention(q, k, v)  # (B, heads, N, d)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class GEGLU(nn.Module):
    """Linear to twice the width, one half gating the other through GELU."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """The GEGLU MLP of a transformer block: dim -> 4 dim (gated) -> dim."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention to the context and a GEGLU MLP (4x), each residual."""

    def __init__(self, dim: int, heads: int, dropout: float, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dropout)
        self.ff = FeedForward(dim, dropout)
        self.attn2 = CrossAttention(dim, heads, dropout, context_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # (B, N, dim), (B, M, context_dim)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTemporalTransformer(nn.Module):
    """Transformer blocks over all T·H·W positions of a (B, C, T, H, W) map: GroupNorm, 1x1x1 conv in,
    blocks, zero-init 1x1x1 conv out, residual."""

    takes_context = True

    def __init__(self, channels: int, heads: int, depth: int, dropout: float, context_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)  # upstream's eps here (the ResBlocks keep 1e-5)
        self.proj_in = nn.Conv3d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(channels, heads, dropout, context_dim) for _ in range(depth)]
        )
        self.proj_out = zero_init(nn.Conv3d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W), (B, M, D)
        frames, height, width = x.shape[2:]
        tokens = rearrange(self.proj_in(self.norm(x)), "b c t h w -> b (t h w) c")
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        out = rearrange(tokens, "b (t h w) c -> b c t h w", t=frames, h=height, w=width)
        return x + self.proj_out(out)


class MosoUNet(nn.Module):
    """ε(x_t, mask, t, context): (B, D, T, h, w) noisy motion embeddings, the (B, T, h, w) {0, 1} given
    mask, (B,) steps and the (B, L, D) scene ++ object context -> (B, D, T, h, w).

    ADM's UNet in 3-D: 3x3x3 convolutions, resampling over h and w only, a transformer at the listed
    downsample factors and in the middle. The mask enters as a learned D-wide embedding per position,
    concatenated to x. Module names are upstream's `MosoModel` (no wrapper prefix)."""

    def __init__(self, cfg: RSVPMConfig):
        super().__init__()
        self.model_channels = cfg.model_channels
        channels, emb_channels = cfg.latent_channels, 4 * cfg.model_channels
        self.mask_embed = nn.Embedding(2, channels)
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )

        def res_block(ch_in: int, ch_out: int, resample=None) -> ResBlock:
            return ResBlock(ch_in, emb_channels, ch_out, cfg.dropout, resample, dims=3)

        def transformer(ch: int) -> SpatialTemporalTransformer:
            return SpatialTemporalTransformer(ch, cfg.num_heads, cfg.transformer_depth, cfg.dropout, channels)

        self.input_blocks = nn.ModuleList([UNetBlock(nn.Conv3d(2 * channels, cfg.model_channels, 3, padding=1))])
        skip_channels, ch, factor = [cfg.model_channels], cfg.model_channels, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                ch_out = mult * cfg.model_channels
                attend = [transformer(ch_out)] if factor in cfg.attention_resolutions else []
                self.input_blocks.append(UNetBlock(res_block(ch, ch_out), *attend))
                ch = ch_out
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(UNetBlock(res_block(ch, ch, "down")))
                skip_channels.append(ch)
                factor *= 2
        self.middle_block = UNetBlock(res_block(ch, ch), transformer(ch), res_block(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for index in range(cfg.num_res_blocks + 1):
                ch_out = mult * cfg.model_channels
                layers = [res_block(ch + skip_channels.pop(), ch_out)]
                ch = ch_out
                if factor in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                if level and index == cfg.num_res_blocks:
                    layers.append(res_block(ch, ch, "up"))
                    factor //= 2
                self.output_blocks.append(UNetBlock(*layers))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), zero_init(nn.Conv3d(ch, channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(sinusoidal_embedding(t, self.model_channels).to(x.dtype))  # (B, 4 model_channels)
        mask_features = rearrange(self.mask_embed(mask), "b t h w c -> b c t h w").to(x.dtype)
        h = torch.cat([x, mask_features], dim=1)  # (B, 2D, T, h, w)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)
        return self.out(h)


# --- the backend ------------------------------------------------------------------------------------


class RSVPM(DiffusionTables, LatentBackend):
    """RSVP-M on the shared backend surface: `loss` (masked ε-prediction on motion embeddings) and
    `predict` (clip-by-clip inpainting: the newest known frames at the given positions, the frames
    after the last given one predicted). RSVP released no weights, so there is no `default_protocol`."""

    name = "rsvp"
    Config = RSVPMConfig

    def __init__(self, cfg: RSVPMConfig, autoencoder: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.unet = MosoUNet(cfg)
        self._register_schedule(cfg)
        self._attach_autoencoder(autoencoder)

    @property
    def context_frames(self) -> int:
        """Real frames `predict` needs: from the first to the last given position."""
        given = self.cfg.given_indices()
        return given[-1] - given[0] + 1

    @property
    def can_show_latents(self) -> bool:
        return self.autoencoder is not None and hasattr(self.autoencoder, "split_latent")

    def given_mask(self, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """(B, T, h, w) int64: 1 at the given frames."""
        mask = torch.zeros(
            batch_size,
            self.cfg.clip_frames,
            self.cfg.latent_size,
            self.cfg.latent_size,
            dtype=torch.long,
            device=device,
        )
        mask[:, self.cfg.given_indices()] = 1
        return mask

    # --- the first stage --------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(B, T, 3, H, W) frames in [-1, 1] -> x (B, D, T, h, w), context (B, L, D) and the tokens."""
        tokens = self._require_autoencoder().tokens(clip.transpose(1, 2))  # the AE reads (B, C, T, H, W)
        x, context = self.embed_tokens(tokens)
        return x, context, tokens

    @torch.no_grad()
    def embed_tokens(self, tokens: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene, object and motion token ids -> x (B, D, T, h, w) and context (B, L, D)."""
        ae = self._require_autoencoder()
        x = ae.diffusion_input(tokens["motion"]).float()
        self._check_motion(x)
        return x, ae.context(tokens["scene"], tokens["object"]).float()

    def _check_motion(self, x: torch.Tensor) -> None:
        expected = (self.cfg.latent_channels, self.cfg.clip_frames, self.cfg.latent_size, self.cfg.latent_size)
        if tuple(x.shape[1:]) != expected:
            raise ConfigError(
                f"the autoencoder gives motion embeddings of {tuple(x.shape[1:])} (D, T, h, w) but the "
                f"model expects {expected} (model.latent_channels, clip_frames, latent_size); set them "
                f"to the autoencoder's"
            )

    @torch.no_grad()
    def decode_motion(self, x: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Motion embeddings (B, D, T, h, w) with a clip's scene and object tokens -> (B, T, 3, H, W) frames."""
        video = self._require_autoencoder().decode_diffusion(x, tokens["scene"], tokens["object"])  # (B, C, T, H, W)
        return video.transpose(1, 2).clamp(-1.0, 1.0)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Cached token latents (B, n, L), one row per clip -> (B, n T, 3, H, W) frames."""
        ae = self._require_autoencoder()
        clips = []
        for index in range(latents.shape[1]):
            tokens = ae.split_latent(latents[:, index])
            clips.append(self.decode_motion(self.embed_tokens(tokens)[0], tokens))
        return torch.cat(clips, dim=1)

    # --- training ---------------------------------------------------------------------------------------
    def diffusion_loss(
        self, x0: torch.Tensor, mask: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """The masked ε objective for x0 (B, D, T, h, w), mask (B, T, h, w), steps (B,), noise like x0.

        x_t is x0 noised everywhere and then clean again at the given positions; the prediction is
        replaced by the target there, so only the predicted positions carry error (and gradient)."""
        given = mask[:, None].bool()  # (B, 1, T, h, w)
        scale = [-1] + [1] * (x0.dim() - 1)
        noisy = self.sqrt_alphas_cumprod[t].view(scale) * x0 + self.sqrt_one_minus_alphas_cumprod[t].view(scale) * noise
        noisy = torch.where(given, x0, noisy)
        predicted = torch.where(given, noise, self.unet(noisy, mask, t, context).float())
        error = (predicted - noise).abs() if self.cfg.loss_type == "l1" else (predicted - noise) ** 2
        if self.cfg.loss_normalise == "all":
            return error.mean()
        predicted_elements = (~given).expand_as(error).sum()
        return error.sum() / predicted_elements

    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """One diffusion step per clip, t ~ U{0..T-1}, on a window of `clip_frames` frames at a random
        start, or on one random clip of cached latents (`vpt save-latents`: (B, n, L) token ids as floats,
        one row per clip). A batch dict with `x` (B, D, T, h, w) and `context` (B, L, D) is used as it is."""
        x0, context = self._training_pair(batch)
        t = torch.randint(0, self.cfg.num_timesteps, (len(x0),), device=x0.device)
        mask = self.given_mask(len(x0), x0.device)
        return {"loss": self.diffusion_loss(x0, mask, t, torch.randn_like(x0), context)}

    def _training_pair(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, dict) and "x" in batch and "context" in batch:
            self._check_motion(batch["x"])
            return batch["x"].float(), batch["context"].float()
        clip, is_latent = clip_from_batch(batch)
        if is_latent:
            if self.cfg.train_tokens == "as_predicted":
                raise ConfigError(
                    "model.train_tokens: as_predicted tokenises the given frames anew, which cached "
                    "token latents cannot do; train on frames with --ae"
                )
            return self.embed_tokens(self._tokens_of_a_latent_clip(clip))
        frames = self.cfg.clip_frames
        if clip.shape[1] < frames:
            raise ConfigError(
                f"rsvp trains on clips of {frames} frames (model.clip_frames), got {clip.shape[1]} (data.frames)"
            )
        start = int(torch.randint(0, clip.shape[1] - frames + 1, ()))
        clip = clip[:, start : start + frames]  # (B, T, 3, H, W)
        x0, context, _tokens = self.embed(clip)
        if self.cfg.train_tokens == "whole_clip":
            return x0, context
        given = self.cfg.given_indices()
        x_seen, context_seen, _tokens = self.embed(self._clip_to_complete(list(clip[:, : given[-1] + 1].unbind(1))))
        is_given = torch.zeros(frames, dtype=torch.bool, device=x0.device)
        is_given[given] = True
        return torch.where(is_given.view(1, 1, -1, 1, 1), x_seen, x0), context_seen

    def _tokens_of_a_latent_clip(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, n, 1, L) cached token ids (save-latents stores a clip as (1, L)) -> the tokens of one clip at a
        random index, split by the autoencoder."""
        ae = self._require_autoencoder()
        latents = latents.flatten(2) if latents.dim() == 4 else latents  # (B, n, L)
        if latents.dim() != 3 or not hasattr(ae, "split_latent"):
            raise ConfigError(
                f"rsvp reads cached latents of a MOSO autoencoder ((clips, L) token ids per video), got "
                f"latents of shape {tuple(latents.shape[1:])}; train on frames with --ae instead"
            )
        index = int(torch.randint(0, latents.shape[1], ()))
        return ae.split_latent(latents[:, index])

    # --- sampling ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def inpaint(
        self,
        x_given: torch.Tensor,
        mask: torch.Tensor,
        context: torch.Tensor,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        eta: float | None = None,
    ) -> torch.Tensor:
        """DDIM over (B, D, T, h, w) motion embeddings whose given positions (mask 1) are `x_given`'s.

        As upstream, the start is pure noise everywhere and the given positions are written back after
        each step, the returned x̂0 included, so they come out exactly as given."""
        steps = self.cfg.steps if steps is None else steps
        if not 1 <= steps <= self.cfg.num_timesteps:
            raise UsageError(f"steps must be in 1..{self.cfg.num_timesteps}, got {steps}")
        eta = self.cfg.eta if eta is None else eta
        device = self.betas.device
        draw_device = generator.device if generator is not None else device
        given = mask[:, None].bool()

        def draw() -> torch.Tensor:
            return torch.randn(x_given.shape, generator=generator, device=draw_device).to(device)

        def eps(x: torch.Tensor, t: int) -> torch.Tensor:
            return self.unet(x, mask, torch.full((len(x),), t, device=device, dtype=torch.long), context)

        self.unet.eval()
        pairs = ddim_time_pairs(self.cfg.num_timesteps, steps)
        return ddim_sample(
            eps,
            draw(),
            pairs,
            self.schedule(),
            eta,
            draw,
            clip_denoised=self.cfg.clip_denoised,
            after_step=lambda x: torch.where(given, x_given, x),
        )

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
    ) -> torch.Tensor:
        """(B, n, 3, H, W) context in [-1, 1] -> (B, num_frames, 3, H, W), one clip at a time.

        Each clip puts the newest known frames (context, then predictions) at the given positions,
        the newest at the last given one; the frames after it are the prediction. Options: `steps`
        (DDIM steps), `eta`."""
        self.check_request(prompt, num_frames)
        if context.shape[1] < self.context_frames:
            raise UsageError(
                f"rsvp needs {self.context_frames} context frames (model.given_frames "
                f"{self.cfg.given_frames}), got {context.shape[1]}"
            )
        known = list(context.unbind(dim=1))
        last_given = self.cfg.given_indices()[-1]
        while len(known) < context.shape[1] + num_frames:
            self.frames_started(context.shape[0] * (self.cfg.clip_frames - last_given - 1))
            clip = self._clip_to_complete(known)  # (B, T, 3, H, W)
            x, cross_context, tokens = self.embed(clip)
            motion = self.inpaint(
                x, self.given_mask(len(x), x.device), cross_context, steps=steps, generator=generator, eta=eta
            )
            new = self.decode_motion(motion, tokens)[:, last_given + 1 :]
            known.extend(new.unbind(dim=1))
            self.frames_done(new.shape[0] * new.shape[1])
        return torch.stack(known[context.shape[1] : context.shape[1] + num_frames], dim=1)

    def _clip_to_complete(self, known: list[torch.Tensor]) -> torch.Tensor:
        """A clip with the newest known frames at the given positions (the newest at the last given
        one) and, at every other position, a copy of the nearest given frame (the tokeniser needs a
        whole clip; the motion there is then sampled)."""
        given = self.cfg.given_indices()
        newest = len(known) - 1
        frame_at = {p: known[newest - (given[-1] - p)] for p in given}
        nearest = [min(given, key=lambda g: (abs(g - p), -g)) for p in range(self.cfg.clip_frames)]
        return torch.stack([frame_at[g] for g in nearest], dim=1)

    def sample_record(self, **options: Any) -> dict[str, Any]:
        return {
            "sampler": "ddim (upstream's truncated grid), given positions reset after every step",
            "steps": options.get("steps") or self.cfg.steps,
            "eta": self.cfg.eta if options.get("eta") is None else options["eta"],
            "given_frames": self.cfg.given_indices(),
            "clip_frames": self.cfg.clip_frames,
            "clip_denoised": self.cfg.clip_denoised,
        }
