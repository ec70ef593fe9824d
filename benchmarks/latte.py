"""Latte: vpt's video DiT against the official model code (Vchitect/Latte `models/latte.py` with its IDDPM
`diffusion/` package), at equal settings and on equal weights.

    python benchmarks/latte.py --upstream PATH/TO/Latte                # S/2 and B/2, CPU or GPU
    python benchmarks/latte.py --upstream PATH --sizes S/2 --threads 1 --batch 1 --repeats 2 --sample-steps 2

PATH is a local checkout of the official repository; nothing of it is copied into vpt. Its model file
imports `timm` (`Mlp`, `PatchEmbed`); where timm is not installed this script registers two stand-ins
that compute the same thing (see benchmarks/README.md).

Both sides are the unconditional, learned-variance model of the official training config on
16 x 32 x 32 x 4 latents (256 px clips through the SD VAE), fp32 eager, the official attention in its
released default (`attention_mode: math`), vpt's through SDPA:
- training step: one loss (ε MSE + IDDPM's VLB term for the variance, t ~ U{0..999}) on cached latents,
  backward, AdamW step (no EMA, no clipping on either side);
- sampling: one clip of `--sample-steps` respaced ancestral DDPM steps (learned range variance),
  vpt's `Latte.sample_latents` against the official `p_sample_loop`.
Before timing, the official weights are loaded into vpt's model through its converter and the two
denoisers' outputs and losses (same t, same noise) are compared. Timing interleaves the two
(vpt, official, official, vpt per repeat) and reports median and minimum seconds per call (CPU time of
the process on a CPU, so that other work on a shared machine does not count; wall time on a GPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine  # noqa: E402

from vpt.models.latte import Latte, LatteConfig, convert_official_state  # noqa: E402

# --- the official code, imported from a checkout -----------------------------------------------------


class _Mlp(nn.Module):
    """timm's `Mlp` as the official block uses it: fc1, activation, fc2 (dropout 0, no norm)."""

    def __init__(self, in_features, hidden_features, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        self.fc1, self.act, self.fc2 = (
            nn.Linear(in_features, hidden_features),
            act_layer(),
            nn.Linear(hidden_features, in_features),
        )

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _PatchEmbed(nn.Module):
    """timm's `PatchEmbed`: a stride-p convolution, flattened to (N, patches, D)."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, bias=bias)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def _timm_stand_ins() -> dict[str, types.ModuleType]:
    """Modules that give the official model file the two timm classes it imports."""
    vision_transformer = types.ModuleType("timm.models.vision_transformer")
    vision_transformer.Mlp, vision_transformer.PatchEmbed = _Mlp, _PatchEmbed
    return {
        "timm": types.ModuleType("timm"),
        "timm.models": types.ModuleType("timm.models"),
        "timm.models.vision_transformer": vision_transformer,
    }


def load_official(upstream: Path):
    """(official models/latte.py as a module, its `diffusion` package, what supplied timm), without its
    models/__init__.py (which imports the text-to-video model and its dependencies)."""
    if not (upstream / "models" / "latte.py").is_file():
        sys.exit(f"--upstream {upstream}: no models/latte.py there (a checkout of the official Latte repository)")
    spec = importlib.util.spec_from_file_location("official_latte", upstream / "models" / "latte.py")
    module = importlib.util.module_from_spec(spec)
    stand_ins = {} if importlib.util.find_spec("timm") is not None else _timm_stand_ins()
    sys.modules.update(stand_ins)
    try:
        spec.loader.exec_module(module)
    finally:  # only that file sees them (diffusers probes for a real timm)
        for name in stand_ins:
            sys.modules.pop(name)
    sys.path.insert(0, str(upstream))
    import diffusion  # the official IDDPM code (diffusion/__init__.py: create_diffusion)

    return module, diffusion, "stand-ins for timm Mlp/PatchEmbed" if stand_ins else "timm"


# --- the two models on equal weights -------------------------------------------------------------------


def build_pair(official_module, size: str, frames: int, latent: int, device: torch.device):
    """Official Latte-<size> with every trainable weight drawn at random (its zero-initialised adaLN and
    output layers would make any two models agree), and vpt's Latte holding the same weights."""
    torch.manual_seed(0)
    official = official_module.Latte_models[f"Latte-{size}"](
        input_size=latent, num_frames=frames, learn_sigma=True, extras=1, num_classes=1000
    )
    with torch.no_grad():
        for parameter in official.parameters():
            if parameter.requires_grad:
                parameter.normal_(0.0, 0.02)
    cfg = LatteConfig(
        size=size, latent_channels=4, num_frames=frames, timestep_emb_dim=256, position_order="column", learn_sigma=True
    )
    ours = Latte(cfg)
    ours.denoiser.load_state_dict(convert_official_state(official.state_dict()))
    return official.to(device), ours.to(device)


def check_agreement(official, ours: Latte, diffusion, latents: torch.Tensor) -> dict[str, float]:
    """Largest output difference of the two denoisers, and the two training losses at the same t and noise."""
    batch = latents.shape[0]
    t = torch.randint(0, 1000, (batch,), device=latents.device)
    official.eval(), ours.eval()
    with torch.no_grad():
        output_diff = (official(latents, t) - ours.denoiser(latents, t)).abs().max().item()
        torch.manual_seed(3)  # vpt's loss draws t, then the noise: draw the same for the official loss
        ours_loss = ours.loss({"latents": latents})["loss"].item()
        torch.manual_seed(3)
        t = torch.randint(0, 1000, (batch,), device=latents.device)
        noise = torch.randn_like(latents)
        official_loss = (
            diffusion.create_diffusion("").training_losses(official, latents, t, noise=noise)["loss"].mean().item()
        )
    return {"output_max_abs_diff": output_diff, "loss_vpt": ours_loss, "loss_official": official_loss}


# --- what is timed ---------------------------------------------------------------------------------------


def training_steps(official, ours: Latte, diffusion, latents: torch.Tensor):
    """(vpt step, official step): loss, backward, AdamW."""
    official_diffusion = diffusion.create_diffusion("")
    official_opt = torch.optim.AdamW([p for p in official.parameters() if p.requires_grad], lr=1e-4, weight_decay=0)
    ours_opt = torch.optim.AdamW(ours.denoiser.parameters(), lr=1e-4, weight_decay=0)

    def ours_step():
        ours.train()
        ours.loss({"latents": latents})["loss"].backward()
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)

    def official_step():
        official.train()
        t = torch.randint(0, official_diffusion.num_timesteps, (latents.shape[0],), device=latents.device)
        official_diffusion.training_losses(official, latents, t)["loss"].mean().backward()
        official_opt.step()
        official_opt.zero_grad(set_to_none=True)

    return ours_step, official_step


