"""NeuralSDE: video as a path of an Itô SDE on a window of latents (Shen & Cheng, arXiv 2501.18871).

One file, top to bottom: config, the three networks on RIVER's U-ViT trunk, the training objectives,
the SDE terms and its two solvers, the backend, and the converter for upstream checkpoints.

The state is the window of the last W = 4 latents, channel-stacked oldest first:
X = [z_{t-3}, z_{t-2}, z_{t-1}, z_t]. One frame interval is one unit of time, and over it

    dX = (F(X) + α d(X)) dt + G(X) ⊙ dW,   F(X) = [z_{t-2} - z_{t-3}, z_{t-1} - z_{t-2}, z_t - z_{t-1}, f(X)]

so the three older slots slide linearly into their successors while the drift network f moves the
newest one; d is a denoiser acting on all slots and G is zero except on the newest slot, where the
diffusion network g gives a per-element standard deviation. The three networks train separately and
without simulation on interpolated, noised windows:

    stage f   the drift, on a Gaussian likelihood of the newest slot's velocity with the variance profiled out
    stage d   the denoiser, to predict minus the injected noise
    stage g   the diffusion, to fit the frozen drift's residual; a g run also carries the frozen f and d,
              so sampling from it needs nothing else

Sampling integrates one unit of time per new frame, starting from the window of the newest latents:
fixed-step Euler–Maruyama (`sampler: euler`, `steps` per frame) or upstream's adaptive step-doubling
solver through torchsde (`sampler: adaptive`, optional dependency). States at fractional times are
in-between frames ("free" temporal interpolation, `upsample`).

Differences from upstream (NeuralSDE/NeuralSDE, folder video/):
* A model with only a denoiser (the d stage) samples: a missing drift network counts as zero velocity
  for the newest slot (upstream adds the denoiser to a missing drift and crashes, which also stops
  d training at its first periodic sample).
* Checkpoints load with or without DDP's `module.` prefix (upstream loads nothing from a prefixed
  checkpoint and fails), and a g run stores its frozen f and d, so it samples even after the f and d
  runs are moved away (upstream needs both checkpoint files to exist just to build the g model).
* Context shorter than the window (n < 4) works: the oldest context latent is repeated to fill the
  window (upstream duplicates a single frame once and then fails on shapes).
* The evaluation path is `vpt eval-fvd` with the protocol of the config (4 context frames, 36 KTH /
  12 CLEVRER predicted) instead of upstream's CUDA-only script, which stops on an undefined name and
  hard-codes dataset, checkpoint and model lists.
* The frozen drift builds g's training target in eval mode (deterministic). Upstream leaves it in
  train mode, so its dropout perturbs the target; `frozen_drift_dropout: true` restores that.
* Brownian paths come from vpt's generator (a seed drawn from it per frame), not numpy's global RNG;
  fixed-step Euler–Maruyama is added next to the adaptive solver, which is upstream's only mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vpt.errors import ConfigError, UsageError
from vpt.models.latent import LatentBackend, build_autoencoder, clip_from_batch, frozen_autoencoder_from_upstream_state
from vpt.models.uvit import VectorFieldRegressor, convert_upstream_regressor, load_upstream_state, resolve_trunk_size
from vpt.progress import solver_step
from vpt.weights import UnsafeWeightsError, settings_beside, strip_module_prefix

Stage = Literal["f", "d", "g"]
STAGE_NAMES = {"f": "drift", "d": "denoiser", "g": "diffusion"}


# --- config -----------------------------------------------------------------------------------------


@dataclass
class NeuralSDEConfig:
    """The `model:` section of a NeuralSDE run (one run per stage)."""

    # Which network this run trains: f (drift), d (denoiser) or g (diffusion, from the frozen f and d).
    stage: Stage = "f"
    # Frozen autoencoder, as for RIVER: a `vpt train-ae` run, published AE weights or "pixels:P".
    autoencoder: Optional[str] = None
    # Stage g: the finished drift run (required) and denoiser run (optional; without it the SDE has no
    # denoiser term). Their weights are copied into the g run when it is built.
    f_run: Optional[str] = None
    d_run: Optional[str] = None
    size: Optional[Literal["paper", "small", "tiny"]] = None  # sets inner_dim, depth, mid_depth
    latent_channels: int = 4  # c of the autoencoder's latents (upstream: state_size)
    window: int = 4  # latents in the SDE state (upstream: num_input_frames)
    inner_dim: int = 768
    depth: int = 4
    mid_depth: int = 5
    heads: int = 8
    out_norm: Literal["ln", "bn"] = "ln"
    dropout: float = 0.05
    sigma_min: float = 1e-7
    noise_std: float = 0.1  # std of the noise injected into every training state ("noise level 0.1")
    drift_loss: Literal["nll", "mse"] = "nll"  # stage f: upstream func f_nll or f_mse
    nll_delta: float = 1e-3  # desingularises the log-residual likelihood
    logit_range: list[float] = field(default_factory=lambda: [-9.0, 1.0])  # log-std range of g's output
    frozen_drift_dropout: bool = False  # stage g: upstream builds the target with f in train mode (true)
    # Evaluation protocol: frames given to `predict` (4 for KTH and CLEVRER).
    context_frames: int = 4
    # Sampling defaults of `predict`; `vpt sample --steps/--option` override them per call.
    sampler: Literal["euler", "adaptive"] = "euler"
    steps: int = 10  # euler: fixed steps per frame
    denoiser_weight: float = 1.0  # α; 0 samples without the denoiser
    diffusion: bool = True  # false: drift only (no noise) even when the model has g
    atol: float = 1e-2  # adaptive solver: upstream's tolerances, initial and minimum step
    rtol: float = 1e-10
    initial_dt: float = 1.0
    dt_min: float = 1e-10

    def __post_init__(self) -> None:
        resolve_trunk_size(self)
        if self.window < 2:
            raise ValueError(f"model.window must be >= 2, got {self.window}")
        if len(self.logit_range) != 2 or self.logit_range[0] >= self.logit_range[1]:
            raise ValueError(f"model.logit_range must be [low, high] with low < high, got {self.logit_range}")
        if self.stage == "g" and not self.f_run:
            raise ValueError(
                "stage g fits the residual of a frozen drift: train stage f first "
                "(vpt train neuralsde --config <data>_f.yaml --run RUN) and set model.f_run=RUN"
            )
        if self.stage != "g" and (self.f_run or self.d_run):
            raise ValueError(f"model.f_run/model.d_run are read by stage g only; this run trains stage {self.stage}")
        if self.steps < 1:
            raise ValueError(f"model.steps must be >= 1, got {self.steps}")
        if self.context_frames < 1:
            raise ValueError(f"model.context_frames must be >= 1, got {self.context_frames}")


# --- networks ---------------------------------------------------------------------------------------


class StateRegressor(VectorFieldRegressor):
    """RIVER's U-ViT on the window state alone: (B, W c, h, w) -> (B, c, h, w), or (B, W c, h, w) for
    the denoiser. No time token and no distance term; the distance MLP stays so state dicts keep
    upstream's layout, frozen because it is never used (DDP would wait for its gradients)."""

    def __init__(self, cfg: NeuralSDEConfig, *, whole_window: bool):
        super().__init__(
            cfg.latent_channels,
            cfg.inner_dim,
            cfg.depth,
            cfg.mid_depth,
            cfg.heads,
            cfg.out_norm,
            cfg.dropout,
            input_grids=cfg.window,
            output_grids=cfg.window if whole_window else 1,
        )
        self.distance_embed.requires_grad_(False)

    def forward(self, state: torch.Tensor) -> torch.Tensor:  # (B, W c, h, w)
        height, width = state.shape[-2:]
        cells = rearrange(state, "b c h w -> b (h w) c")  # (B, N, W c)
        tokens = self.token_proj(cells) + self.pos_embed(height, width)  # (B, N, D)
        return self.head(self.transform(tokens), height)


