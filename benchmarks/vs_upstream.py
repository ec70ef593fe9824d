"""vpt against the upstream code it reimplements, side by side in one process.

    python benchmarks/vs_upstream.py --river PATH/river --taming PATH/taming-transformers
    python benchmarks/vs_upstream.py --river PATH/river --only river-train --sizes tiny --repeats 3
    python benchmarks/vs_upstream.py --seer PATH/SeerVideoLDM --only seer-forward seer-train seer-sample

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
  seer-forward  Seer's inflated UNet at the parity fixture's tiny config (tests/fixtures/seer): one
                forward of the training call (2 reference + 3 noisy latent frames, per-frame text).
  seer-train    one training step of the trained part (SAWT temporal blocks + FSText) on latents:
                upstream's train.py step against vpt's Seer.loss, AdamW. The frozen CLIP and VAE are
                left out on both sides (one CLIP output is given to both).
  seer-sample   DDIM sampling with classifier-free guidance on upstream's timesteps: upstream's
                DDIMSampler (ldm/models/diffusion/ddim_video.py) against vpt's Seer window sampler.

Upstream imports that a CPU machine lacks are replaced by small stand-ins (`install_shims`); each
is named in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

WORKLOADS = ("river-train", "river-sample", "vqgan", "seer-forward", "seer-train", "seer-sample")

#: Regressor sizes timed (upstream's VectorFieldRegressor arguments; its heads are fixed at 8).
RIVER_SIZES = {
    "tiny": dict(inner_dim=64, depth=2, mid_depth=1),
    "medium": dict(inner_dim=512, depth=4, mid_depth=4),  # 40.6M parameters (the "39M medium")
}
LATENT = (4, 8, 8)  # BAIR64 / KTH latents of the f8_small VQGAN: (c, h, w)
FRAME = (3, 64, 64)
SEER_TINY = (
    Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seer" / "config_tiny.json"
)  # parity fixtures' UNet + FSText


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
    - `diffusers.modeling_utils`: Seer was written against diffusers 0.10, where `ModelMixin` lived
      there; newer diffusers keep it in `diffusers.models.modeling_utils` (the same class).
    RIVER itself needs only torch, einops, pyyaml, tqdm and torchdiffeq (pip install torchdiffeq).
    Seer's xformers stand-in is installed only while its modules are imported (`import_upstream_seer`).
    """
    if "pytorch_lightning" not in sys.modules:
        try:
            import pytorch_lightning  # noqa: F401
        except ImportError:
            sys.modules["pytorch_lightning"] = types.SimpleNamespace(LightningModule=torch.nn.Module)
    if importlib.util.find_spec("diffusers") is not None and "diffusers.modeling_utils" not in sys.modules:
        try:
            import diffusers.modeling_utils  # noqa: F401
        except ImportError:
            from diffusers.models import modeling_utils

            sys.modules["diffusers.modeling_utils"] = modeling_utils
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


