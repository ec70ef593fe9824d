"""RIVER: random-frame conditioned flow integration for video prediction (Davtyan et al., ICCV 2023).

One file, top to bottom in reading order: config and sizes, the U-ViT vector-field regressor (position
and distance embeddings, transformer layer, head), the RIVER backend (flow-matching loss,
autoregressive ODE sampler) and the converter for the published checkpoints.

The model works on the continuous (pre-quantisation) latents of a frozen autoencoder. To predict
frame k it sees the newest latent z_{k-1} (the "reference") and ONE earlier latent z_j drawn at
random (the sparse context), told apart by ln(k-1-j); a new latent comes from integrating the learned
velocity field from noise (t = 0) to data (t = 1), with a fresh random context at every evaluation.
Cost per frame is therefore constant, and a rollout can be any length.

Upstream defects fixed here (docs/upstream-differences.md): the context window `past_horizon` works (upstream's
bound never restricted anything); training targets are computed as z1 - (1 - σ)ε, which equals
upstream's (z1 - (1 - σ)x_t) / (1 - (1 - σ)t) without its division by ~σ as t -> 1; the solver grid
counts solver steps (`time_grid: uniform`), with upstream's truncated grid-point rule one setting away
(`time_grid: upstream`); checkpoints load with or without DDP's `module.` prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vpt.errors import ConfigError, UsageError
from vpt.models.backend import EvalProtocol
from vpt.models.integrators import integrate, time_grid
from vpt.models.latent import LatentBackend, build_autoencoder, clip_from_batch, frozen_autoencoder_from_upstream_state
from vpt.models.uvit import (
    VectorFieldRegressor,
    config_from_regressor_state,
    convert_upstream_regressor,
    load_upstream_state,
    resolve_trunk_size,
)
from vpt.weights import UnsafeWeightsError

# --- config ---------------------------------------------------------------------------------------------


@dataclass
class RiverConfig:
    """The `model:` section of a RIVER run."""

    # Frozen autoencoder: a `vpt train-ae` run directory or published AE weights; "pixels:P" models
    # P x P pixel patches directly (tests, toy data). `vpt train` fills it from --ae or the latents.
    autoencoder: Optional[str] = None
    size: Optional[Literal["paper", "small", "tiny"]] = None  # sets inner_dim, depth, mid_depth
    latent_channels: int = 4  # c of the autoencoder's latents (upstream: state_size)
    inner_dim: int = 768
    depth: int = 4  # U-ViT in-blocks (and as many out-blocks with skip connections)
    mid_depth: int = 5
    heads: int = 8
    out_norm: Literal["ln", "bn"] = "ln"  # head: LayerNorm (BAIR64, KTH, CLEVRER) or BatchNorm (BAIR256)
    dropout: float = 0.05
    sigma_min: float = 1e-7
    # Evaluation protocol: frames given to `predict` (BAIR 1, KTH 10, CLEVRER 2); used by the periodic
    # samples of `vpt train`, `vpt sample --data` and the quickstart.
    context_frames: int = 1
    # Sampling defaults of `predict`; `vpt sample --steps/--option` override them per call.
    sampler: Literal["rk4", "heun", "euler"] = "rk4"  # "rk4" is the 3/8 rule, as upstream
    steps: int = 100
    time_grid: Literal["uniform", "upstream"] = "uniform"  # see vpt.models.integrators.time_grid
    warm_start: float = 0.0  # start the flow at this time from the noisy previous latent
    past_horizon: int = 0  # context drawn from the newest N latents (incl. the reference); 0 = all
    # vpt addition, 0 = upstream: training adds Gaussian noise of a per-clip level ~ U(0, context_noise) to
    # the reference and context latents, so the model learns to correct the small errors of its own
    # predictions, which a rollout feeds back as conditions (docs/river.md, "Rollout drift").
    context_noise: float = 0.0
    # torch.compile the regressor call of the ODE sampler (`vpt sample --compile`): it runs steps x
    # evaluations per frame with fixed shapes; CUDA graphs on CUDA. Pays only once compiled (minutes on a CPU).
    compile_sampler: bool = False

    def __post_init__(self) -> None:
        resolve_trunk_size(self)
        if not 0.0 <= self.warm_start < 1.0:
            raise ValueError(f"model.warm_start must be in [0, 1), got {self.warm_start}")
        if self.past_horizon == 1 or self.past_horizon < 0:
            raise ValueError("model.past_horizon must be 0 (all frames) or >= 2 (reference + one earlier frame)")
        if self.context_frames < 1:
            raise ValueError(f"model.context_frames must be >= 1, got {self.context_frames}")
        if self.steps < 1:
            raise ValueError(f"model.steps must be >= 1, got {self.steps}")
        if self.context_noise < 0:
            raise ValueError(f"model.context_noise must be >= 0, got {self.context_noise}")


# --- the backend ---------------------------------------------------------------------------------------


class River(LatentBackend):
    """RIVER on the shared backend surface: `loss` (flow matching) and `predict` (ODE rollout)."""

    name = "river"
    Config = RiverConfig

    def __init__(self, cfg: RiverConfig, autoencoder: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.regressor = VectorFieldRegressor(
            cfg.latent_channels,
            cfg.inner_dim,
            cfg.depth,
            cfg.mid_depth,
            cfg.heads,
            cfg.out_norm,
            cfg.dropout,
        )
        self._attach_autoencoder(autoencoder)

    # --- training -----------------------------------------------------------------------------------
    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """Conditional flow matching on one random (target, reference, context) triple per clip.

        Target k ~ U{2..T-1}, reference k-1, context j ~ U{0..k-2}; x_t = (1-(1-σ)t)ε + t z_k and the
        regressor learns u = z_k - (1-σ)ε. Draws come from the global RNG (checkpointed by the loop)
        in upstream's order, so a seeded call reproduces upstream's training forward.
        """
        clip, is_latent = clip_from_batch(batch)  # (B, T, C, H, W)
        batch_size, num_frames = clip.shape[:2]
        if num_frames < 3:
            raise ConfigError(f"RIVER trains on clips of at least 3 frames, got {num_frames} (data.frames)")
        target_index = torch.randint(2, num_frames, (batch_size,))
        context_index = torch.cat([torch.randint(0, int(k) - 1, (1,)) for k in target_index])
        rows = torch.arange(batch_size)
        picked = torch.stack([clip[rows, target_index], clip[rows, target_index - 1], clip[rows, context_index]], dim=1)
        if is_latent:
            self._check_latents(picked)
            latents = picked
        else:
            latents = self.encode(picked)  # (B, 3, c, h, w)
        target, reference, context = latents.float().unbind(dim=1)

        noise = torch.randn_like(target)
        t = torch.rand(batch_size, 1, 1, 1).to(target.device)
        sigma = self.cfg.sigma_min
        noisy = (1 - (1 - sigma) * t) * noise + t * target
        velocity = target - (1 - sigma) * noise
        if self.cfg.context_noise > 0:  # drawn after upstream's draws, so 0 leaves its random stream intact
            level = torch.rand(batch_size, 1, 1, 1).to(target.device) * self.cfg.context_noise
            reference = reference + level * torch.randn_like(reference)
            context = context + level * torch.randn_like(context)
        distance = (target_index - 1 - context_index).to(target.device)
        predicted = self.regressor(noisy, reference, context, distance, t.flatten())
        return {"loss": F.mse_loss(predicted.float(), velocity)}

    # --- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        context: torch.Tensor,
        num_frames: int,
        *,
        prompt: list[str] | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        warm_start: float | None = None,
        sampler: Literal["rk4", "heun", "euler"] | None = None,
        past_horizon: int | None = None,
    ) -> torch.Tensor:
        """(B, n, 3, H, W) context in [-1, 1] -> (B, num_frames, 3, H, W) predicted frames.

        Keyword options default to the config: `steps` (solver steps, see `time_grid`), `sampler`
        (rk4 | heun | euler), `warm_start` (flow time to start from, noisy previous latent) and
        `past_horizon` (how many newest latents the random context comes from; 0 = all).
        """
        self.check_request(prompt, num_frames)
        self._warn_outside_training(context.shape[1], num_frames, past_horizon)
        context_latents = self.encode(context)  # (B, n, c, h, w)
        latents = self.rollout(
            context_latents,
            num_frames,
            steps=steps,
            generator=generator,
            warm_start=warm_start,
            sampler=sampler,
            past_horizon=past_horizon,
        )
        return self.decode(latents)

    def compile_sampler(self) -> None:
        self.cfg.compile_sampler = True

    def _warn_outside_training(self, num_context: int, num_frames: int, past_horizon: int | None) -> None:
        """One line when the random context may sit further back than any distance seen in training."""
        horizon = self.cfg.past_horizon if past_horizon is None else past_horizon
        # largest reference-to-context distance the rollout draws (one context frame is used twice)
        reach = horizon - 1 if horizon else max(num_context, 2) + num_frames - 2
        trained = self.trained_frames - 2 if self.trained_frames else None  # training: target k <= T-1, context >= 0
        if trained and reach > trained:
            self.warn_once(
                f"river: frame distances up to {reach}, but training clips of {self.trained_frames} frames only "
                f"showed distances up to {trained}; the distance embedding extrapolates - pass "
                f"--option past_horizon={trained + 1} to keep the context within the trained range"
            )

    @torch.no_grad()
    def rollout(
        self,
        context_latents: torch.Tensor,
        num_frames: int,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        warm_start: float | None = None,
        sampler: str | None = None,
        past_horizon: int | None = None,
    ) -> torch.Tensor:
        """Autoregressive latent rollout: (B, n, c, h, w) -> (B, num_frames, c, h, w).

        Each new latent integrates the velocity field from y(s) = (1-(1-σ)s)ε + s z_last to t = 1,
        and every evaluation draws a fresh context j per sample. With one context frame it is used
        twice (reference and context, Δ = 1), as upstream. Random draws: one normal ε per frame, then
        one integer draw per evaluation, from `generator` (or the global RNG when None).
        """
        cfg = self.cfg
        steps = cfg.steps if steps is None else steps
        warm_start = cfg.warm_start if warm_start is None else warm_start
        sampler = sampler or cfg.sampler
        past_horizon = cfg.past_horizon if past_horizon is None else past_horizon
        if num_frames < 1:
            raise UsageError(f"number of frames to predict must be >= 1, got {num_frames}")
        try:
            grid = time_grid(warm_start, steps, rule=cfg.time_grid, device=context_latents.device)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

        batch_size, num_context = context_latents.shape[:2]
        if num_context == 1:
            context_latents = context_latents[:, [0, 0]]
        known = context_latents.shape[1]
        history = context_latents.new_empty(batch_size, known + num_frames, *context_latents.shape[2:])
        history[:, :known] = context_latents  # (B, n' + F, c, h, w)
        rows = torch.arange(batch_size, device=history.device)
        draw_device = generator.device if generator is not None else history.device
        sigma = cfg.sigma_min
        self.regressor.eval()
        network, reused_output = self._sampling_network(history.device)

        for length in range(known, known + num_frames):
            newest = length - 1
            oldest = max(0, length - past_horizon) if past_horizon else 0
            reference = history[:, newest].contiguous()  # (B, c, h, w); strides independent of the rollout length

            def velocity(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                index = torch.randint(oldest, newest, (batch_size,), generator=generator, device=draw_device)
                index = index.to(history.device)
                distance = newest - index  # (B,) >= 1
                out = network(y, reference, history[rows, index], distance, t.expand(batch_size))
                return out.clone() if reused_output else out  # the solver keeps earlier stages alive

            noise = torch.randn(reference.shape, generator=generator, device=draw_device).to(reference)
            start = (1 - (1 - sigma) * warm_start) * noise + warm_start * reference
            self.frames_started(batch_size)
            history[:, length] = integrate(velocity, start, grid, method=sampler)
            self.frames_done(batch_size)
        return history[:, known:]

    def _sampling_network(self, device: torch.device) -> tuple[nn.Module, bool]:
        """The regressor as the sampler calls it, and whether its output buffer is reused by the next call.

        Compiled once per device type and kept outside the module tree (no state-dict keys, no `.to`).
        On CUDA "reduce-overhead" replays a CUDA graph, whose output memory the next replay overwrites.
        """
        if not self.cfg.compile_sampler:
            return self.regressor, False
        cached = self.__dict__.get("_compiled_sampler")
        if cached is None or cached[0] != device.type:
            mode = "reduce-overhead" if device.type == "cuda" else "default"
            cached = (device.type, compile_network(self.regressor, mode))
            self.__dict__["_compiled_sampler"] = cached
        return cached[1], device.type == "cuda"

    # --- published checkpoints ----------------------------------------------------------------------
    @classmethod
    def recognizes_checkpoint(cls, path: Path) -> bool:
        """True for an upstream RIVER `model.pth`: its "model" holds a vector_field_regressor.* that reads
        three latents per cell and emits one (NeuralSDE's regressors, same names, read four)."""
        try:
            state = load_upstream_state(path)
            token_proj = state["vector_field_regressor.project_in.1.weight"]  # (D, 3c)
            head = state["vector_field_regressor.project_out.4.weight"]  # (c, D, 3, 3)
        except UnsafeWeightsError:
            raise  # a file that would run code is reported, not passed on to the next backend
        except Exception:  # not a torch file, or not RIVER's layout
            return False
        return token_proj.shape[1] == 3 * head.shape[0]

    @classmethod
    def from_checkpoint(
        cls, path: Path, *, autoencoder: str | Path | None = None, preset: str | None = None, **overrides: Any
    ) -> River:
        """Build RIVER from a published `model.pth`; the AE comes from `autoencoder` (e.g. vqvae.ckpt)
        or, when omitted, from the `ae.*` weights the same file carries.

        The release it is (`PUBLISHED`) decides the frame size inputs are resized to and the evaluation
        protocol: read off the weights where they tell (BAIR256: 8 latent channels; CLEVRER: RIVER's own
        VQVAE), else `preset` (BAIR64 and KTH have identical shapes; BAIR64 is assumed, and said)."""
        state = load_upstream_state(path)
        regressor_state = convert_upstream_regressor(state)
        cfg = RiverConfig(**{**config_from_regressor_state(regressor_state), "time_grid": "upstream", **overrides})
        if autoencoder is not None:
            ae = build_autoencoder(str(autoencoder))
        else:
            ae = frozen_autoencoder_from_upstream_state(state, path)
        model = cls(cfg, autoencoder=ae)
        model.regressor.load_state_dict(regressor_state)
        model.release = _published_release(cfg, ae, preset, path)
        model.frame_size = PUBLISHED[model.release]["frame_size"]
        return model.eval()

    def default_protocol(self) -> EvalProtocol | None:
        release = getattr(self, "release", None)  # set only on published checkpoints
        return EvalProtocol(**PUBLISHED[release]["protocol"]) if release else None


#: The released RIVER models: frame size and the paper's evaluation protocol.
PUBLISHED: dict[str, dict[str, Any]] = {
    "bair64": {"frame_size": 64, "protocol": dict(context_frames=1, predicted_frames=15, samples=100, clips=256)},
    "kth": {"frame_size": 64, "protocol": dict(context_frames=10, predicted_frames=30, samples=100)},
    "clevrer": {"frame_size": 128, "protocol": dict(context_frames=2, predicted_frames=14)},
    "bair256": {"frame_size": 256, "protocol": dict(context_frames=1, predicted_frames=15, samples=100, clips=256)},
}


def _published_release(cfg: RiverConfig, autoencoder: Any, preset: str | None, path: Path) -> str:
    """Which released model `path` is (see `PUBLISHED`); `preset` names it where the weights cannot."""
    from vpt.console import info, warn

    if cfg.latent_channels == 8:
        candidates = ["bair256"]
    elif getattr(autoencoder, "type", None) == "river-vqvae":
        candidates = ["clevrer"]
    else:
        candidates = ["bair64", "kth"]
    if preset is not None:
        if preset not in PUBLISHED:
            raise UsageError(f"--release {preset}: unknown RIVER release; choose one of {', '.join(PUBLISHED)}")
        if preset not in candidates:
            raise UsageError(
                f"--release {preset} does not fit {path} (its weights are those of {' or '.join(candidates)})"
            )
        return preset
    release = candidates[0]
    protocol = PUBLISHED[release]["protocol"]
    message = (
        f"{path.name}: RIVER {release} ({PUBLISHED[release]['frame_size']} px frames, "
        f"{protocol['context_frames']} -> {protocol['predicted_frames']} frames)"
    )
    if len(candidates) > 1:
        warn(
            f"{message} assumed: {' and '.join(candidates)} have the same weights' shapes; "
            f"pass --release {candidates[1]} for the other"
        )
    else:
        info(message)
    return release


# --- helpers ----------------------------------------------------------------------------------------------


def compile_network(network: nn.Module, mode: str) -> nn.Module:
    """torch.compile with fixed shapes (one rollout never changes them)."""
    return torch.compile(network, mode=mode, dynamic=False)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
