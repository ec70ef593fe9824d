"""vpt against the upstream code it reimplements, side by side in one process.

    python benchmarks/vs_upstream.py --river PATH/river --taming PATH/taming-transformers
    python benchmarks/vs_upstream.py --river PATH/river --only river-train --sizes tiny --repeats 3

PATH/... are local checkouts of the upstream repositories (see benchmarks/README.md for the URLs and
commits); nothing of theirs is copied into vpt, their modules are imported from the paths given.
For every workload both sides are built at the same configuration, the upstream weights are copied
into vpt through vpt's own converters, the outputs are checked to agree, and only then are both timed
interleaved (A, B, B, A per repeat, after one warm-up call each). The table gives the median and
minimum per call and the ratio upstream / vpt (> 1: vpt is faster), with the machine line.

Workloads:
  river-train   one training step (flow-matching loss, backward, AdamW) at the `--sizes` configs:
                upstream's Model.forward as its trainer calls it (it re-encodes the three frames of
                every sample with its VQGAN each step) against vpt on cached latents (`vpt
                save-latents`), and, the fair comparison of the regressor, both on the same latents
                (upstream's Model.forward with its autoencoder replaced by an identity).
  river-sample  a latent rollout with the same solver (RK4, 3/8 rule) on the same time grid:
                upstream's Model.generate_frames (torchdiffeq odeint; identity autoencoder, so the
                VQGAN encode/decode around the rollout is left out) against vpt's River.rollout.
  vqgan         taming's VQModel (f8_small, 64 x 64 frames) encode + quantise + decode against vpt's
                VQGAN.

Upstream imports that a CPU machine lacks are replaced by small stand-ins (`install_shims`); each
is named in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

WORKLOADS = ("river-train", "river-sample", "vqgan")

#: Regressor sizes timed (upstream's VectorFieldRegressor arguments; its heads are fixed at 8).
RIVER_SIZES = {
    "tiny": dict(inner_dim=64, depth=2, mid_depth=1),
    "medium": dict(inner_dim=512, depth=4, mid_depth=4),  # 40.6M parameters (the "39M medium")
}
LATENT = (4, 8, 8)  # BAIR64 / KTH latents of the f8_small VQGAN: (c, h, w)
FRAME = (3, 64, 64)


class SetupError(Exception):
    """A missing checkout or package: reported in one line."""


# --- upstream imports --------------------------------------------------------------------------------


def install_shims() -> None:
    """Stand-ins for upstream imports that are absent on a CPU-only install and unused by what is timed.

    - `pytorch_lightning`: taming's VQModel subclasses `pl.LightningModule`; an nn.Module does for
      encode/decode (no Lightning hook runs).
    - `main`: taming's models import `instantiate_from_config` from the repository's training script,
      which pulls in Lightning and omegaconf; it only builds the training loss (`lossconfig`), which
      is replaced by an identity here.
    RIVER itself needs only torch, einops, pyyaml, tqdm and torchdiffeq (pip install torchdiffeq).
    """
    if "pytorch_lightning" not in sys.modules:
        try:
            import pytorch_lightning  # noqa: F401
        except ImportError:
            sys.modules["pytorch_lightning"] = types.SimpleNamespace(LightningModule=torch.nn.Module)
    main = types.ModuleType("main")
    main.instantiate_from_config = lambda config: torch.nn.Identity()
    sys.modules["main"] = main


def add_checkout(path: Path | None, flag: str, marker: str) -> Path:
    """Put an upstream checkout on sys.path after checking that it is one (`marker` exists in it)."""
    if path is None:
        raise SetupError(f"{flag} PATH is needed for this workload (a checkout of the upstream repository)")
    if not (path / marker).is_file():
        raise SetupError(f"{flag} {path}: not an upstream checkout ({marker} not found)")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    return path


def need_torchdiffeq() -> None:
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        raise SetupError("upstream RIVER samples with torchdiffeq: pip install torchdiffeq") from None


# --- timing -------------------------------------------------------------------------------------------


def interleaved(upstream: Callable[[], object], ours: Callable[[], object], args) -> dict[str, list[float]]:
    """Seconds per call of each side, timed A, B, B, A per `args.repeats` after one warm-up call each.

    With `--vpt-bf16` vpt's calls run under CPU bf16 autocast (its recommended setting on CPUs with bf16
    units); upstream trains and samples in fp32 only. Outputs are checked in fp32 before this."""
    def ours_at_precision() -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.vpt_bf16):
            return ours()

    times: dict[str, list[float]] = {"upstream": [], "vpt": []}
    calls = {"upstream": upstream, "vpt": ours_at_precision}
    upstream(), ours_at_precision()
    for _ in range(args.repeats):
        for side in ("upstream", "vpt", "vpt", "upstream"):
            started = time.perf_counter()
            calls[side]()
            times[side].append(time.perf_counter() - started)
    return times


def assert_close(name: str, upstream: torch.Tensor, ours: torch.Tensor, *, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Outputs must agree before anything is timed."""
    if upstream.shape != ours.shape or not torch.allclose(upstream.float(), ours.float(), rtol=rtol, atol=atol):
        difference = (upstream.float() - ours.float()).abs().max().item() if upstream.shape == ours.shape else "shape"
        raise AssertionError(f"{name}: vpt and upstream disagree (max |difference| {difference}); not timing")