def sampling_runs(official, ours: Latte, diffusion, latents: torch.Tensor, steps: int):
    """(vpt sampling, official sampling) of one batch of clips with `steps` ancestral DDPM steps."""
    spaced = diffusion.create_diffusion(str(steps))
    empty = latents[:, :0]

    def ours_sample():
        ours.sample_latents(empty, latents.shape[1], steps=steps, sampler="ddpm")

    @torch.no_grad()
    def official_sample():
        official.eval()
        spaced.p_sample_loop(
            official.forward,
            latents.shape,
            torch.randn_like(latents),
            clip_denoised=False,
            progress=False,
            device=latents.device,
        )

    return ours_sample, official_sample


def interleaved(first, second, repeats: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Seconds per call of each, timed in the order first, second, second, first per repeat: on a GPU wall
    time, on a CPU the process's CPU time (on a machine shared with other work, wall time measures the
    neighbours as much as the code; with one torch thread CPU time is the work done)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for which in (0, 1, 1, 0):
            call = (first, second)[which]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = clock()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[which].append(clock() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", type=Path, required=True, help="local checkout of the official Latte repository")
    parser.add_argument("--sizes", nargs="+", default=["S/2", "B/2"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, default=32, help="latent side (32: 256 px frames through the SD VAE)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (each times both twice)")
    parser.add_argument("--sample-steps", type=int, default=4, help="respaced DDPM steps per sampled clip")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    official_module, diffusion, timm_note = load_official(args.upstream.resolve())

    rows = []
    for size in args.sizes:
        official, ours = build_pair(official_module, size, args.frames, args.latent, device)
        latents = torch.randn(args.batch, args.frames, 4, args.latent, args.latent, device=device)  # (B, F, c, h, w)
        agreement = check_agreement(official, ours, diffusion, latents)
        print(
            f"Latte-{size}: output max |diff| {agreement['output_max_abs_diff']:.2e}, loss vpt "
            f"{agreement['loss_vpt']:.6f} vs official {agreement['loss_official']:.6f}",
            flush=True,
        )
        for phase, pair in (
            ("train step", training_steps(official, ours, diffusion, latents)),
            (
                f"sample ({args.sample_steps} DDPM steps)",
                sampling_runs(official, ours, diffusion, latents, args.sample_steps),
            ),
        ):
            pair[0](), pair[1]()  # warm-up (allocator, first-call costs)
            ours_times, official_times = interleaved(*pair, args.repeats, device)
            rows.append((size, phase, ours_times, official_times))
            print(
                f"  {phase}: vpt {statistics.median(ours_times):.3f} s, official "
                f"{statistics.median(official_times):.3f} s (median)",
                flush=True,
            )

    clock = "wall" if device.type == "cuda" else "CPU"
    print(
        f"\nLatte, vpt vs official model code: batch {args.batch} x {args.frames} x 4 x {args.latent} x {args.latent} "
        f"latents, fp32 eager, learned variance, unconditional; {args.repeats * 2} timed calls each, interleaved, "
        f"{clock} seconds"
    )
    print(f"{'model':<8} {'phase':<24} {'vpt median (min) s':>20} {'official median (min) s':>25} {'speed-up':>9}")
    for size, phase, ours_times, official_times in rows:
        ours_med, official_med = statistics.median(ours_times), statistics.median(official_times)
        print(
            f"{size:<8} {phase:<24} {ours_med:>11.3f} ({min(ours_times):.3f}) "
            f"{official_med:>16.3f} ({min(official_times):.3f}) {official_med / ours_med:>8.2f}x"
        )
    print(f"machine: {machine(device)}; official code: {args.upstream.resolve().name} with {timm_note}")


if __name__ == "__main__":
    main()
