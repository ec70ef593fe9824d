"""Seer speed: seconds per sampled video and per training step, SDPA vs xformers.

    python benchmarks/seer.py [--preset full|tiny] [--frames 16] [--context 1] [--resolution 256]
                              [--steps 30] [--batch 1] [--repeats 2] [--attention sdpa,xformers]

`full` is the released architecture (SD v1.5 UNet inflated with 16 SAWT blocks, FSText 8 layers,
a CLIP-L-shaped text encoder, SD's VAE) with random weights - speed does not depend on the values.
`tiny` is configs/seer/tiny.yaml (pixel space), for machines without a GPU.

    python benchmarks/seer.py --norm [--repeats 10]

times the clip-wide GroupNorm alone (one clip of 16 frames x 320 channels x 32 x 32, SD's first level,
and the parity fixture's tiny first level, 2 clips x 5 frames x 32 ch x 32 x 32) and the forward of
the parity fixture's tiny UNet, in ms (min over repeats, after a warm-up). For a before/after, run it
once per checkout: the script times whatever `vpt` is first on PYTHONPATH.

Sampling: one reference frame -> F - R frames at `--steps` requested DDIM steps (31 run for 30) with
classifier-free guidance (two UNet passes per step), VAE encode + decode included; reported per video.
Training: one optimiser step of `loss` (VAE encode, CLIP, FSText, UNet forward/backward on the
trainable part) with batch `--batch`. On CUDA both run under bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml
from common import machine

from vpt.config import validate
from vpt.models import attention
from vpt.models.seer import Seer, SeerConfig
from vpt.models.seer.layers import FrameGroupNorm, use_diffusers_attention
from vpt.models.seer.unet import SeerUNet, UNetSize

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "seer" / "tiny.yaml"
FIXTURE_TINY = ROOT / "tests" / "fixtures" / "seer" / "config_tiny.json"


def full_config(vae_dir: Path, frames: int, context: int) -> SeerConfig:
    """The released Seer shape with random weights: SD-sized UNet and VAE, CLIP-L-sized text encoder."""
    from diffusers import AutoencoderKL

    AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).save_pretrained(vae_dir)
    return validate(
        SeerConfig,
        {
            "vae": str(vae_dir),
            "frames": frames,
            "context_frames": context,
            "text": {"hidden_size": 768, "layers": 12, "heads": 12, "max_length": 77},
        },
        source="benchmark",
    )


def tiny_config(frames: int, context: int) -> SeerConfig:
    model = yaml.safe_load(TINY.read_text())["model"]
    model.update(frames=frames, context_frames=context)
    return validate(SeerConfig, model, source=str(TINY))


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (kernels, allocator)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def norm_rows(device: torch.device, repeats: int) -> None:
    """ms per call of FrameGroupNorm at two clip shapes, and of the parity fixture's tiny UNet forward."""
    fixture = json.loads(FIXTURE_TINY.read_text())
    unet_cfg, batch, frames = fixture["unet"], fixture["batch"], fixture["frames_total"]
    print(f"Seer GroupNorm over the clip, ms per forward (min of {repeats}); {machine(device)}")
    with torch.no_grad():
        for label, (clips, clip_frames, channels, side) in {
            "norm 1 x 16 frames x 320 ch x 32^2": (1, 16, 320, 32),
            f"norm {batch} x {frames} frames x 32 ch x 32^2 (tiny)": (batch, frames, 32, 32),
        }.items():
            norm = FrameGroupNorm(32, channels, eps=1e-6).to(device)
            folded = torch.randn(clips * clip_frames, channels, side, side, device=device)  # (B*F, C, H, W)
            print(f"{label:<45} {timed(lambda: norm(folded, clip_frames), device, repeats) * 1e3:>9.2f}")
        size = UNetSize(
            in_channels=unet_cfg["in_channels"],
            out_channels=unet_cfg["out_channels"],
            block_out_channels=unet_cfg["block_out_channels"],
            layers_per_block=unet_cfg["layers_per_block"],
            heads=unet_cfg["attention_head_dim"],
            cross_attention_dim=unet_cfg["cross_attention_dim"],
            norm_eps=unet_cfg["norm_eps"],
        )
        unet = SeerUNet(size).to(device).eval()
        side = unet_cfg["sample_size"]
        sample = torch.randn(batch, frames, size.in_channels, side, side, device=device)  # (B, F, C, h, w)
        context = torch.randn(batch, frames, fixture["text_tokens"], size.cross_attention_dim, device=device)
        reference = fixture["reference_frames"]
        forward_ms = timed(lambda: unet(sample, 250, context, reference_frames=reference), device, repeats) * 1e3
        print(f"{'tiny UNet forward (parity fixture shape)':<45} {forward_ms:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("full", "tiny"), default="full" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--frames", type=int, default=None, help="F, reference included (full: 16, tiny: 8)")
    parser.add_argument("--context", type=int, default=1, help="R reference frames")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (full: 256, tiny: 32)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--attention", default="sdpa,xformers")
    parser.add_argument("--norm", action="store_true", help="time the clip GroupNorm and the tiny UNet forward only")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.norm:
        norm_rows(device, args.repeats)
        return
    frames = args.frames or (16 if args.preset == "full" else 8)
    resolution = args.resolution or (256 if args.preset == "full" else 32)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = (
            full_config(Path(tmp) / "vae", frames, args.context)
            if args.preset == "full"
            else tiny_config(frames, args.context)
        )
        model = Seer(cfg).to(device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    video = torch.rand(args.batch, frames, 3, resolution, resolution, device=device) * 2 - 1
    prompts = ["close the book"] * args.batch
    optimizer = torch.optim.AdamW(model.param_groups(), lr=1e-5)

    def sample() -> None:
        model.eval()
        model.predict(
            video[:, : args.context],
            frames - args.context,
            prompt=prompts,
            steps=args.steps,
            generator=torch.Generator(device).manual_seed(0),
        )

    def train_step() -> None:
        model.train()
        with autocast:
            loss = model.loss({"video": video, "text": prompts})["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"Seer {args.preset}: {frames} frames ({args.context} reference) at {resolution}px, batch {args.batch}, "
        f"{args.steps} DDIM steps requested ({model.sample_record(args.steps)['ddim_steps_run']} run), "
        f"{trainable / 1e6:.1f} M trained params; {machine(device)}"
    )
    print(f"{'attention':<10} {'s / sampled video':>18} {'s / train step':>15}")
    for backend in args.attention.split(","):
        if backend == "xformers" and not (attention.xformers_available() and device.type == "cuda"):
            print(f"{backend:<10} {'n/a (not installed or no CUDA)':>34}")
            continue
        attention.set_backend(backend)
        use_diffusers_attention(model)  # SD's attention picks its diffusers processor for the backend
        sample_s = timed(sample, device, args.repeats) / args.batch
        train_s = timed(train_step, device, args.repeats)
        print(f"{backend:<10} {sample_s:>18.2f} {train_s:>15.2f}")
    attention.set_backend("sdpa")


if __name__ == "__main__":
    main()