def need_package(module: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise SetupError(why)


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


def assert_close(
    name: str, upstream: torch.Tensor, ours: torch.Tensor, *, rtol: float = 1e-4, atol: float = 1e-5
) -> None:
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
        "vector_field_regressor": dict(
            state_size=LATENT[0], state_res=list(LATENT[1:]), out_norm="ln", **RIVER_SIZES[size]
        ),
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
    from vpt.models.river import River, RiverConfig
    from vpt.models.uvit import config_from_regressor_state, convert_upstream_regressor

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
        assert_close(
            f"river {size}: loss on frames", reference, seeded(1, lambda: ours.loss({"latents": latents})["loss"])
        )
        assert_close(f"river {size}: loss on latents", seeded(1, lambda: upstream_loss(bare, latents)), reference)
    for model in (full, bare, ours):
        model.train()  # as in training: dropout 0.05 in every layer on both sides
    ours_step = train_step(lambda: ours.loss({"latents": latents})["loss"], adamw(ours.parameters()))
    rows = []
    for label, model, inputs in (
        ("upstream encodes frames, vpt cached latents", full, frames),
        ("both on latents (regressor only)", bare, latents),
    ):
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
        assert_close(
            f"river {size}: rollout", seeded(2, upstream_rollout), seeded(2, vpt_rollout), rtol=1e-3, atol=1e-4
        )
    label = f"RIVER sampling {size}: {frames} frames, RK4 {steps - 1} steps, latents"
    with torch.no_grad():
        return [(label, interleaved(upstream_rollout, vpt_rollout, args))]


# --- taming VQGAN -------------------------------------------------------------------------------------


def bench_vqgan(args) -> list[tuple[str, dict]]:
    from taming.models.vqgan import VQModel

    from vpt.models.autoencoders import autoencoder_from_upstream_state
    from vpt.models.autoencoders.vqgan import VQGAN_PRESETS

    preset = dict(VQGAN_PRESETS["f8_small"])
    ddconfig = dict(
        double_z=False,
        z_channels=preset["z_channels"],
        resolution=64,
        in_channels=3,
        out_ch=3,
        ch=preset["ch"],
        ch_mult=preset["ch_mult"],
        num_res_blocks=preset["num_res_blocks"],
        attn_resolutions=preset["attn_resolutions"],
        dropout=0.0,
    )
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


# --- Seer ---------------------------------------------------------------------------------------------


class LowerTriangularMask:
    """xformers' causal-mask marker; the stand-in below turns it into SDPA's `is_causal`."""


def memory_efficient_attention(query, key, value, attn_bias=None, p: float = 0.0, scale=None) -> torch.Tensor:
    """`xformers.ops.memory_efficient_attention` on torch's SDPA, for CPU machines without xformers.

    Upstream passes (batch * heads, tokens, head_dim) tensors. They reach SDPA as 4-D
    (1, batch * heads, tokens, head_dim): CPU SDPA sends 3-D inputs down its slow unfused path, which
    would make upstream look 2-3x slower than it is."""
    causal = isinstance(attn_bias, LowerTriangularMask)
    return F.scaled_dot_product_attention(
        query[None], key[None], value[None], dropout_p=p, is_causal=causal, scale=scale
    )[0]


def xformers_stand_in() -> dict[str, types.ModuleType]:
    """The three xformers names upstream Seer imports: ops.memory_efficient_attention,
    ops.LowerTriangularMask and components.attention.AttentionMask (imported, never used)."""
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention, ops.LowerTriangularMask = memory_efficient_attention, LowerTriangularMask
    masks = types.ModuleType("xformers.components.attention")
    masks.AttentionMask = object
    components = types.ModuleType("xformers.components")
    components.attention = masks
    root = types.ModuleType("xformers")
    root.ops, root.components = ops, components
    return {
        "xformers": root,
        "xformers.ops": ops,
        "xformers.components": components,
        "xformers.components.attention": masks,
    }


def import_upstream_seer() -> types.SimpleNamespace:
    """Upstream's SeerUNet, FSTextTransformer and DDIM sampler module, ready to run on this machine.

    Where xformers is absent its stand-in is in `sys.modules` only during the import (nothing else
    should take it for the real package) and is then handed to upstream's attention module, which
    otherwise holds `xformers = None`. Upstream's DDIMSampler moves every table to CUDA; on a CPU
    machine its `register_buffer` keeps them where they are. Its tqdm bar and per-call print are off."""
    stand_in = {} if importlib.util.find_spec("xformers") else xformers_stand_in()
    sys.modules.update(stand_in)
    # Upstream's `seer/` has no __init__.py, and a namespace package loses to any plain `seer.py` on the
    # path: this folder's own benchmarks/seer.py. It stays off sys.path during the import.
    here = Path(__file__).resolve().parent
    saved_path = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    try:
        from ldm.models.diffusion import ddim_video
        from seer.models import attention
        from seer.models.unet_3d_condition import FSTextTransformer, SeerUNet
    finally:
        sys.path[:] = saved_path
        for name in stand_in:
            sys.modules.pop(name, None)
    if attention.xformers is None:
        attention.xformers = stand_in["xformers"] if stand_in else importlib.import_module("xformers")
    if not torch.cuda.is_available():
        ddim_video.DDIMSampler.register_buffer = lambda self, name, value: setattr(self, name, value)
    ddim_video.tqdm = lambda iterable, **_: iterable
    ddim_video.print = lambda *_, **__: None
    return types.SimpleNamespace(
        SeerUNet=SeerUNet, FSTextTransformer=FSTextTransformer, attention=attention, DDIMSampler=ddim_video.DDIMSampler
    )


def use_xformers_path(module: torch.nn.Module, attention: types.ModuleType) -> None:
    """What upstream's `enable_xformers_memory_efficient_attention()` sets (train.py and inference.py call
    it; it refuses without CUDA). Its non-xformers temporal path is not what upstream ran."""
    for child in module.modules():
        if isinstance(child, attention.CrossAttention):
            child._use_memory_efficient_attention_xformers = True


def fill_zero_parameters(module: torch.nn.Module) -> None:
    """Small random values for the zero-initialised parameters (output projections, FSText's query and
    positions), so that the outputs compared depend on every block."""
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.normal_(std=0.05)


def sd_training_noise():
    """SD v1.5's scheduler config, which upstream's train.py loads for adding noise."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
    )


def vpt_seer(config: dict, unet_state: dict, fstext_state: dict, args):
    """vpt's Seer backend at the fixture's tiny config, loaded with upstream's weights the way vpt loads a
    released Seer folder (`weights.load_released` on pytorch_model.bin + pytorch_model_1.bin)."""
    import tempfile

    from vpt.models.seer import Seer, SeerConfig
    from vpt.models.seer.backend import FSTextSection, SamplerSection, TextSection
    from vpt.models.seer.unet import SeerUNet, UNetSize
    from vpt.models.seer.weights import RELEASED_FSTEXT, RELEASED_UNET, load_released

    unet, fstext = config["unet"], config["fstext"]
    seer = Seer(
        SeerConfig(
            vae="none",
            frames=config["frames_total"],
            context_frames=config["reference_frames"],
            trainable="temporal",
            fstext=FSTextSection(layers=fstext["num_layers"], heads=fstext["n_heads"], pos_frames=fstext["num_frames"]),
            text=TextSection(
                hidden_size=fstext["in_channels"], layers=1, heads=fstext["n_heads"], max_length=config["text_tokens"]
            ),
            sampler=SamplerSection(
                steps=args.seer_steps,
                guidance_scale=args.seer_scale,
                schedule="upstream",
                reference_ff_skip=False,
                precision="fp32",
            ),  # the released sampler's settings
        )
    )
    # Without a VAE Seer builds a 3-channel (pixel) UNet; the fixture's diffuses 4-channel latents.
    seer.unet = SeerUNet(
        UNetSize(
            in_channels=unet["in_channels"],
            out_channels=unet["out_channels"],
            block_out_channels=unet["block_out_channels"],
            layers_per_block=unet["layers_per_block"],
            heads=unet["attention_head_dim"],
            cross_attention_dim=unet["cross_attention_dim"],
            norm_eps=unet["norm_eps"],
        )
    )
    with tempfile.TemporaryDirectory() as folder:
        torch.save(unet_state, Path(folder) / RELEASED_UNET)
        torch.save(fstext_state, Path(folder) / RELEASED_FSTEXT)
        load_released(seer.unet, seer.fstext, folder)
    seer._freeze()  # upstream's trainable split (SAWT blocks + FSText) on the swapped-in UNet
    seer.encode = lambda video, generator=None: video  # latents in, as cached by `vpt save-latents`
    return seer


class SeerPair:
    """Upstream's and vpt's Seer with the same (random, seeded) weights and one set of inputs.

    vpt's clips are (B, F, C, H, W), upstream's (B, C, F, H, W); both layouts are prepared here, outside
    the timing. `clip` stands for the frozen CLIP text output both trainers compute each step."""

    def __init__(self, args):
        upstream = import_upstream_seer()
        config = json.loads(SEER_TINY.read_text())
        self.frames, self.reference = config["frames_total"], config["reference_frames"]
        batch, tokens, width = config["batch"], config["text_tokens"], config["fstext"]["out_channels"]
        size = config["unet"]["sample_size"]
        torch.manual_seed(0)
        self.unet = upstream.SeerUNet(**config["unet"])
        self.fstext = upstream.FSTextTransformer(**config["fstext"])
        self.fstext.set_numframe(self.frames)
        for module in (self.unet, self.fstext):
            fill_zero_parameters(module)
            use_xformers_path(module, upstream.attention)
        self.ours = vpt_seer(config, self.unet.state_dict(), self.fstext.state_dict(), args)
        self.sampler = upstream.DDIMSampler("cpu")
        self.train_noise = sd_training_noise()

        self.latents = torch.randn(batch, self.frames, config["unet"]["in_channels"], size, size)  # (B, F, c, h, w)
        self.upstream_latents = rearrange(self.latents, "b f c h w -> b c f h w").contiguous()
        self.clip = torch.randn(batch, tokens, width)  # (B, L, D)
        self.null = torch.randn(batch, 1, tokens, width).expand(-1, self.frames, -1, -1)  # CLIP("") per frame
        self.text = torch.randn(batch, self.frames, tokens, width)  # (B, F, L, D): FSText's output
        self.timesteps = torch.randint(0, 1000, (batch,))

    def train(self, mode: bool) -> None:
        for model in (self.unet, self.fstext, self.ours):
            model.train(mode)


def bench_seer_forward(pair: SeerPair, args) -> list[tuple[str, dict]]:
    pair.train(False)

    def upstream() -> torch.Tensor:
        return pair.unet(pair.upstream_latents, pair.timesteps, pair.text, pair.reference)

    def ours() -> torch.Tensor:
        return pair.ours.unet(pair.latents, pair.timesteps, pair.text, reference_frames=pair.reference)

    with torch.no_grad():
        assert_close("seer UNet forward", rearrange(upstream(), "b c f h w -> b f c h w"), ours(), rtol=1e-4, atol=2e-5)
        label = (
            f"Seer UNet forward: {len(pair.latents)} clips x {pair.frames} frames ({pair.reference} reference), tiny"
        )
        return [(label, interleaved(upstream, ours, args))]


def upstream_seer_loss(pair: SeerPair) -> torch.Tensor:
    """Upstream train.py's loss on latents. It draws its noise before the timesteps; here they are drawn
    in vpt's order and layout, so that both sides see the same numbers (the cost is the same)."""
    reference = pair.reference
    text = pair.fstext(context=pair.clip)  # (B, F, L, D)
    latents = pair.upstream_latents
    timesteps = torch.randint(0, pair.train_noise.config.num_train_timesteps, (len(latents),))
    target = latents[:, :, reference:]
    noise = rearrange(torch.randn(rearrange(target, "b c f h w -> b f c h w").shape), "b f c h w -> b c f h w")
    noisy = pair.train_noise.add_noise(target, noise, timesteps)
    prediction = pair.unet(torch.cat([latents[:, :, :reference], noisy], dim=2), timesteps, text, reference)
    return F.mse_loss(prediction[:, :, reference:], noise, reduction="none").mean([1, 2, 3, 4]).mean()


def bench_seer_train(pair: SeerPair, args) -> list[tuple[str, dict]]:
    batch = {"latents": pair.latents, "text": ["a caption"] * len(pair.latents)}
    pair.ours.clip_text = lambda prompts: pair.clip  # the frozen CLIP's output, as given to upstream

    def ours_loss() -> torch.Tensor:
        return pair.ours.loss(batch)["loss"]

    pair.train(True)  # dropout is 0 in every Seer layer, so train mode changes nothing numerically
    with torch.no_grad():
        assert_close("seer training loss", seeded(3, lambda: upstream_seer_loss(pair)), seeded(3, ours_loss))
    pair.unet.requires_grad_(False)
    for name, module in pair.unet.named_modules():  # upstream's trainable_modules = ("temporal_attentions",)
        if name.endswith("temporal_attentions"):
            module.requires_grad_(True)
    upstream_trained = [p for p in [*pair.unet.parameters(), *pair.fstext.parameters()] if p.requires_grad]
    ours_trained = [p for p in pair.ours.parameters() if p.requires_grad]
    assert sum(p.numel() for p in upstream_trained) == sum(p.numel() for p in ours_trained)
    upstream_step = train_step(lambda: upstream_seer_loss(pair), torch.optim.AdamW(upstream_trained, lr=1e-5))
    ours_step = train_step(ours_loss, torch.optim.AdamW(ours_trained, lr=1e-5))
    label = f"Seer train step (SAWT + FSText, AdamW): {len(pair.latents)} clips x {pair.frames} frames, tiny"
    return [(label, interleaved(upstream_step, ours_step, args))]


def bench_seer_sample(pair: SeerPair, args) -> list[tuple[str, dict]]:
    pair.train(False)
    batch, reference = len(pair.latents), pair.reference
    shape = (batch, pair.frames - reference, *pair.latents.shape[2:])  # (B, F - R, c, h, w)
    start = rearrange(seeded(4, lambda: torch.randn(shape)), "b f c h w -> b c f h w")  # vpt's first draw

    def upstream() -> torch.Tensor:  # utils/ddim_sampling_utils.ddim_sample without the VAE decode
        samples, _ = pair.sampler.sample(
            unet=pair.unet,
            S=args.seer_steps,
            conditioning=pair.text,
            batch_size=batch,
            shape=start.shape[1:],
            x0_emb=pair.upstream_latents[:, :, :reference],
            verbose=False,
            unconditional_guidance_scale=args.seer_scale,
            unconditional_conditioning=pair.null,
            eta=0.0,
            x_T=start,
            is_3d=True,
        )
        return samples

    def ours() -> torch.Tensor:
        return pair.ours._sample_window(
            pair.latents[:, :reference], pair.text, pair.null, args.seer_steps, args.seer_scale, None
        )

    with torch.no_grad():
        assert_close(
            "seer DDIM sample", rearrange(upstream(), "b c f h w -> b f c h w"), seeded(4, ours), rtol=1e-3, atol=1e-4
        )
        runs = len(pair.sampler.ddim_timesteps)
        label = (
            f"Seer DDIM sampling: {runs} steps, guidance {args.seer_scale:g}, {batch} clips x {shape[1]} frames, tiny"
        )
        return [(label, interleaved(upstream, ours, args))]


# --- driver -------------------------------------------------------------------------------------------


def prepare(workload: str, args) -> None:
    if workload.startswith("river"):
        add_checkout(args.river, "--river", "model/vector_field_regressor.py")
        if workload == "river-sample":
            need_package("torchdiffeq", "upstream RIVER samples with torchdiffeq: pip install torchdiffeq")
    elif workload.startswith("seer"):
        add_checkout(args.seer, "--seer", "seer/models/unet_3d_condition.py")
        need_package(
            "rotary_embedding_torch",
            "upstream Seer's temporal attention needs rotary-embedding-torch: "
            "pip install rotary-embedding-torch==0.1.5",
        )
    else:
        add_checkout(args.taming, "--taming", "taming/models/vqgan.py")


def run(workload: str, args) -> Iterator[tuple[str, dict]]:
    """(label, times) rows of one workload, as each size finishes."""
    if workload == "vqgan":
        yield from bench_vqgan(args)
        return
    if workload.startswith("seer"):
        yield from {
            "seer-forward": bench_seer_forward,
            "seer-train": bench_seer_train,
            "seer-sample": bench_seer_sample,
        }[workload](SeerPair(args), args)
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
    print(
        f"| {label} | {1e3 * statistics.median(up):.1f} / {1e3 * min(up):.1f} "
        f"| {1e3 * statistics.median(ours):.1f} / {1e3 * min(ours):.1f} | {ratio:.2f} ({min(up) / min(ours):.2f}) |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--river", type=Path, help="checkout of github.com/Araachie/river")
    parser.add_argument("--taming", type=Path, help="checkout of github.com/CompVis/taming-transformers")
    parser.add_argument("--seer", type=Path, help="checkout of github.com/seervideodiffusion/SeerVideoLDM")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=WORKLOADS,
        default=None,
        help="workloads to run (default: all; those whose checkout is not given are an error)",
    )
    parser.add_argument("--sizes", nargs="+", choices=list(RIVER_SIZES), default=list(RIVER_SIZES))
    parser.add_argument(
        "--repeats", type=int, default=3, help="A,B,B,A rounds per workload (2 timed calls per side each)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: the comparison, not the machine)"
    )
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument(
        "--clip-frames",
        type=int,
        default=4,
        help="frames per training clip (BAIR64: 16; a step uses 3 of them either way, more only "
        "lengthen the one-off encode that fills vpt's latent cache)",
    )
    parser.add_argument("--sample-batch", type=int, default=4, help="videos sampled at once (upstream's evaluation: 4)")
    parser.add_argument("--sample-frames", type=int, default=2)
    parser.add_argument(
        "--sample-steps",
        type=int,
        default=11,
        help="upstream's `steps`: grid points, so steps - 1 RK4 steps (upstream's default: 100)",
    )
    parser.add_argument("--vqgan-batch", type=int, default=4)
    parser.add_argument(
        "--seer-steps",
        type=int,
        default=5,
        help="requested DDIM steps of seer-sample (upstream's rule: 5 run 5, 30 run 31; released: 30)",
    )
    parser.add_argument("--seer-scale", type=float, default=7.5, help="classifier-free guidance scale of seer-sample")
    parser.add_argument(
        "--vpt-bf16",
        action="store_true",
        help="time vpt under CPU bf16 autocast (outputs are still checked in fp32 first)",
    )
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
