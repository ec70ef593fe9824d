"""Latte sampling against an independent reference of upstream's respaced samplers.

The reference below follows the maths of the IDDPM/DiT diffusion code the official Latte uses
(`create_diffusion(str(steps))`: `space_timesteps`, the respaced betas 1 - ᾱ(t_i)/ᾱ(t_{i-1}), the
posterior mean of the unclipped x0 estimate (its samplers pass clip_denoised=False), fixed_large /
fixed_small / learned-range variances, DDIM with η = 0) and, at 1000 steps, VideoGeneration-PyTorch's
ancestral step. Its tables are NumPy float64, handed to each step as float32, as upstream does.
Both sides run the same tiny random network from the same initial and per-step noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpt.errors import UsageError
from vpt.models.latent import PixelAutoencoder
from vpt.models.latte import Latte, LatteConfig, space_timesteps

T = 1000
TINY = dict(
    latent_channels=4,
    num_frames=3,
    patch_size=2,
    num_layers=2,
    hidden_size=32,
    num_heads=2,
    head_dim=16,
    timestep_emb_dim=16,
)
SHAPE = (2, 3, 4, 4, 4)  # (B, F, c, h, w)


# --- the reference --------------------------------------------------------------------------------


def reference_timesteps(steps: int, spacing: str) -> list[int]:
    """Upstream's kept steps, ascending: one evenly strided section, or the "ddimN" integer stride."""
    if spacing == "ddim":
        stride = next(s for s in range(1, T) if len(range(0, T, s)) == steps)
        return list(range(0, T, stride))
    frac = (T - 1) / (steps - 1) if steps > 1 else 1
    kept, position = [], 0.0
    for _ in range(steps):
        kept.append(round(position))
        position += frac
    return sorted(kept)


def reference_tables(kept: list[int]) -> dict[str, np.ndarray]:
    base = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T, dtype=np.float64))
    betas, last = [], 1.0
    for t in kept:
        betas.append(1.0 - base[t] / last)
        last = base[t]
    betas = np.array(betas)
    ac = np.cumprod(1.0 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "betas": betas,
        "ac": ac,
        "ac_prev": ac_prev,
        "post_var": post_var,
        "post_log_var": np.log(np.append(post_var[1], post_var[1:])),
        "large_var": np.append(post_var[1], betas[1:]),
        "recip": np.sqrt(1.0 / ac),
        "recipm1": np.sqrt(1.0 / ac - 1.0),
        "coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "coef2": (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
    }


def reference_sample(
    net,
    cfg: LatteConfig,
    sampler: str,
    steps: int,
    spacing: str,
    seed: int,
    labels=None,
    guidance: float = 1.0,
    vg_step: bool = False,
) -> torch.Tensor:
    kept = reference_timesteps(steps, spacing)
    tab = reference_tables(kept)
    at = lambda name, i: torch.tensor(tab[name][i], dtype=torch.float64).float()  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=gen)
    c = SHAPE[2]
    for i in range(len(kept) - 1, -1, -1):
        t = torch.full((SHAPE[0],), kept[i], dtype=torch.long)
        if labels is None or guidance == 1.0:
            out = net(x, t, labels)
        else:  # upstream's forward_with_cfg: guided noise channels, the labelled half's variance
            both = net(
                torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, cfg.num_classes)])
            )
            cond, uncond = both.chunk(2)
            out = torch.cat([uncond[:, :, :c] + guidance * (cond[:, :, :c] - uncond[:, :, :c]), cond[:, :, c:]], dim=2)
        eps, var_values = out[:, :, :c], out[:, :, c:]
        if vg_step:  # VideoGeneration-PyTorch's sample_prev_timestep (1000 steps): ε form of the mean
            mean = (x - at("betas", i) * eps / torch.sqrt(1 - at("ac", i))) / torch.sqrt(1 - at("betas", i))
            if i > 0:
                x = mean + at("post_var", i).sqrt() * torch.randn(SHAPE, generator=gen)
            else:
                x = mean
            continue
        x0 = at("recip", i) * x - at("recipm1", i) * eps
        if sampler == "ddim":
            eps = (at("recip", i) * x - x0) / at("recipm1", i)
            x = x0 * torch.sqrt(at("ac_prev", i)) + torch.sqrt(1 - at("ac_prev", i)) * eps
            continue
        mean = at("coef1", i) * x0 + at("coef2", i) * x
        if cfg.learn_sigma:
            frac = (var_values + 1) / 2
            log_var = frac * torch.log(at("betas", i)) + (1 - frac) * at("post_log_var", i)
        elif cfg.variance_type == "fixed_large":
            log_var = torch.log(at("large_var", i)).expand_as(x)
        else:
            log_var = at("post_log_var", i).expand_as(x)
        if i > 0:
            x = mean + torch.exp(0.5 * log_var) * torch.randn(SHAPE, generator=gen)
        else:
            x = mean
    return x


# --- the comparisons ------------------------------------------------------------------------------