# --- RIVER --------------------------------------------------------------------------------------------


class IdentityAutoencoder(torch.nn.Module):
    """Takes the place of upstream RIVER's VQGAN when latents are given directly."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x


def upstream_river(size: str, with_autoencoder: bool):
    """Upstream RIVER's Model at `size` (random weights, seeded), with its f8_small VQGAN or an identity."""
    from model import Model

    config = {
        "sigma": 1e-7,
        "vector_field_regressor": dict(state_size=LATENT[0], state_res=list(LATENT[1:]), out_norm="ln", **RIVER_SIZES[size]),
        "autoencoder": {"type": "ldm-vq", "config": "f8_small", "ckpt_path": None},
    }
    torch.manual_seed(0)
    model = Model(config)
    if not with_autoencoder:
        model.ae = IdentityAutoencoder()
    return model


def vpt_river(upstream_model):
    """vpt's River with the upstream regressor's weights, through vpt's converter (no autoencoder:
    vpt trains on cached latents and `rollout` works on latents)."""
    from vpt.models.river import River, RiverConfig, config_from_regressor_state, convert_upstream_regressor

    state = convert_upstream_regressor(upstream_model.vector_field_regressor.state_dict())
    model = River(RiverConfig(**config_from_regressor_state(state), time_grid="upstream"))
    model.regressor.load_state_dict(state)
    return model


def vpt_autoencoder_of(upstream_model):
    """vpt's VQGAN with the weights of upstream RIVER's autoencoder."""
    from vpt.models.autoencoders import autoencoder_from_upstream_state

    return autoencoder_from_upstream_state(upstream_model.ae.state_dict(), preset="f8_small")


def upstream_loss(model, observations: torch.Tensor) -> torch.Tensor:
    """Upstream's training loss as its trainer computes it (MSE of Model.forward's vectors)."""
    outputs = model(observations)
    return F.mse_loss(outputs["reconstructed_vectors"], outputs["target_vectors"])


def seeded(seed: int, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    torch.manual_seed(seed)
    return fn()


def train_step(loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()

    return step


def adamw(parameters) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in parameters if p.requires_grad], lr=1e-4, weight_decay=5e-6)  # RIVER's


def bench_river_train(size: str, args) -> list[tuple[str, dict]]:
    full = upstream_river(size, with_autoencoder=True)
    bare = upstream_river(size, with_autoencoder=False)
    ours = vpt_river(full)
    frames = torch.rand(args.train_batch, args.clip_frames, *FRAME) * 2 - 1  # (B, T, 3, H, W)
    bare.vector_field_regressor.load_state_dict(full.vector_field_regressor.state_dict())
    with torch.no_grad():
        latents = vpt_autoencoder_of(full).encode(frames)  # (B, T, c, h, w): what `vpt save-latents` caches
        assert_close(f"river {size}: f8_small encode", full.ae.encode(frames.flatten(0, 1)), latents.flatten(0, 1))
        for model in (full, bare, ours):
            model.eval()  # dropout off for the check
        reference = seeded(1, lambda: upstream_loss(full, frames))
        assert_close(f"river {size}: loss on frames", reference, seeded(1, lambda: ours.loss({"latents": latents})["loss"]))
        assert_close(f"river {size}: loss on latents", seeded(1, lambda: upstream_loss(bare, latents)), reference)
    for model in (full, bare, ours):
        model.train()  # as in training: dropout 0.05 in every layer on both sides
    ours_step = train_step(lambda: ours.loss({"latents": latents})["loss"], adamw(ours.parameters()))
    rows = []
    for label, model, inputs in (("upstream encodes frames, vpt cached latents", full, frames),
                                 ("both on latents (regressor only)", bare, latents)):
        upstream_step = train_step(lambda m=model, x=inputs: upstream_loss(m, x), adamw(model.parameters()))
        rows.append((f"RIVER train step {size}: {label}", interleaved(upstream_step, ours_step, args)))
    return rows


def bench_river_sample(size: str, args) -> list[tuple[str, dict]]:
    upstream = upstream_river(size, with_autoencoder=False).eval()
    ours = vpt_river(upstream).eval()
    context = torch.randn(args.sample_batch, 1, *LATENT)  # (B, 1, c, h, w): BAIR's one context frame
    frames, steps = args.sample_frames, args.sample_steps

    def upstream_rollout() -> torch.Tensor:  # it returns the context latent first: (B, 1 + frames, c, h, w)
        return upstream.generate_frames(context, num_frames=frames, steps=steps)[:, 1:]

    def vpt_rollout() -> torch.Tensor:
        return ours.rollout(context, frames, steps=steps)

    with torch.no_grad():
        assert_close(f"river {size}: rollout", seeded(2, upstream_rollout), seeded(2, vpt_rollout), rtol=1e-3, atol=1e-4)
    label = f"RIVER sampling {size}: {frames} frames, RK4 {steps - 1} steps, latents"
    with torch.no_grad():
        return [(label, interleaved(upstream_rollout, vpt_rollout, args))]


