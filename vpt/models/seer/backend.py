"""The `seer` backend: language-instructed video prediction with an inflated SD v1.5 UNet.

Training: the first R frames of a clip are clean reference latents, the other F - R are
noised with SD's DDPM schedule; the UNet sees [reference, noisy] along the frame axis with FSText's
per-frame text and is scored by the MSE of its noise prediction on the target frames.
Sampling: DDIM with classifier-free guidance, the null branch being CLIP("") repeated
over frames without FSText.

Differences from upstream that change results are switches (docs/upstream-differences.md):
  sampler.schedule          "upstream" = the released sampler's betas, "train" = training betas
  sampler.reference_ff_skip false = upstream sampling (FF skip off), true = as in training
  cond_drop_prob            text dropout for CFG training (upstream 0)
  vae_latent                "sample" = upstream's VAE sample (also drawn from the posterior `vpt save-latents` keeps),
                            "mode" = posterior mode
  rotary_fp16_angles        upstream's fp16-rounded rotary angles under fp16 autocast
  clip_fstext               false = upstream's clipping of the UNet's gradient alone
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.nn.modules.module import _IncompatibleKeys

from vpt.errors import ConfigError, UsageError, VptError
from vpt.models.backend import Backend, EvalProtocol
from vpt.models.seer import weights
from vpt.models.seer.fstext import FSText
from vpt.models.seer.layers import RotaryEmbedding, sawt_window
from vpt.models.seer.schedule import TRAIN_TIMESTEPS, sampling_scheduler, training_scheduler, upstream_timesteps
from vpt.models.seer.text import builtin_text_encoder, builtin_tokenizer, encode_text
from vpt.models.seer.unet import SeerUNet, UNetSize
from vpt.progress import solver_step
from vpt.weights import check_pickled_weights


@dataclass
class UNetSection:
    """UNet size when no `pretrained` folder gives it (random initialisation)."""

    block_out_channels: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280])
    layers_per_block: int = 2
    heads: int = 8


@dataclass
class FSTextSection:
    layers: int = 8
    heads: int = 8
    pos_frames: int = 16  # frames of the stored position table (16 in every released checkpoint)


@dataclass
class TextSection:
    """The random CLIP text encoder + built-in tokenizer used when `pretrained` is empty."""

    hidden_size: int = 768  # also FSText's width and the UNet's cross-attention width
    layers: int = 12
    heads: int = 12
    max_length: int = 77


@dataclass
class SamplerSection:
    steps: int = (
        30  # requested DDIM steps; upstream's uniform discretisation runs len(range(0, 1000, 1000 // steps)): 31 for 30
    )
    guidance_scale: float = 7.5
    schedule: Literal["train", "upstream"] = "train"
    reference_ff_skip: bool = True
    eta: float = 0.0
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"  # autocast dtype on CUDA (CPU always fp32)


@dataclass
class SeerConfig:
    """The `model:` section of a Seer run."""

    pretrained: str = ""  # local SD v1.5 folder (diffusers layout: unet, vae, text_encoder, tokenizer)
    seer_checkpoint: str = ""  # released Seer step folder (pytorch_model.bin + pytorch_model_1.bin)
    fstext_init: str = ""  # FSText initial weights (upstream fstext_init/pytorch_model.bin)
    fstext_init_allow_partial: bool = False  # load fstext_init as upstream did (strict=False)
    vae: str = "pretrained"  # "pretrained" (<pretrained>/vae), "none" (diffuse pixels), or an AutoencoderKL folder
    vae_latent: Literal["sample", "mode"] = "sample"  # how frames encoded on the fly become latents
    latent_scale: Optional[float] = (
        None  # model latents = (z - latent_shift) * latent_scale; None: the VAE's scaling_factor, 1 for pixels
    )
    latent_shift: float = 0.0  # pixel-space models centre their frames with it (pure noise then matches the data mean)
    frames: int = 16  # F: frames per clip, reference frames included
    context_frames: int = 1  # R: reference frames given as context (the name `vpt train`/`sample` read)
    trainable: Literal["temporal", "all"] = (
        "temporal"  # temporal = upstream (SAWT blocks + FSText); all = whole UNet + FSText
    )
    cond_drop_prob: float = 0.0  # probability of training a clip on the null text (CFG)
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"  # upstream: epsilon (its v branch is unused)
    clip_fstext: bool = True  # gradient clipping covers FSText too; false = upstream (the UNet's gradient only)
    text_loss: bool = False  # add MSE(mean over frames of FSText, CLIP) (FSText initialisation objective)
    rotary_fp16_angles: bool = False
    gradient_checkpointing: bool = False
    init_seed: int = 0  # seeds the random initialisation, so a run's model is reproducible
    unet: UNetSection = field(default_factory=UNetSection)
    fstext: FSTextSection = field(default_factory=FSTextSection)
    text: TextSection = field(default_factory=TextSection)
    sampler: SamplerSection = field(default_factory=SamplerSection)

    def __post_init__(self) -> None:
        if not 0 < self.context_frames < self.frames:
            raise ValueError(f"model.context_frames must be in 1..frames-1, got {self.context_frames} of {self.frames}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"model.cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")
        # Absolute paths, so a run's config.yaml rebuilds the model from any working directory.
        for name in ("pretrained", "seer_checkpoint", "fstext_init"):
            if getattr(self, name):
                setattr(self, name, str(Path(getattr(self, name)).expanduser().absolute()))
        if self.vae not in ("pretrained", "none"):
            self.vae = str(Path(self.vae).expanduser().absolute())


class Seer(Backend):
    name = "seer"
    Config = SeerConfig
    takes_text = True

    @property
    def can_show_latents(self) -> bool:
        return True  # `decode` maps latents (or pixels) back to frames

    def __init__(self, config: SeerConfig):
        super().__init__()
        self.cfg = config  # `cfg`: what `vpt sample` records as the model config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            self._build(config)
        for module in self.modules():
            if isinstance(module, RotaryEmbedding):
                module.fp16_angles = config.rotary_fp16_angles
        self.unet.set_gradient_checkpointing(config.gradient_checkpointing)
        self.train_noise = training_scheduler(config.prediction_type)
        self._freeze()

    # --- construction -------------------------------------------------------------------------------
    def _build(self, cfg: SeerConfig) -> None:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer

        if cfg.vae == "pretrained" and not cfg.pretrained:
            raise ConfigError(
                "model.vae: 'pretrained' needs model.pretrained (an SD v1.5 folder); use 'none' for pixel space"
            )
        sd = weights.check_sd_folder(cfg.pretrained) if cfg.pretrained else None
        if sd is not None:
            self.tokenizer = CLIPTokenizer.from_pretrained(str(sd / "tokenizer"))
            check_pickled_weights(sd / "text_encoder")
            self.text_encoder = CLIPTextModel.from_pretrained(
                str(sd / "text_encoder"), dtype=torch.float32
            )  # fp32 as upstream
        else:
            self.tokenizer = builtin_tokenizer(cfg.text.max_length)
            self.text_encoder = builtin_text_encoder(
                len(self.tokenizer), cfg.text.hidden_size, cfg.text.layers, cfg.text.heads, cfg.text.max_length
            )
        text_dim = self.text_encoder.config.hidden_size

        vae_dir = {"pretrained": sd / "vae" if sd else None, "none": None}.get(cfg.vae, Path(cfg.vae).expanduser())
        if vae_dir is not None and not (vae_dir / "config.json").is_file():
            raise VptError(f"model.vae: no AutoencoderKL folder at {vae_dir}")
        if vae_dir is not None:
            check_pickled_weights(vae_dir)
        self.vae = (
            AutoencoderKL.from_pretrained(str(vae_dir), torch_dtype=torch.float32) if vae_dir is not None else None
        )
        self.latent_channels = self.vae.config.latent_channels if self.vae is not None else 3
        default_scale = float(self.vae.config.scaling_factor) if self.vae is not None else 1.0
        self.latent_scale = default_scale if cfg.latent_scale is None else cfg.latent_scale
        self.latent_shift = cfg.latent_shift

        if sd is not None:
            size = UNetSize.from_diffusers_config(sd / "unet" / "config.json")
        else:
            size = UNetSize(
                in_channels=self.latent_channels,
                out_channels=self.latent_channels,
                block_out_channels=list(cfg.unet.block_out_channels),
                layers_per_block=cfg.unet.layers_per_block,
                heads=cfg.unet.heads,
                cross_attention_dim=text_dim,
            )
        if size.in_channels != self.latent_channels or size.cross_attention_dim != text_dim:
            raise VptError(
                f"UNet ({size.in_channels} latent channels, cross-attention {size.cross_attention_dim}) does not fit "
                f"the VAE ({self.latent_channels}) / text encoder ({text_dim})"
            )
        self.unet = SeerUNet(size)
        if sd is not None and not cfg.seer_checkpoint:  # a released checkpoint holds the SD weights too
            weights.load_sd_unet(self.unet, sd)
        self.fstext = FSText(
            dim=text_dim,
            heads=cfg.fstext.heads,
            layers=cfg.fstext.layers,
            pos_frames=cfg.fstext.pos_frames,
            context_dim=text_dim,
        )
        if cfg.fstext_init:
            weights.load_fstext_init(self.fstext, cfg.fstext_init, allow_partial=cfg.fstext_init_allow_partial)
        if cfg.seer_checkpoint:
            weights.load_released(self.unet, self.fstext, cfg.seer_checkpoint)

        # Weights read from disk and never trained are left out of run checkpoints (`state_dict`); the
        # tuple holds whole keys (Backend.from_run matches them with str.startswith).
        on_disk = ([k for k in self.state_dict(keep_all=True) if k.startswith("text_encoder.")] if sd else []) + (
            [k for k in self.state_dict(keep_all=True) if k.startswith("vae.")] if vae_dir else []
        )
        if sd is not None and cfg.trainable == "temporal":
            on_disk += [f"unet.{k}" for k in self.unet.state_dict() if ".temporal_attentions." not in k]
        self.frozen_prefixes = tuple(on_disk)

    def _freeze(self) -> None:
        """Upstream's split: VAE, CLIP and every SD weight frozen; SAWT blocks and FSText trained."""
        self.requires_grad_(False)
        if self.cfg.trainable == "all":
            self.unet.requires_grad_(True)
        else:
            for param in self.unet.temporal_parameters():
                param.requires_grad_(True)
        self.fstext.requires_grad_(True)

    def param_groups(self) -> list[dict]:
        trained = [p for p in self.parameters() if p.requires_grad]
        if self.cfg.clip_fstext:
            return [{"params": trained}]
        fstext = {id(p) for p in self.fstext.parameters()}
        return [  # upstream clips the UNet's gradient alone and leaves FSText's as it is
            {"params": [p for p in trained if id(p) not in fstext]},
            {"params": [p for p in trained if id(p) in fstext], "grad_clip": False},
        ]

    def train(self, mode: bool = True) -> Seer:
        super().train(mode)
        self.text_encoder.eval()
        if self.vae is not None:
            self.vae.eval()
        return self

    # --- published checkpoints (`vpt sample --checkpoint DIR --ae SD15_DIR`) ------------------------------
    @classmethod
    def recognizes_checkpoint(cls, path: Path) -> bool:
        return weights.released_step_folder(Path(path)) is not None

    @classmethod
    def from_checkpoint(cls, path: Path, *, autoencoder: Path | None = None, preset: str | None = None) -> Seer:
        """A released Seer model: the step folder (or its parent) + an SD v1.5 folder for VAE, CLIP, tokenizer.

        R and F are not stored in the weights; they follow the release's folder name (sthv2_seer:
        2 + 10 frames, the others 1 + 15). Sampling defaults to the released sampler (its betas, no reference FF skip).
        """
        folder = weights.released_step_folder(Path(path))
        if folder is None:
            raise UsageError(
                f"{path}: not a released Seer folder (needs {weights.RELEASED_UNET} and {weights.RELEASED_FSTEXT})"
            )
        if autoencoder is None:
            raise UsageError(
                "a released Seer checkpoint needs Stable Diffusion v1.5 for its VAE and CLIP: "
                "pass --ae SD15_DIR (diffusers layout: vae/, unet/, text_encoder/, tokenizer/)"
            )
        context, frames = weights.released_clip_layout(folder)
        config = SeerConfig(
            pretrained=str(autoencoder),
            seer_checkpoint=str(folder),
            frames=frames,
            context_frames=context,
            sampler=SamplerSection(
                steps=30, guidance_scale=7.5, schedule="upstream", reference_ff_skip=False, precision="fp16"
            ),
        )
        model = cls(config).eval()
        if preset is not None:
            raise UsageError("a released Seer folder names its own setup (sthv2/bridge/epic); drop --release")
        model.frame_size, model.resize = 256, "crop"  # what the release was trained on (Resize + CenterCrop 256)
        return model

    def default_protocol(self) -> EvalProtocol:
        """The paper's protocol of one window: R reference frames -> F - R predicted, FVD on I3D logits."""
        return EvalProtocol(
            context_frames=self.cfg.context_frames,
            predicted_frames=self.cfg.frames - self.cfg.context_frames,
            fvd_preset="videogpt",
        )

    # --- checkpoints: leave out what `pretrained` supplies ---------------------------------------------
    def state_dict(self, *args, keep_all: bool = False, **kwargs):
        state = super().state_dict(*args, **kwargs)
        frozen = self.frozen_prefixes
        if keep_all or not frozen:
            return state
        prefix = kwargs.get("prefix", "")
        skip = set(prefix + k for k in frozen)
        for key in [k for k in state if k in skip]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        missing, unexpected = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = set(self.frozen_prefixes)
        missing = [k for k in missing if k not in frozen]
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"Seer checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        return _IncompatibleKeys(missing, unexpected)

    # --- latents and text -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    def encode(
        self, video: torch.Tensor, generator: torch.Generator | None = None, logvar: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T, 3, H, W) frames in [-1, 1] -> (B, T, c, h, w) model latents; latents from save-latents pass through,
        or with their stored log-variance `logvar` (B, T, c, h, w) and `vae_latent: sample` become a posterior sample,
        mean + std * eps, as encoding the frames draws it."""
        channels = video.shape[2]
        if self.vae is None and channels == 3:
            return (video - self.latent_shift) * self.latent_scale  # pixel space
        if self.vae is not None and channels == self.latent_channels:
            if logvar is None or self.cfg.vae_latent == "mode":
                return video  # already model-ready (save-latents: posterior mean x scaling factor)
            eps = torch.randn(video.shape, generator=generator, device=video.device, dtype=video.dtype)
            return video + torch.exp(0.5 * logvar.to(video.dtype)) * eps  # the scaled std: exp(logvar / 2)
        if self.vae is None or channels != 3:
            raise VptError(
                f"seer: clips have {channels} channels; this model takes 3-channel frames"
                + (f" or {self.latent_channels}-channel latents" if self.vae is not None else "")
            )
        frames = rearrange(video, "b t c h w -> (b t) c h w").to(self.vae.dtype)
        with torch.no_grad():
            posterior = self.vae.encode(frames).latent_dist
            latents = posterior.sample(generator) if self.cfg.vae_latent == "sample" else posterior.mode()
        return rearrange(
            (latents - self.latent_shift) * self.latent_scale, "(b t) c h w -> b t c h w", b=video.shape[0]
        )

    def check_latent_size(self, height: int, width: int) -> None:
        """Latents must halve cleanly at every level and fit the SAWT windows there (one line, not a shape error)."""
        levels = len(self.unet.size.block_out_channels)
        try:
            if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
                raise ValueError(f"each side must be divisible by {2 ** (levels - 1)}")
            for level in range(levels):
                sawt_window(height >> level, width >> level)
        except ValueError as exc:
            raise VptError(
                f"seer: {height}x{width} latents do not fit this model's UNet ({exc}); "
                "resize the frames (e.g. --size / data.image_size)"
            ) from None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, T, c, h, w) latents -> (B, T, 3, H, W) frames in [-1, 1]."""
        unscaled = latents / self.latent_scale + self.latent_shift
        if self.vae is None:
            return unscaled.clamp(-1, 1)
        flat = rearrange(unscaled, "b t c h w -> (b t) c h w").to(self.vae.dtype)
        with torch.no_grad():
            frames = torch.cat([self.vae.decode(chunk).sample for chunk in flat.split(16)])
        return rearrange(frames.clamp(-1, 1), "(b t) c h w -> b t c h w", b=latents.shape[0]).float()

    def clip_text(self, prompts: list[str]) -> torch.Tensor:
        """CLIP last hidden state (B, L, D), with the padding mask, as upstream."""
        return encode_text(self.tokenizer, self.text_encoder, prompts, self.device)

    def null_context(self, batch: int, frames: int) -> torch.Tensor:
        """The unconditional branch: CLIP("") repeated over frames, not passed through FSText."""
        return self.clip_text([""] * batch)[:, None].expand(-1, frames, -1, -1)  # (B, F, L, D)

    def _training_latents(
        self, video: torch.Tensor, logvar: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T >= F, C, H, W) clip (frames, or cached posterior means with their log-variance `logvar`) -> reference
        (B, R, c, h, w) and target (B, F - R, c, h, w) latents of its first F frames.

        Upstream's train.py encodes the predicted frames before the reference frames, so with `vae_latent:
        sample` the target's posterior noise is drawn first, as there.
        """
        reference, frames = self.cfg.context_frames, self.cfg.frames

        def latents(part: slice) -> torch.Tensor:
            return self.encode(video[:, part], logvar=None if logvar is None else logvar[:, part])

        target = latents(slice(reference, frames))
        return latents(slice(0, reference)), target

    # --- the Backend surface ----------------------------------------------------------------------------
    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        frames, reference = cfg.frames, cfg.context_frames
        video = batch["latents"] if "latents" in batch else batch["video"]  # latents: from `vpt save-latents`
        prompts = batch.get("text")
        if prompts is None:
            raise VptError("seer trains on captioned clips, but the data has no text (captions.json, SSv2 labels, ...)")
        if video.shape[1] < frames:
            raise ConfigError(
                f"seer: clips have {video.shape[1]} frames, model.frames is {frames} (set data.frames >= {frames})"
            )
        # cached latents of a KL VAE come with their posterior's log-variance
        reference_latents, target = self._training_latents(video, batch.get("latent_logvar"))
        self.check_latent_size(*target.shape[-2:])
        batch_size = target.shape[0]

        clip = self.clip_text(list(prompts))
        context = self.fstext(clip, frames)  # (B, F, L, D)
        losses = {}
        if cfg.text_loss:  # FSText's initialisation objective: its frames average back to the CLIP embedding
            losses["text_loss"] = F.mse_loss(context.float().mean(1), clip.float())
        if cfg.cond_drop_prob > 0:
            dropped = torch.rand(batch_size, device=target.device) < cfg.cond_drop_prob
            context = torch.where(
                dropped[:, None, None, None], self.null_context(batch_size, frames).to(context.dtype), context
            )

        # Upstream's draws in its order and layout: the noise as (B, c, F - R, h, w), then the timesteps.
        noise = rearrange(
            torch.randn(target.transpose(1, 2).shape, device=target.device, dtype=target.dtype),
            "b c f h w -> b f c h w",
        )  # (B, F - R, c, h, w)
        timesteps = torch.randint(0, TRAIN_TIMESTEPS, (batch_size,), device=target.device)
        noisy = self.train_noise.add_noise(target, noise, timesteps)
        prediction = self.unet(
            torch.cat([reference_latents, noisy], dim=1), timesteps, context, reference_frames=reference
        )
        objective = (
            noise if cfg.prediction_type == "epsilon" else self.train_noise.get_velocity(target, noise, timesteps)
        )
        mse = F.mse_loss(prediction[:, reference:].float(), objective.float())
        losses.update(loss=mse + losses.get("text_loss", 0.0), mse=mse.detach())
        return losses

    @torch.no_grad()
    def predict(
        self,
        context: torch.Tensor,
        num_frames: int,
        *,
        prompt: list[str] | str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """(B, T_ctx, 3, H, W) in [-1, 1] -> (B, num_frames, 3, H, W) following `prompt`.

        The last R context frames are the reference (a single image fills all R slots, as upstream's
        inference_img). One window predicts F - R frames; asking for more continues autoregressively
        from the last R predicted latents with the same instruction (an extension, upstream issue #3).
        """
        cfg = self.cfg
        frames, reference = cfg.frames, cfg.context_frames
        batch = context.shape[0]
        prompts = _prompts(prompt, batch)
        if num_frames > frames - reference:
            self.warn_once(
                f"seer: {num_frames} frames asked, one window predicts {frames - reference}; the rest continues "
                f"autoregressively from predicted frames (an extension: the paper predicts one window)"
            )
        steps = steps or cfg.sampler.steps
        scale = cfg.sampler.guidance_scale if guidance_scale is None else guidance_scale
        if context.shape[1] < reference:
            context = torch.cat([context[:, :1]] * (reference - context.shape[1]) + [context], dim=1)
        with self._autocast():
            latents = self.encode(context[:, -reference:].to(self.device), generator)  # (B, R, c, h, w)
            self.check_latent_size(*latents.shape[-2:])
            text = self.fstext(self.clip_text(prompts), frames)
            null = self.null_context(batch, frames).to(text.dtype) if scale != 1.0 else None
            produced: list[torch.Tensor] = []
            while sum(p.shape[1] for p in produced) < num_frames:
                self.frames_started(batch * (frames - reference))
                window = self._sample_window(latents, text, null, steps, scale, generator)  # (B, F - R, c, h, w)
                produced.append(window)
                self.frames_done(batch * window.shape[1])
                latents = torch.cat([latents, window], dim=1)[:, -reference:]
        return self.decode(torch.cat(produced, dim=1)[:, :num_frames].float())

    def sample_record(self, steps: int | None = None, guidance_scale: float | None = None, **options) -> dict:
        """What a sample run actually does (with upstream's rule, 30 requested DDIM steps run 31)."""
        sampler = self.cfg.sampler
        requested = steps or sampler.steps
        return {
            "ddim_steps_requested": requested,
            "ddim_steps_run": len(upstream_timesteps(requested)),
            "schedule": sampler.schedule,
            "eta": sampler.eta,
            "reference_ff_skip": sampler.reference_ff_skip,
            "guidance_scale": sampler.guidance_scale if guidance_scale is None else guidance_scale,
            "frames": self.cfg.frames,
            "reference_frames": self.cfg.context_frames,
        }

    def _sample_window(self, reference_latents, text, null, steps, scale, generator) -> torch.Tensor:
        cfg = self.cfg
        reference = cfg.context_frames
        scheduler = sampling_scheduler(steps, cfg.sampler.schedule, cfg.prediction_type)
        shape = (reference_latents.shape[0], cfg.frames - reference, *reference_latents.shape[2:])
        noise_device = generator.device if generator is not None else self.device
        x = torch.randn(shape, generator=generator, device=noise_device).to(self.device)
        context = text if null is None else torch.cat([null, text])
        ff_skip = reference if cfg.sampler.reference_ff_skip else 0
        for done, t in enumerate(scheduler.timesteps, start=1):
            model_input = torch.cat([reference_latents.to(x.dtype), x], dim=1)  # (B, F, c, h, w)
            if null is not None:
                model_input = torch.cat([model_input, model_input])
            output = self.unet(model_input, t.to(self.device), context, reference_frames=ff_skip)[:, reference:].float()
            if null is not None:  # guidance on the model output (epsilon or v: both linear in it)
                uncond, cond = output.chunk(2)
                output = uncond + scale * (cond - uncond)
            x = scheduler.step(output, int(t), x, eta=cfg.sampler.eta, generator=generator).prev_sample
            solver_step(done, len(scheduler.timesteps))
        return x

    def _autocast(self):
        precision = self.cfg.sampler.precision
        if self.device.type != "cuda" or precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _prompts(prompt: list[str] | str | None, batch: int) -> list[str]:
    if prompt is None:
        return [""] * batch
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if len(prompts) == 1:
        return prompts * batch
    if len(prompts) != batch:
        raise UsageError(f"got {len(prompts)} prompts for {batch} context videos")
    return prompts