class _Plausible(torch.nn.Module):
    """A random DiT whose noise estimate leans on ε̂ = sqrt(1 - ᾱ_t) x_t (the right answer for data at
    0), so that the unclipped x0 estimates stay bounded and the samples are samples, not blow-ups; its
    variance interpolation is squashed into [-1, 1], the range a trained model keeps to."""

    def __init__(self, base: torch.nn.Module, channels: int):
        super().__init__()
        self.base, self.channels = base, channels
        self.register_buffer("scale", torch.from_numpy(np.sqrt(1 - reference_tables(list(range(T)))["ac"])).float())

    def forward(self, x, t, labels=None):
        out = self.base(x, t, labels)
        c = self.channels
        return torch.cat(
            [0.3 * out[:, :, :c] + self.scale[t].reshape(-1, 1, 1, 1, 1) * x, torch.tanh(out[:, :, c:])], dim=2
        )


def _model(**fields) -> Latte:
    torch.manual_seed(0)
    model = Latte(LatteConfig(**TINY, **fields), autoencoder=PixelAutoencoder())
    with torch.no_grad():
        for parameter in model.denoiser.parameters():  # no zero-initialised layer: every part matters
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    model.denoiser = _Plausible(model.denoiser, model.cfg.latent_channels)
    return model.eval()


FLAVOURS = {
    "vg": dict(position_order="row", variance_type="fixed_small"),
    "official": dict(position_order="column", variance_type="fixed_large"),
    "official-learned-sigma": dict(position_order="column", learn_sigma=True),
}
MEASURED: dict[str, float] = {}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _vpt(model: Latte, sampler: str, steps: int, seed: int, labels=None, guidance: float = 1.0) -> torch.Tensor:
    known = torch.zeros(SHAPE[0], 0, *SHAPE[2:])
    return model.sample_latents(
        known,
        SHAPE[1],
        labels,
        steps=steps,
        sampler=sampler,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("steps", [1000, 250, 50, 7])
def test_ddpm_matches_respaced_reference(flavour, steps):
    model = _model(**FLAVOURS[flavour])
    with torch.no_grad():
        ours = _vpt(model, "ddpm", steps, seed=steps)
        theirs = reference_sample(model.denoiser, model.cfg, "ddpm", steps, "even", seed=steps)
    difference = _relative(ours, theirs)
    MEASURED[f"ddpm {flavour} {steps}"] = difference
    assert difference <= 1e-5, difference
    assert ours.abs().max() < 20  # a sample, not a blow-up both sides share


def test_vg_1000_steps_match_its_own_ancestral_step():
    """At 1000 steps the respaced process is VideoGeneration-PyTorch's own (posterior variance, ε-form mean)."""
    model = _model(**FLAVOURS["vg"])
    with torch.no_grad():
        difference = _relative(
            _vpt(model, "ddpm", 1000, seed=3),
            reference_sample(model.denoiser, model.cfg, "ddpm", 1000, "even", seed=3, vg_step=True),
        )
    MEASURED["ddpm vg 1000 (VG step)"] = difference
    assert difference <= 1e-5, difference


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("steps", [50, 10])
@pytest.mark.parametrize("spacing", ["even", "ddim"])
def test_ddim_matches_respaced_reference(flavour, steps, spacing):
    model = _model(**FLAVOURS[flavour], timestep_spacing=spacing)
    with torch.no_grad():
        ours = _vpt(model, "ddim", steps, seed=steps)
        theirs = reference_sample(model.denoiser, model.cfg, "ddim", steps, spacing, seed=steps)
    difference = _relative(ours, theirs)
    MEASURED[f"ddim {flavour} {spacing} {steps}"] = difference
    assert difference <= 1e-5, difference


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_guided_class_conditional_sampling_matches_reference(sampler):
    model = _model(**FLAVOURS["official-learned-sigma"], num_classes=3)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        ours = _vpt(model, sampler, 50, seed=5, labels=labels, guidance=4.0)
        theirs = reference_sample(model.denoiser, model.cfg, sampler, 50, "even", seed=5, labels=labels, guidance=4.0)
    difference = _relative(ours, theirs)
    MEASURED[f"{sampler} guided 50"] = difference
    assert difference <= 1e-5, difference


def test_timesteps_are_upstreams():
    even250 = space_timesteps(T, 250)[::-1]
    assert even250[:4] == [999, 995, 991, 987] and even250[-3:] == [8, 4, 0] and len(even250) == 250
    assert space_timesteps(T, 50, "ddim")[::-1] == list(range(980, -1, -20))
    assert space_timesteps(T, 10, "ddim")[::-1] == list(range(900, -1, -100))
    assert space_timesteps(T, 7, "ddim") == list(range(0, 1000, 143))  # the smallest stride giving 7, not 1000 // 7
    # what the official sample scripts pass for DDIM too: create_diffusion("50")
    assert space_timesteps(T, 50)[::-1][:4] == [999, 979, 958, 938] and space_timesteps(T, 50)[0] == 0
    assert space_timesteps(T, 1000) == list(range(T))
    for steps in (1000, 250, 50, 7, 2):
        assert space_timesteps(T, steps) == reference_timesteps(steps, "even")
    with pytest.raises(UsageError, match="timestep_spacing"):
        space_timesteps(T, 999, "ddim")  # no integer stride gives 999 of 1000 (upstream raises too)
    with pytest.raises(UsageError, match="steps"):
        space_timesteps(T, 0)


def test_report_largest_differences():
    """Prints the measured differences (run with -s); runs last in this file."""
    for name, value in sorted(MEASURED.items()):
        print(f"{name}: {value:.2e}")