def log_std(raw: torch.Tensor, logit_range: list[float]) -> torch.Tensor:
    """g's raw output -> log standard deviation, squashed into [low, high] by a tanh."""
    low, high = logit_range
    return (torch.tanh(raw) + 1.0) * 0.5 * (high - low) + low


# --- the SDE -----------------------------------------------------------------------------------------


class WindowSDE:
    """Drift and diffusion of the sampling SDE over one frame interval, on flattened states (B, W c h w).

    `known_steps` (B, W-1, c, h, w) are the differences of the window's latents: the older slots move
    by them at constant speed. Methods `f` and `g` are torchsde's interface (Itô, diagonal noise); both
    run without gradients, so torchsde's Milstein correction is zero and every step is Euler–Maruyama.
    `evaluations` counts drift evaluations.
    """

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(
        self,
        known_steps: torch.Tensor,
        *,
        drift: nn.Module | None,
        denoiser: nn.Module | None,
        diffusion: nn.Module | None,
        denoiser_weight: float,
        logit_range: list[float],
    ):
        self.known_steps = rearrange(known_steps, "b n c h w -> b (n c) h w")
        self.channels = known_steps.shape[2]
        self.grid = known_steps.shape[-2:]
        self.drift_net, self.diffusion_net = drift, diffusion
        self.denoiser = denoiser if denoiser_weight != 0 else None
        self.denoiser_weight, self.logit_range = denoiser_weight, logit_range
        self.evaluations = 0

    def _state(self, flat: torch.Tensor) -> torch.Tensor:  # (B, W c h w) -> (B, W c, h, w)
        return rearrange(flat, "b (c h w) -> b c h w", h=self.grid[0], w=self.grid[1])

    @torch.no_grad()
    def f(self, t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """Drift: known steps for the older slots, f(X) for the newest (zero without f), plus α d(X)."""
        self.evaluations += 1
        state = self._state(flat)
        newest = self.drift_net(state) if self.drift_net is not None else torch.zeros_like(state[:, -self.channels :])
        velocity = torch.cat([self.known_steps.to(state.dtype), newest.to(state.dtype)], dim=1)
        if self.denoiser is not None:
            velocity = velocity + self.denoiser(state).to(state.dtype) * self.denoiser_weight
        return velocity.flatten(1)

    @torch.no_grad()
    def g(self, t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """Diagonal diffusion: exp(log_std(g(X))) on the newest slot, zero elsewhere."""
        state = self._state(flat)
        sigma = torch.zeros_like(state)
        if self.diffusion_net is not None:
            sigma[:, -self.channels :] = torch.exp(log_std(self.diffusion_net(state), self.logit_range))
        return sigma.flatten(1)

    @property
    def is_stochastic(self) -> bool:
        return self.diffusion_net is not None


def euler_maruyama(
    sde: WindowSDE, y0: torch.Tensor, steps: int, upsample: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Fixed steps of length 1/steps over [0, 1]: y += F(y) h + G(y) ⊙ √h ε with ε from `generator`.

    Returns the states at t = m/upsample, m = 1..upsample, (upsample, B, D); a time between two grid
    points is the straight line between them (exact on the grid, e.g. when upsample divides steps).
    """
    h = 1.0 / steps
    path = [y0]
    y = y0
    for done in range(1, steps + 1):
        if sde.is_stochastic:
            brownian_step = standard_normal(y0, generator) * h**0.5
            y = y + sde.f(None, y) * h + sde.g(None, y) * brownian_step
        else:
            y = y + sde.f(None, y) * h
        path.append(y)
        solver_step(done, steps)
    states = []
    for m in range(1, upsample + 1):
        index, rest = divmod(m * steps, upsample)  # t = m / upsample lies at grid point index + rest / upsample
        if rest == 0:
            states.append(path[index])
        else:
            weight = rest / upsample
            states.append(path[index] * (1 - weight) + path[index + 1] * weight)
    return torch.stack(states)


def adaptive_solve(
    sde: WindowSDE,
    y0: torch.Tensor,
    upsample: int,
    *,
    entropy: int,
    atol: float,
    rtol: float,
    initial_dt: float,
    dt_min: float,
) -> torch.Tensor:
    """Upstream's solver: torchsde's adaptive step doubling ("milstein", Euler–Maruyama here) over [0, 1]
    on the Brownian path of `entropy`. Returns the states at t = m/upsample, (upsample, B, D); between
    accepted solver points torchsde interpolates linearly. The error is pooled over the whole batch, so
    the steps (and a sample's path) depend on the other samples; fixed-step Euler–Maruyama does not."""
    torchsde = _import_torchsde()
    ts = torch.linspace(0, 1, upsample + 1, dtype=y0.dtype, device=y0.device)
    brownian = torchsde.BrownianInterval(
        t0=ts[0], t1=ts[-1], size=tuple(y0.shape), dtype=y0.dtype, device=y0.device, entropy=entropy
    )
    ys = torchsde.sdeint(
        sde, y0, ts, bm=brownian, method="milstein", dt=initial_dt, adaptive=True, rtol=rtol, atol=atol, dt_min=dt_min
    )  # (upsample + 1, B, D)
    return ys[1:]


def _import_torchsde():
    try:
        import torchsde
    except ImportError:
        raise UsageError(
            "the adaptive NeuralSDE sampler needs torchsde: pip install torchsde (or use sampler=euler)"
        ) from None
    return torchsde


def standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, 1) draws shaped like `like`, from `generator` on its own device, then moved to `like`."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device).to(like)


def draw_entropy(generator: torch.Generator | None) -> int:
    """A Brownian-interval seed in [0, 2^31 - 1) drawn from `generator` (the global RNG when None)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device))


# --- the backend ---------------------------------------------------------------------------------------


class NeuralSDE(LatentBackend):
    """NeuralSDE on the shared surface: `loss` (the stage's objective) and `predict` (SDE rollout).

    `net` is the network this run trains (f, d or g); a g run also holds the frozen `drift` and, when
    model.d_run is set, `denoiser`. After `predict`, `sampling_stats` (and so `sample_record`) holds the
    sampler, the upsampling factor and the mean drift evaluations per predicted frame.
    """

    name = "neuralsde"
    Config = NeuralSDEConfig

    def __init__(
        self,
        cfg: NeuralSDEConfig,
        autoencoder: nn.Module | None = None,
        *,
        frozen_weights: dict[str, dict[str, torch.Tensor]] | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.net = StateRegressor(cfg, whole_window=cfg.stage == "d")
        self.drift = self.denoiser = None
        self.sampling_stats: dict[str, Any] = {}
        self._frozen_problem: str | None = None
        if cfg.stage == "g":
            self.drift = StateRegressor(cfg, whole_window=False).requires_grad_(False)
            if cfg.d_run:
                self.denoiser = StateRegressor(cfg, whole_window=True).requires_grad_(False)
            # Saved with the run: True once the frozen networks hold trained weights (copied from the
            # f/d runs here, or loaded back from this run's checkpoint).
            self.register_buffer("frozen_loaded", torch.tensor(False))
            self._frozen_problem = self._load_frozen_networks(frozen_weights)
        self._attach_autoencoder(autoencoder)

    def train(self, mode: bool = True) -> NeuralSDE:
        super().train(mode)  # the autoencoder stays frozen (LatentBackend)
        if self.denoiser is not None:
            self.denoiser.eval()
        if self.drift is not None and not self.cfg.frozen_drift_dropout:
            self.drift.eval()
        return self

    # --- frozen networks of stage g -----------------------------------------------------------------
    def _load_frozen_networks(self, weights: dict[str, dict[str, torch.Tensor]] | None) -> str | None:
        """Fill the frozen networks from `weights` (converted upstream ones) or from the f and d runs. A
        problem is returned, not raised: a g run rebuilt for sampling loads them from its own checkpoint."""
        if weights is not None:
            self.drift.load_state_dict(weights["drift"])
            if self.denoiser is not None:
                self.denoiser.load_state_dict(weights["denoiser"])
        else:
            for run_dir, stage, target in ((self.cfg.f_run, "f", self.drift), (self.cfg.d_run, "d", self.denoiser)):
                problem = _copy_stage_weights(Path(run_dir), stage, target) if run_dir else None
                if problem:
                    return problem
        self.frozen_loaded.fill_(True)
        return None

    def _require_frozen(self) -> None:
        if self.drift is not None and not bool(self.frozen_loaded):
            raise UsageError(
                self._frozen_problem or "stage g has no trained drift; set model.f_run to a finished f run"
            )

    # --- training -----------------------------------------------------------------------------------
    def loss(self, batch: Any) -> dict[str, torch.Tensor]:
        """The objective of this run's stage on one noised, interpolated window per clip.

        Draws from the global RNG in upstream's order: target index k ~ U{W..T-1}, then τ ~ U[0, 1),
        then the injected noise; "mse" is the monitoring value upstream logs.
        """
        self._require_frozen()
        start, end, noisy, noise = self._training_state(batch)
        cfg = self.cfg
        if cfg.stage == "d":
            mse = F.mse_loss(self.net(noisy).float(), -noise)
            return {"loss": mse, "mse": mse}
        velocity = (end - (1 - cfg.sigma_min) * start)[:, -cfg.latent_channels :]  # (B, c, h, w): z_k - z_{k-1}
        if cfg.stage == "f":
            return drift_objective(self.net(noisy).float(), velocity, cfg.drift_loss, cfg.nll_delta)
        with torch.no_grad():
            residual = (velocity - self.drift(noisy).float()) ** 2  # Δt = 1
        return diffusion_objective(self.net(noisy).float(), residual, cfg.logit_range)

    def _training_state(self, batch: Any) -> tuple[torch.Tensor, ...]:
        """(S0, S1, X̃ = X_τ + η, η), each (B, W c, h, w), for a random window and τ per clip."""
        cfg = self.cfg
        clip, is_latent = clip_from_batch(batch)  # (B, T, C, H, W)
        batch_size, num_frames = clip.shape[:2]
        if num_frames <= cfg.window:
            raise ConfigError(
                f"NeuralSDE trains on clips of more than model.window={cfg.window} frames, "
                f"got {num_frames} (data.frames)"
            )
        target = torch.randint(cfg.window, num_frames, (batch_size,))
        frames = target[:, None] - cfg.window + torch.arange(cfg.window + 1)  # (B, W + 1): k-W .. k
        picked = clip[torch.arange(batch_size)[:, None], frames.to(clip.device)]
        if is_latent:
            self._check_latents(picked)
            latents = picked.float()
        else:
            latents = self.encode(picked).float()  # (B, W + 1, c, h, w)
        start = rearrange(latents[:, :-1], "b n c h w -> b (n c) h w")
        end = rearrange(latents[:, 1:], "b n c h w -> b (n c) h w")
        tau = torch.rand(batch_size, 1, 1, 1).to(start)
        state = (1 - (1 - cfg.sigma_min) * tau) * start + tau * end  # every slot slides toward its successor
        noise = torch.randn_like(state) * cfg.noise_std
        return start, end, state + noise, noise

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
        sampler: str | None = None,
        denoiser_weight: float | None = None,
        diffusion: bool | None = None,
        upsample: int = 1,
    ) -> torch.Tensor:
        """(B, n, 3, H, W) context in [-1, 1] -> (B, num_frames * upsample, 3, H, W) predicted frames.

        Options default to the config: `sampler` euler (fixed `steps` per frame, noise from
        `generator`) or adaptive (upstream's torchsde solver, Brownian seed per frame from `generator`);
        `denoiser_weight` α (0: no denoiser); `diffusion` false for drift only. `upsample` U > 1 returns
        U frames per predicted frame, the SDE state decoded at t = m/U between consecutive frames; with
        the adaptive solver, an in-between frame the solver stepped over is the straight line between
        its accepted points, as upstream.
        """
        self.check_request(prompt, num_frames)
        latents = self.rollout(
            self.encode(context),
            num_frames,
            steps=steps,
            generator=generator,
            sampler=sampler,
            denoiser_weight=denoiser_weight,
            diffusion=diffusion,
            upsample=upsample,
        )
        return self.decode(latents)

    @torch.no_grad()
    def rollout(
        self,
        context_latents: torch.Tensor,
        num_frames: int,
        *,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        denoiser_weight: float | None = None,
        diffusion: bool | None = None,
        upsample: int = 1,
        entropies: list[int] | None = None,
    ) -> torch.Tensor:
        """(B, n, c, h, w) context latents -> (B, num_frames * upsample, c, h, w).

        Each frame solves the SDE over [0, 1] from the window of the newest W latents; the newest slot
        at t = 1 becomes the next latent. `entropies` fixes the adaptive solver's Brownian seeds per
        frame (reproducing a recorded run); otherwise each is drawn from `generator`.
        """
        cfg = self.cfg
        self._require_frozen()
        steps = cfg.steps if steps is None else steps
        sampler = sampler or cfg.sampler
        alpha = cfg.denoiser_weight if denoiser_weight is None else denoiser_weight
        use_diffusion = cfg.diffusion if diffusion is None else diffusion
        _check_sampling(num_frames, steps, sampler, upsample)
        drift, denoiser, diffusion_net = self._sde_networks()
        for net in (drift, denoiser, diffusion_net):
            if net is not None:
                net.eval()

        batch_size, known = context_latents.shape[:2]
        if known < cfg.window:  # too short a context: the oldest latent stands in for the missing ones
            pad = context_latents[:, :1].expand(-1, cfg.window - known, -1, -1, -1)
            context_latents = torch.cat([pad, context_latents], dim=1)
        history = list(context_latents.unbind(dim=1))
        newest = slice(-context_latents[0, 0].numel(), None)  # the newest slot of a flattened state
        outputs, evaluations = [], 0
        for frame in range(num_frames):
            window = torch.stack(history[-cfg.window :], dim=1)  # (B, W, c, h, w)
            sde = WindowSDE(
                window[:, 1:] - window[:, :-1],
                drift=drift,
                denoiser=denoiser,
                diffusion=diffusion_net if use_diffusion else None,
                denoiser_weight=alpha,
                logit_range=cfg.logit_range,
            )
            y0 = window.flatten(1)  # (B, W c h w), frame-major as the state's channel blocks
            if drift is None:  # denoiser only: start from a noised window, as the d stage trains
                y0 = y0 + cfg.noise_std * standard_normal(y0, generator)
            self.frames_started(batch_size)
            if sampler == "euler":
                states = euler_maruyama(sde, y0, steps, upsample, generator)
            else:
                entropy = entropies[frame] if entropies is not None else draw_entropy(generator)
                states = adaptive_solve(
                    sde,
                    y0,
                    upsample,
                    entropy=entropy,
                    atol=cfg.atol,
                    rtol=cfg.rtol,
                    initial_dt=cfg.initial_dt,
                    dt_min=cfg.dt_min,
                )
            frames = states[:, :, newest].reshape(upsample, batch_size, *window.shape[2:])  # (U, B, c, h, w)
            outputs.extend(frames.unbind(dim=0))
            history.append(frames[-1])
            evaluations += sde.evaluations
            self.frames_done(batch_size)
        self.sampling_stats = {
            "sampler": sampler,
            "steps": steps if sampler == "euler" else None,
            "upsample": upsample,
            "drift_evaluations_per_frame": evaluations / num_frames,
        }
        return torch.stack(outputs, dim=1)

    def sample_record(self, **options: Any) -> dict[str, Any]:
        """The last `predict`'s sampler, upsampling and mean drift evaluations per predicted frame."""
        return dict(self.sampling_stats)

    def _sde_networks(self) -> tuple[nn.Module | None, nn.Module | None, nn.Module | None]:
        """(drift, denoiser, diffusion) networks this run samples with."""
        if self.cfg.stage == "f":
            return self.net, None, None
        if self.cfg.stage == "d":
            return None, self.net, None
        return self.drift, self.denoiser, self.net

    # --- upstream checkpoints -----------------------------------------------------------------------
    @classmethod
    def recognizes_checkpoint(cls, path: Path) -> bool:
        """True for an upstream NeuralSDE `.pth` (its regressor reads a window of W c channels, W >= 4)."""
        try:
            parts = convert_upstream_state(load_upstream_state(path))
        except UnsafeWeightsError:
            raise  # a file that would run code is reported, not passed on to the next backend
        except Exception:  # not a torch file, or not this layout
            return False
        net = parts["net"]
        if not net:
            return False
        # a denoiser emits its whole window (W c channels in and out); f and g read W >= 4 latents of c
        out_channels, in_channels = net["head.conv.weight"].shape[0], net["token_proj.weight"].shape[1]
        return out_channels == in_channels or (in_channels % out_channels == 0 and in_channels // out_channels >= 4)

    @classmethod
    def from_checkpoint(
        cls, path: Path, *, autoencoder: str | Path | None = None, preset: str | None = None, **overrides: Any
    ) -> NeuralSDE:
        """Build from an upstream `.pth` of an f, d or g run; the AE comes from `autoencoder` or the
        `ae.*` weights the same file carries."""
        if preset is not None:
            raise UsageError("NeuralSDE checkpoints need no --release (the weights say which network they are)")
        state = load_upstream_state(path)  # `module.` prefixes removed
        parts = convert_upstream_state(state)
        if not parts["net"]:
            raise UsageError(f"{path} holds no vector_field_regressor.* weights; not an upstream NeuralSDE checkpoint")
        ae = (
            build_autoencoder(str(autoencoder))
            if autoencoder is not None
            else frozen_autoencoder_from_upstream_state(state, path)
        )
        # what the shapes leave open (heads; a lone denoiser's W and c) comes from overrides, a config.json
        # beside the weights, the autoencoder's latent channels, or upstream's fixed 8 heads
        beside, source = settings_beside(path)
        given = {**beside, **overrides}
        hints = {key: given[key] for key in ("latent_channels", "window", "heads") if key in given}
        net = parts["net"]
        if (
            net["head.conv.weight"].shape[0] == net["token_proj.weight"].shape[1]
            and not {"latent_channels", "window"} & hints.keys()
        ):
            channels = _latent_channels_of(ae)  # a lone denoiser: its c is the autoencoder's
            if channels is not None:
                hints["latent_channels"] = channels
        fields = config_from_state(net, **hints)
        if parts["drift"]:  # a g run: the frozen networks travel in the same file
            fields.update(stage="g", f_run=str(path), d_run=str(path) if parts["denoiser"] else None)
        for key, value in beside.items():
            if key in fields and value != fields[key]:
                raise ConfigError(
                    f"{source}: model.{key} is {value!r}, but the weights in {path.name} have {fields[key]!r}"
                )
        from vpt.config import validate

        cfg = validate(NeuralSDEConfig, {**beside, **fields, **overrides}, source=source or str(path), prefix="model.")
        model = cls(cfg, autoencoder=ae, frozen_weights={"drift": parts["drift"], "denoiser": parts["denoiser"]})
        model.net.load_state_dict(parts["net"])
        return model.eval()


def drift_objective(
    predicted: torch.Tensor, velocity: torch.Tensor, kind: str, delta: float
) -> dict[str, torch.Tensor]:
    """Stage f. "nll": mean(ln((u - f)^2 + δ) - ln δ), the Gaussian likelihood with its variance
    profiled out, zero at a perfect fit; "mse": plain MSE."""
    squared = (velocity - predicted) ** 2
    mse = squared.mean()
    if kind == "mse":
        return {"loss": mse, "mse": mse}
    nll = (torch.log(squared + delta) - torch.log(torch.tensor(delta, device=squared.device))).mean()
    return {"loss": nll, "mse": mse}


def diffusion_objective(raw: torch.Tensor, residual: torch.Tensor, logit_range: list[float]) -> dict[str, torch.Tensor]:
    """Stage g: σ = exp(s), s = log_std(raw), fits |residual| in linear and in log space."""
    log_sigma = log_std(raw, logit_range)
    linear = F.mse_loss(torch.exp(log_sigma), torch.sqrt(residual))
    logarithmic = F.mse_loss(log_sigma, 0.5 * torch.log(residual + 1e-6))
    return {"loss": linear + logarithmic, "mse": linear}


def _check_sampling(num_frames: int, steps: int, sampler: str, upsample: int) -> None:
    if num_frames < 1:
        raise UsageError(f"number of frames to predict must be >= 1, got {num_frames}")
    if sampler not in ("euler", "adaptive"):
        raise UsageError(f"sampler must be euler or adaptive, got {sampler!r}")
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}")
    if not isinstance(upsample, int) or upsample < 1:
        raise UsageError(f"upsample must be an integer >= 1, got {upsample!r}")


def _copy_stage_weights(run_dir: Path, stage: str, target: nn.Module) -> str | None:
    """Load the trained network of a finished `stage` run into `target`; a one-line problem or None."""
    from vpt.runs import Run

    what, key = STAGE_NAMES[stage], f"{stage}_run"
    train_first = f"train the {what} first: vpt train neuralsde --config <data>_{stage}.yaml --run {run_dir}"
    run = Run(run_dir)
    if not run.config_path.is_file() or run.latest_checkpoint() is None:
        return f"model.{key}: {run_dir} has no finished checkpoint; {train_first}"
    config = run.read_config()
    if config.get("backend") != NeuralSDE.name or config.get("model", {}).get("stage", "f") != stage:
        return f"model.{key}: {run_dir} is not a NeuralSDE stage-{stage} run ({what}); {train_first}"
    planned = config.get("train", {}).get("max_steps", 0)
    if run.latest_step() < planned:
        from vpt.console import warn

        warn(f"model.{key}: {run_dir} stopped at step {run.latest_step()} of {planned}; using that {what}")
    weights = run.load_weights()
    state = {k.removeprefix("net."): v for k, v in weights.items() if k.startswith("net.")}
    try:
        target.load_state_dict(state)
    except RuntimeError:
        return f"model.{key}: the {what} in {run_dir} has a different size than this run's model section"
    return None


# --- converter for upstream checkpoints ----------------------------------------------------------------

#: Where the networks of an upstream Model state dict live (after a `module.` prefix is removed).
_UPSTREAM_PARTS = {
    "net": "vector_field_regressor.",
    "drift": "f.vector_field_regressor.",
    "denoiser": "d.vector_field_regressor.",
}


def convert_upstream_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Upstream `Model.state_dict()` (f, d or g run; `module.`-prefixed or not) -> vpt weights of the
    trained network ("net") and, for a g run, the frozen "drift" and "denoiser" (empty when absent)."""
    state = strip_module_prefix(state)
    return {
        part: convert_upstream_regressor({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        for part, prefix in _UPSTREAM_PARTS.items()
    }


def config_from_state(
    state: dict[str, torch.Tensor],
    *,
    latent_channels: int | None = None,
    window: int | None = None,
    heads: int | None = None,
) -> dict[str, Any]:
    """Architecture fields of NeuralSDEConfig, and the stage (f or d), read off converted network weights.

    f and g emit one latent (c channels) from W c inputs, so both are in the shapes. The denoiser emits
    the whole window (W c in and out): its c and W are not, and come from `latent_channels` (the
    autoencoder's) or `window`; without either it is a ConfigError naming them. The heads are never in
    the shapes: `heads`, or 8 (upstream's regressor has 8, its configs name none). A hint that the
    shapes contradict is a ConfigError too.
    """
    inner_dim, window_channels = state["token_proj.weight"].shape
    out_channels = state["head.conv.weight"].shape[0]
    is_denoiser = out_channels == window_channels
    where = "(model.{} in a config.json beside the weights)"
    if is_denoiser:
        if latent_channels is None and window is None:
            raise ConfigError(
                f"a NeuralSDE denoiser of {window_channels} channels (window x latent channels) does not say "
                f"its window: pass --ae with its autoencoder, or set {where.format('window')}"
            )
        channels = latent_channels if latent_channels is not None else window_channels // window
    else:
        channels = out_channels
        if latent_channels is not None and latent_channels != channels:
            raise ConfigError(
                f"model.latent_channels is {latent_channels}, but the network emits {channels}-channel latents"
            )
    if channels < 1 or window_channels % channels:
        raise ConfigError(
            f"the network reads {window_channels} channels, not a whole window of {channels}-channel "
            f"latents; check model.latent_channels and model.window (or the autoencoder)"
        )
    if window is not None and window != window_channels // channels:
        raise ConfigError(
            f"model.window is {window}, but the network reads a window of {window_channels // channels} "
            f"latents of {channels} channels"
        )
    heads = 8 if heads is None else heads
    if heads < 1 or inner_dim % heads:
        raise ConfigError(f"model.heads ({heads}) must divide the network width {inner_dim}")
    count = lambda prefix: len({k.split(".")[1] for k in state if k.startswith(prefix)})  # noqa: E731
    return {
        "stage": "d" if is_denoiser else "f",
        "latent_channels": channels,
        "window": window_channels // channels,
        "inner_dim": inner_dim,
        "depth": count("in_blocks."),
        "mid_depth": count("mid_blocks."),
        "heads": heads,
        "out_norm": "bn" if "head.norm.running_mean" in state else "ln",
    }


def _latent_channels_of(autoencoder: nn.Module | None) -> int | None:
    """c of an autoencoder's latents: from its declared latent shape, else by encoding one blank frame."""
    if autoencoder is None:
        return None
    try:
        return int(autoencoder.latent_dims(64, 64)[0])
    except Exception:  # not every autoencoder declares its latent shape
        pass
    try:
        with torch.no_grad():
            return int(autoencoder.encode(torch.zeros(1, 1, 3, 64, 64)).shape[-3])
    except Exception:
        return None
