"""PVDM speed against upstream's own code: AE training step, UNet training step, DDIM sampling.

    # upstream (github sihyun-yu/PVDM) as a plain folder outside the repository:
    git clone https://github.com/sihyun-yu/PVDM /tmp/up/pvdm
    OMP_NUM_THREADS=1 python benchmarks/pvdm.py --upstream /tmp/up/pvdm --reduced --threads 1   # this CPU
    python benchmarks/pvdm.py --upstream /tmp/up/pvdm                                            # GPU, released config

Both sides run with the same weights: upstream's modules are built, randomised, and their state dict is
loaded into vpt's models through vpt's own converters (`autoencoder_from_upstream_state`,
`convert_upstream_unet`); the outputs are checked to agree before anything is timed. Each task is
timed interleaved (upstream, vpt, vpt, upstream per repeat) so drift on a shared machine hits both
sides alike; the table shows median and min seconds and the ratio upstream / vpt (> 1: vpt faster).

What a step is, on both sides alike:
- AE step: encode + decode of one batch of 16-frame clips, L1 reconstruction loss, backward, AdamW step
  (the LPIPS and discriminator terms of the full objective are left out: they are the same networks on
  both sides and need downloaded weights).
- UNet step: the ε-prediction loss at given (t, noise) with the previous clip's latent as condition,
  backward, AdamW step.
- Sampling: one conditional latent clip by DDIM on upstream's truncated grid, η = 1, guidance w = 0.
  Upstream evaluates the zero-condition branch at every step even when w = 0 (two UNet calls per step);
  vpt skips it. That is part of what the ratio measures.

On CUDA each side runs as its training code does: upstream's AE under fp16 autocast with a GradScaler
and its UNet in float32 with ADM's legacy attention; vpt under bf16 autocast with SDPA, with
`--compile` also torch.compile. Peak GPU memory per task is reported. On CPU both run in float32.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine  # noqa: E402

from vpt.models.autoencoders import autoencoder_from_upstream_state  # noqa: E402
from vpt.models.pvdm import PVDM, PVDMConfig, convert_upstream_unet  # noqa: E402

# The released models (upstream configs/autoencoder/base.yaml, configs/latent-diffusion/base.yaml) and a
# CPU-sized reduction. Upstream's UNet hard-codes 32x32 + 16x32 + 16x32 planes, so only its width shrinks.
RELEASED = dict(
    ae=dict(channels=384, resolution=256),
    unet=dict(model_channels=256, channel_mult=[1, 2, 4, 4], num_res_blocks=2, attention_resolutions=[4, 2, 1]),
)
REDUCED = dict(
    ae=dict(channels=64, resolution=64),
    unet=dict(model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=1, attention_resolutions=[2, 1]),
)
FRAMES, LATENT_CHANNELS, NUM_HEADS = 16, 4, 8


def agreement(device) -> dict:
    """Tolerance of the float32 agreement checks: CUDA convolutions may run in TF32 (torch's default)."""
    return dict(atol=1e-4, rtol=1e-3) if device.type == "cpu" else dict(atol=5e-3, rtol=5e-3)


def import_upstream(root: Path) -> dict[str, types.ModuleType]:
    """Upstream's AE, UNet and DDPM modules from a checkout at `root`. Shims: `torchvision` (imported
    by losses/ddpm.py for an image grid it never uses here) when it is not installed, and a silent
    `tqdm` for the sampling loop so progress bars do not cost time or clutter the table."""
    if not (root / "models" / "ddpm" / "unet.py").is_file():
        sys.exit(f"--upstream {root}: not a PVDM checkout (no models/ddpm/unet.py)")
    try:
        import torchvision.utils  # noqa: F401
    except ImportError:
        shim = types.ModuleType("torchvision")
        shim.utils = types.SimpleNamespace(make_grid=None)
        sys.modules.update({"torchvision": shim, "torchvision.utils": shim.utils})
    sys.path.insert(0, str(root))
    import importlib

    modules = {
        name: importlib.import_module(name)
        for name in ("models.autoencoder.autoencoder_vit", "models.ddpm.unet", "losses.ddpm")
    }
    modules["losses.ddpm"].tqdm = lambda iterable, **_: iterable
    return modules


# --- the two sides, with the same weights ------------------------------------------------------------


def build_autoencoders(up, config: dict, device):
    torch.manual_seed(0)
    ddconfig = dict(
        double_z=False,
        channels=config["channels"],
        resolution=config["resolution"],
        timesteps=FRAMES,
        skip=1,
        in_channels=3,
        out_ch=3,
        num_res_blocks=2,
        attn_resolutions=[],
        splits=1,
    )
    theirs = up["models.autoencoder.autoencoder_vit"].ViTAutoencoder(LATENT_CHANNELS, ddconfig)
    ours = autoencoder_from_upstream_state(theirs.state_dict(), where="upstream ViTAutoencoder")
    return theirs.to(device).train(), ours.requires_grad_(True).to(device).train()


def build_unets(up, config: dict, device):
    torch.manual_seed(0)
    unet = up["models.ddpm.unet"].UNetModel(
        image_size=32,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_heads=NUM_HEADS,
        use_scale_shift_norm=True,
        resblock_updown=True,
        cond_model=True,
        **config,
    )
    with torch.no_grad():  # zero-initialised heads would make any two networks agree
        for param in unet.parameters():
            if not param.any():
                param.normal_(0.0, 0.02)
    theirs = up["losses.ddpm"].DDPM(
        up["models.ddpm.unet"].DiffusionWrapper(unet), channels=LATENT_CHANNELS, image_size=32, w=0.0
    )
    ours = PVDM(
        PVDMConfig(
            latent_channels=LATENT_CHANNELS,
            latent_size=32,
            latent_frames=FRAMES,
            num_heads=NUM_HEADS,
            cond_model=True,
            w=0.0,
            eta=1.0,
            **config,
        )
    )
    ours.unet.load_state_dict(convert_upstream_unet(theirs.model.state_dict()))
    return theirs.to(device).train(), ours.to(device).train()


# --- what is timed -------------------------------------------------------------------------------------


def autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if device.type == "cuda" else contextlib.nullcontext()


class Stepper:
    """One optimiser step of `loss_fn` on `params`; on CUDA under autocast(dtype), fp16 with a GradScaler."""

    def __init__(self, params, loss_fn, device, dtype):
        self.params = list(params)
        self.loss_fn, self.device, self.dtype = loss_fn, device, dtype
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def __call__(self):
        with autocast(self.device, self.dtype):
            loss = self.loss_fn()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def ae_tasks(up, config, device, batch, compile_):
    theirs, ours = build_autoencoders(up, config, device)
    clips = (
        torch.rand(batch, 3, FRAMES, config["resolution"], config["resolution"], device=device) * 2 - 1
    )  # (B, C, T, H, W)
    ours_clips = clips.transpose(1, 2).contiguous()  # (B, T, C, H, W)
    with torch.no_grad():
        expected = theirs(clips)[0]  # (B T, C, H, W)
        got = ours.forward_train(ours_clips).reconstruction.flatten(0, 1)
    torch.testing.assert_close(got, expected, **agreement(device), msg="AE reconstructions disagree")
    forward = torch.compile(ours.forward_train) if compile_ else ours.forward_train
    flat = clips.transpose(1, 2).flatten(0, 1)  # upstream's (B T, C, H, W) order
    return {
        "upstream": Stepper(theirs.parameters(), lambda: (theirs(clips)[0] - flat).abs().mean(), device, torch.float16),
        "vpt": Stepper(
            ours.parameters(),
            lambda: (forward(ours_clips).reconstruction - ours_clips).abs().mean(),
            device,
            torch.bfloat16,
        ),
    }


def unet_tasks(up, config, device, batch, compile_):
    theirs, ours = build_unets(up, config, device)
    torch.manual_seed(1)
    x0, cond, noise = (torch.randn(batch, LATENT_CHANNELS, 2048, device=device).clamp(-1, 1) for _ in range(3))
    t = torch.randint(0, 1000, (batch,), device=device)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.unet(x0, cond, t), theirs.model(x0, cond, t), **agreement(device), msg="UNet outputs disagree"
        )
        torch.testing.assert_close(
            ours.diffusion_loss(x0, cond, t, noise),
            theirs.p_losses(x0, cond, t, noise)[0],
            **agreement(device),
            msg="diffusion losses disagree",
        )
    if compile_:
        ours.unet = torch.compile(ours.unet)
    # upstream's diffusion trainer runs the criterion outside autocast: float32
    return {
        "upstream": Stepper(theirs.parameters(), lambda: theirs.p_losses(x0, cond, t, noise)[0], device, torch.float32),
        "vpt": Stepper(ours.parameters(), lambda: ours.diffusion_loss(x0, cond, t, noise), device, torch.bfloat16),
    }, (theirs, ours, cond)


