"""Seer speed: seconds per sampled video and per training step, SDPA vs xformers.

    python benchmarks/seer.py [--preset full|tiny] [--frames 16] [--context 1] [--resolution 256]
                              [--steps 30] [--batch 1] [--repeats 2] [--attention sdpa,xformers]

`full` is the released architecture (SD v1.5 UNet inflated with 16 SAWT blocks, FSText 8 layers,
a CLIP-L-shaped text encoder, SD's VAE) with random weights - speed does not depend on the values.
`tiny` is configs/seer/tiny.yaml (pixel space), for machines without a GPU.

Sampling: one reference frame -> F - R frames at `--steps` requested DDIM steps (31 run for 30) with
classifier-free guidance (two UNet passes per step), VAE encode + decode included; reported per video.
Training: one optimiser step of `loss` (VAE encode, CLIP, FSText, UNet forward/backward on the
trainable part) with batch `--batch`. On CUDA both run under bf16 autocast.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from common import machine
from vpt.config import validate
from vpt.models import attention
from vpt.models.seer import Seer, SeerConfig

TINY = Path(__file__).resolve().parents[1] / "configs" / "seer" / "tiny.yaml"


def full_config(vae_dir: Path, frames: int, context: int) -> SeerConfig:
    """The released Seer shape with random weights: SD-sized UNet and VAE, CLIP-L-sized text encoder."""
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                  sample_size=512).save_pretrained(vae_dir)
    return validate(SeerConfig, {"vae": str(vae_dir), "frames": frames, "context_frames": context,
                                 "text": {"hidden_size": 768, "layers": 12, "heads": 12, "max_length": 77}},
                    source="benchmark")


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
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frames = args.frames or (16 if args.preset == "full" else 8)
    resolution = args.resolution or (256 if args.preset == "full" else 32)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = full_config(Path(tmp) / "vae", frames, args.context) if args.preset == "full" else tiny_config(frames, args.context)
        model = Seer(cfg).to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    video = torch.rand(args.batch, frames, 3, resolution, resolution, device=device) * 2 - 1
    prompts = ["close the book"] * args.batch
    optimizer = torch.optim.AdamW(model.param_groups(), lr=1e-5)

    def sample() -> None:
        model.eval()
        model.predict(video[:, :args.context], frames - args.context, prompt=prompts, steps=args.steps,
                      generator=torch.Generator(device).manual_seed(0))

    def train_step() -> None:
        model.train()
        with autocast:
            loss = model.loss({"video": video, "text": prompts})["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"Seer {args.preset}: {frames} frames ({args.context} reference) at {resolution}px, batch {args.batch}, "
          f"{args.steps} DDIM steps requested ({model.sample_record(args.steps)['ddim_steps_run']} run), "
          f"{trainable / 1e6:.1f} M trained params; {machine(device)}")
    print(f"{'attention':<10} {'s / sampled video':>18} {'s / train step':>15}")
    for backend in args.attention.split(","):
        if backend == "xformers" and not (attention.xformers_available() and device.type == "cuda"):
            print(f"{backend:<10} {'n/a (not installed or no CUDA)':>34}")
            continue
        attention.set_backend(backend)
        sample_s = timed(sample, device, args.repeats) / args.batch
        train_s = timed(train_step, device, args.repeats)
        print(f"{backend:<10} {sample_s:>18.2f} {train_s:>15.2f}")
    attention.set_backend("sdpa")


if __name__ == "__main__":
    main()