# --- taming VQGAN -------------------------------------------------------------------------------------


def bench_vqgan(args) -> list[tuple[str, dict]]:
    from taming.models.vqgan import VQModel

    from vpt.models.autoencoders import autoencoder_from_upstream_state
    from vpt.models.autoencoders.vqgan import VQGAN_PRESETS

    preset = dict(VQGAN_PRESETS["f8_small"])
    ddconfig = dict(double_z=False, z_channels=preset["z_channels"], resolution=64, in_channels=3, out_ch=3,
                    ch=preset["ch"], ch_mult=preset["ch_mult"], num_res_blocks=preset["num_res_blocks"],
                    attn_resolutions=preset["attn_resolutions"], dropout=0.0)
    torch.manual_seed(0)
    upstream = VQModel(ddconfig, lossconfig={}, n_embed=preset["n_embed"], embed_dim=preset["embed_dim"]).eval()
    ours = autoencoder_from_upstream_state(upstream.state_dict(), preset="f8_small")
    images = torch.rand(args.vqgan_batch, *FRAME) * 2 - 1  # (N, 3, H, W)

    def upstream_roundtrip() -> torch.Tensor:
        return upstream.decode(upstream.encode(images)[0])

    def vpt_roundtrip() -> torch.Tensor:
        return ours.decode_images(ours.encode_images(images))

    with torch.inference_mode():
        assert_close("vqgan f8_small encode+decode", upstream_roundtrip(), vpt_roundtrip(), rtol=1e-3, atol=1e-4)
        label = f"VQGAN f8_small encode+decode: {args.vqgan_batch} frames 64x64"
        return [(label, interleaved(upstream_roundtrip, vpt_roundtrip, args))]


# --- driver -------------------------------------------------------------------------------------------


def prepare(workload: str, args) -> None:
    if workload.startswith("river"):
        add_checkout(args.river, "--river", "model/vector_field_regressor.py")
        if workload == "river-sample":
            need_torchdiffeq()
    else:
        add_checkout(args.taming, "--taming", "taming/models/vqgan.py")


def run(workload: str, args) -> Iterator[tuple[str, dict]]:
    """(label, times) rows of one workload, as each size finishes."""
    if workload == "vqgan":
        yield from bench_vqgan(args)
        return
    bench = bench_river_train if workload == "river-train" else bench_river_sample
    for size in args.sizes:
        yield from bench(size, args)


def print_header(args) -> None:
    precision = "upstream fp32, vpt bf16 autocast" if args.vpt_bf16 else "fp32"
    print(f"vpt vs upstream, interleaved A/B/B/A x {args.repeats}, {precision}; {machine()}")
    print("| workload | upstream median / min (ms) | vpt median / min (ms) | ratio median (min) |")
    print("|---|---|---|---|", flush=True)


def print_row(label: str, times: dict[str, list[float]]) -> None:
    up, ours = times["upstream"], times["vpt"]
    ratio = statistics.median(up) / statistics.median(ours)
    print(f"| {label} | {1e3 * statistics.median(up):.1f} / {1e3 * min(up):.1f} "
          f"| {1e3 * statistics.median(ours):.1f} / {1e3 * min(ours):.1f} | {ratio:.2f} ({min(up) / min(ours):.2f}) |",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--river", type=Path, help="checkout of github.com/Araachie/river")
    parser.add_argument("--taming", type=Path, help="checkout of github.com/CompVis/taming-transformers")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=None,
                        help="workloads to run (default: all; those whose checkout is not given are an error)")
    parser.add_argument("--sizes", nargs="+", choices=list(RIVER_SIZES), default=list(RIVER_SIZES))
    parser.add_argument("--repeats", type=int, default=3, help="A,B,B,A rounds per workload (2 timed calls per side each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the comparison, not the machine)")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--clip-frames", type=int, default=4,
                        help="frames per training clip (BAIR64: 16; a step uses 3 of them either way, more only "
                             "lengthen the one-off encode that fills vpt's latent cache)")
    parser.add_argument("--sample-batch", type=int, default=4, help="videos sampled at once (upstream's evaluation: 4)")
    parser.add_argument("--sample-frames", type=int, default=2)
    parser.add_argument("--sample-steps", type=int, default=11,
                        help="upstream's `steps`: grid points, so steps - 1 RK4 steps (upstream's default: 100)")
    parser.add_argument("--vqgan-batch", type=int, default=4)
    parser.add_argument("--vpt-bf16", action="store_true",
                        help="time vpt under CPU bf16 autocast (outputs are still checked in fp32 first)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    workloads = args.only or list(WORKLOADS)
    try:
        for workload in workloads:
            prepare(workload, args)
        install_shims()
    except SetupError as exc:
        sys.exit(f"vs_upstream: {exc}")
    print_header(args)
    for workload in workloads:
        for label, times in run(workload, args):
            print_row(label, times)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