def sampling_tasks(models, device, steps):
    theirs, ours, cond = models
    theirs.eval(), ours.eval()
    theirs.sampling_timesteps, theirs.is_ddim_sampling = steps, True
    cond = cond[:1]

    def upstream():
        torch.manual_seed(2)
        return theirs.ddim_sample((1, LATENT_CHANNELS, 2048), cond)

    def vpt():
        torch.manual_seed(2)
        with autocast(device, torch.bfloat16):
            return ours.sample_latents(1, cond, steps=steps)

    if device.type == "cpu":  # same global-RNG draws in the same order on both sides: the same sample
        torch.testing.assert_close(vpt(), upstream(), **agreement(device), msg="DDIM samples disagree")
    return {"upstream": upstream, "vpt": vpt}


def interleaved(tasks: dict, device, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per call of each side, timed A, B, B, A per repeat after one warm-up call each; peak memory on CUDA."""
    times = {name: [] for name in tasks}
    peaks = {}
    for name, task in tasks.items():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        task()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30
    first, second = list(tasks)
    for _ in range(repeats):
        for name in (first, second, second, first):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            tasks[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - started)
    return {name: dict(median=statistics.median(v), min=min(v), peak_gib=peaks.get(name)) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", type=Path, required=True, help="a checkout of github.com/sihyun-yu/PVDM")
    parser.add_argument(
        "--reduced", action="store_true", help=f"CPU-sized models: AE {REDUCED['ae']}, UNet {REDUCED['unet']}"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--ae-batch", type=int, default=1)
    parser.add_argument(
        "--unet-batch", type=int, default=None, help="default: 2 reduced, 8 (per-GPU batch of the release) otherwise"
    )
    parser.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (default: 4 reduced, 100 otherwise)")
    parser.add_argument("--repeats", type=int, default=3, help="A,B,B,A rounds per task")
    parser.add_argument("--compile", action="store_true", help="torch.compile vpt's AE forward and UNet (CUDA)")
    parser.add_argument("--tasks", default="ae,unet,sample")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = REDUCED if args.reduced else RELEASED
    unet_batch = args.unet_batch or (2 if args.reduced else 8)
    steps = args.sample_steps or (4 if args.reduced else 100)
    wanted = set(args.tasks.split(","))
    up = import_upstream(args.upstream.resolve())

    results = {}
    if "ae" in wanted:
        results[
            f"AE step (batch {args.ae_batch} x {FRAMES}x{sizes['ae']['resolution']}², C={sizes['ae']['channels']})"
        ] = interleaved(ae_tasks(up, sizes["ae"], device, args.ae_batch, args.compile), device, args.repeats)
    if wanted & {"unet", "sample"}:
        tasks, models = unet_tasks(up, sizes["unet"], device, unet_batch, args.compile)
        width = f"{sizes['unet']['model_channels']}x{sizes['unet']['channel_mult']}"
        if "unet" in wanted:
            results[f"UNet step (batch {unet_batch}, {width}, cond)"] = interleaved(tasks, device, args.repeats)
        if "sample" in wanted:
            results[f"DDIM sample ({steps} steps, 1 clip, {width})"] = interleaved(
                sampling_tasks(models, device, steps), device, args.repeats
            )
    print_table(results, device, args)


def print_table(results, device, args) -> None:
    from rich.console import Console
    from rich.table import Table

    precision = (
        "fp32 both"
        if device.type == "cpu"
        else "upstream fp16 AE / fp32 UNet, vpt bf16 + SDPA" + (" + compile" if args.compile else "")
    )
    table = Table(
        title=f"PVDM {'reduced' if args.reduced else 'released'} config, {precision}, "
        f"{args.repeats} x (A,B,B,A)\n{machine(device)}"
    )
    for column in ("task", "upstream median s", "upstream min s", "vpt median s", "vpt min s", "ratio (median)"):
        table.add_column(column, justify="left" if column == "task" else "right")
    if device.type == "cuda":
        table.add_column("peak GiB upstream / vpt", justify="right")
    for task, sides in results.items():
        up, ours = sides["upstream"], sides["vpt"]
        row = [
            task,
            f"{up['median']:.3f}",
            f"{up['min']:.3f}",
            f"{ours['median']:.3f}",
            f"{ours['min']:.3f}",
            f"{up['median'] / ours['median']:.2f}x",
        ]
        if device.type == "cuda":
            row.append(f"{up['peak_gib']:.1f} / {ours['peak_gib']:.1f}")
        table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
