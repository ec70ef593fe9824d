"""Seer against the upstream fixtures (tests/fixtures/seer): tiny UNet and FSText outputs, DDIM tables,
full-size key lists (built on the meta device, nothing allocated)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from fixture_paths import fill_seeded, fixture
from safetensors.torch import load_file

from vpt.models.seer import Seer, SeerConfig
from vpt.models.seer.backend import FSTextSection, SamplerSection, TextSection, UNetSection
from vpt.models.seer.fstext import FSText
from vpt.models.seer.layers import FrameGroupNorm, RotaryEmbedding, SAWTAttention, sawt_window
from vpt.models.seer.schedule import sampling_scheduler, training_scheduler, upstream_timesteps
from vpt.models.seer.unet import SeerUNet, UNetSize


def _load(name: str) -> dict:
    return torch.load(fixture("seer", name), weights_only=True)


def _tiny_config() -> dict:
    return json.loads((fixture("seer", "config_tiny.json")).read_text())


@pytest.fixture(scope="module")
def tiny_unet() -> SeerUNet:
    u = _tiny_config()["unet"]
    size = UNetSize(
        in_channels=u["in_channels"],
        out_channels=u["out_channels"],
        block_out_channels=u["block_out_channels"],
        layers_per_block=u["layers_per_block"],
        heads=u["attention_head_dim"],
        cross_attention_dim=u["cross_attention_dim"],
        norm_eps=u["norm_eps"],
    )
    unet = SeerUNet(size).eval()
    unet.load_state_dict(_load("unet_tiny_state_dict.pt"), strict=True)
    return unet


@pytest.mark.parametrize("reference_frames, key", [(2, "out_cond_frame_2"), (0, "out_cond_frame_0")])
def test_tiny_unet_matches_upstream(tiny_unet, reference_frames, key):
    io = _load("unet_tiny_io.pt")
    sample = rearrange(io["sample"], "b c f h w -> b f c h w")  # upstream is channels-first
    with torch.no_grad():
        out = tiny_unet(sample, io["timestep"], io["context"], reference_frames=reference_frames)
    expected = rearrange(io[key], "b c f h w -> b f c h w")
    assert (out - expected).abs().max() < 1e-5


def test_tiny_unet_scalar_timestep_matches_upstream(tiny_unet):
    io = _load("unet_tiny_io.pt")
    with torch.no_grad():
        out = tiny_unet(rearrange(io["sample"], "b c f h w -> b f c h w"), 250, io["context"], reference_frames=2)
    assert (out - rearrange(io["out_scalar_t250_cond_frame_2"], "b c f h w -> b f c h w")).abs().max() < 1e-5


@pytest.mark.parametrize("frames", [4, 5])
def test_tiny_fstext_matches_upstream(frames):
    f = _tiny_config()["fstext"]
    fstext = FSText(
        dim=f["out_channels"],
        heads=f["n_heads"],
        layers=f["num_layers"],
        pos_frames=f["num_frames"],
        context_dim=f["cross_attention_dim"],
    ).eval()
    fstext.load_state_dict(_load("fstext_tiny_state_dict.pt"), strict=True)
    io = _load("fstext_tiny_io.pt")
    with torch.no_grad():
        out = fstext(io["clip_context"], frames)
    assert out.shape == (2, frames, 8, 96)
    assert (out - io[f"out_num_frames_{frames}"]).abs().max() < 1e-5


def test_ddim_tables_match_upstream_sampler():
    tables = _load("ddim_schedule_30.pt")
    scheduler = sampling_scheduler(30, "upstream")
    timesteps = scheduler.timesteps.flip(0)
    assert len(timesteps) == 31  # "30 steps" run 31, as upstream
    assert torch.equal(timesteps, tables["ddim_timesteps"])
    assert torch.allclose(scheduler.alphas_cumprod.double(), tables["sampler_alphas_cumprod"], atol=1e-6)
    assert torch.allclose(scheduler.alphas_cumprod[timesteps], tables["ddim_alphas"], atol=1e-6)
    gap = 1000 // 30
    previous = torch.stack(
        [scheduler.alphas_cumprod[t - gap] if t >= gap else scheduler.final_alpha_cumprod for t in timesteps]
    )
    assert torch.allclose(previous, tables["ddim_alphas_prev"], atol=1e-6)
    assert torch.allclose(training_scheduler().alphas_cumprod.double(), tables["train_alphas_cumprod"], atol=1e-6)
    assert torch.allclose(
        sampling_scheduler(30, "train").alphas_cumprod.double(), tables["train_alphas_cumprod"], atol=1e-6
    )


def test_ddim_step_is_upstream_update():
    """One diffusers DDIM step (eta 0) equals LDM's x_prev = sqrt(a') x0 + sqrt(1 - a') eps in float64."""
    tables = _load("ddim_schedule_30.pt")
    alphas = tables["sampler_alphas_cumprod"]
    scheduler = sampling_scheduler(30, "upstream")
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for t, t_prev in ((991, 958), (34, 1), (1, None)):
        a, a_prev = alphas[t], alphas[t_prev] if t_prev is not None else alphas[0]
        x0 = (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
        expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps.double()
        assert (scheduler.step(eps, t, x, eta=0.0).prev_sample.double() - expected).abs().max() < 1e-4


def test_upstream_timesteps_rule():
    assert upstream_timesteps(30)[:3] == [991, 958, 925] and upstream_timesteps(30)[-1] == 1
    assert upstream_timesteps(50) == list(range(981, 0, -20))
    with pytest.raises(ValueError):
        upstream_timesteps(0)


def _key_table(name: str) -> dict:
    rows = {}
    for line in (fixture("seer", name)).read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape, kind, trained = line.split("\t")
        rows[key] = (tuple(int(s) for s in shape.split(",")), kind, trained == "1")
    return rows


def _our_table(model: torch.nn.Module, trained: set[int]) -> dict:
    params = dict(model.named_parameters())
    return {
        k: (tuple(v.shape), "param" if k in params else "buffer", k in params and id(params[k]) in trained)
        for k, v in model.state_dict().items()
    }


def test_full_size_unet_keys_match_released_checkpoint():
    with torch.device("meta"):
        unet = SeerUNet(UNetSize())  # SD v1.5's config
    expected = _key_table("keys_unet_sd15_inflated.txt")
    assert len(expected) == 1006
    assert _our_table(unet, {id(p) for p in unet.temporal_parameters()}) == expected
    assert sum(p.numel() for p in unet.temporal_parameters()) == 223_251_840


def test_full_size_fstext_keys_match_released_checkpoint():
    with torch.device("meta"):
        fstext = FSText()
    expected = _key_table("keys_fstext_16f_8l.txt")
    assert len(expected) == 276
    assert _our_table(fstext, {id(p) for p in fstext.parameters()}) == expected


# --- the pieces the parity rests on, against closed forms -------------------------------------------


def _clip_group_norm_by_hand(clip: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """float64 closed form: each group's mean and biased variance over (frames, its channels, H, W)."""
    b, f, c, h, w = clip.shape
    grouped = clip.double().reshape(b, f, groups, c // groups, h, w)
    mean = grouped.mean(dim=(1, 3, 4, 5), keepdim=True)
    var = ((grouped - mean) ** 2).mean(dim=(1, 3, 4, 5), keepdim=True)
    normed = ((grouped - mean) / torch.sqrt(var + 1e-6)).reshape(b, f, c, h, w)
    return normed * weight.double()[:, None, None] + bias.double()[:, None, None]


def test_frame_group_norm_is_group_norm_over_the_clip():
    norm = FrameGroupNorm(4, 8, eps=1e-6)
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    clip = torch.randn(2, 3, 8, 5, 5) * 3 + 1  # (B, F, C, H, W)
    expected = _clip_group_norm_by_hand(clip, 4, norm.weight.detach(), norm.bias.detach())
    out = norm(rearrange(clip, "b f c h w -> (b f) c h w"), 3)
    assert out.shape == (6, 8, 5, 5) and out.dtype == torch.float32
    assert (out.double() - rearrange(expected, "b f c h w -> (b f) c h w")).abs().max() < 1e-5
    single = norm(rearrange(clip, "b f c h w -> (b f) c h w")[:2], 1)  # one frame: plain per-image GroupNorm
    assert torch.allclose(single, F.group_norm(clip[0, :2], 4, norm.weight, norm.bias, 1e-6), atol=1e-5)


def test_frame_group_norm_normalises_reduced_precision_in_float32():
    norm = FrameGroupNorm(4, 8, eps=1e-6)
    folded = (torch.randn(6, 8, 5, 5) * 3 + 1).bfloat16()  # (B*F, C, H, W)
    out = norm(folded, 3)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, norm(folded.float(), 3).bfloat16())  # fp32 maths, one rounding at the end


def test_rotary_rotates_interleaved_pairs_of_the_first_channels():
    rotary = RotaryEmbedding(4)
    x = torch.randn(1, 3, 6)  # positions 0..2, head dim 6, only 4 channels rotate
    out = rotary(x)
    p, freq = 2, rotary.freqs[1]  # pair (2, 3) at position 2
    angle = torch.tensor(p * freq.item())
    assert torch.allclose(out[0, p, 2], x[0, p, 2] * angle.cos() - x[0, p, 3] * angle.sin(), atol=1e-6)
    assert torch.allclose(out[0, p, 3], x[0, p, 3] * angle.cos() + x[0, p, 2] * angle.sin(), atol=1e-6)
    assert torch.equal(out[..., 4:], x[..., 4:]) and torch.equal(out[0, 0], x[0, 0])
    assert torch.allclose(rotary.freqs, 1 / 10000 ** (torch.arange(0, 4, 2).float() / 4))


def test_sawt_windows_and_causality():
    assert [sawt_window(h, h) for h in (32, 64, 16, 8, 4, 2)] == [8, 8, 4, 4, None, None]
    attn = SAWTAttention(16, heads=2, head_dim=8)
    frames, size = 3, 8
    x = torch.randn(1, frames * size * size, 16)
    out = attn(x, frames, size, size)
    changed = x.clone()
    changed[:, 2 * size * size :] += 1.0  # the last frame
    out_changed = attn(changed, frames, size, size)
    first_two = 2 * size * size
    assert torch.allclose(
        out[:, :first_two], out_changed[:, :first_two], atol=1e-6
    )  # earlier frames never see later ones
    # Window locality: a token in the top-left 4x4 window of frame 1 ignores the top-right window.
    moved = x.clone()
    grid = rearrange(moved, "b (f y x) c -> b f y x c", f=frames, y=size)
    grid[:, 0, :4, 4:] += 1.0
    out_moved = attn(rearrange(grid, "b f y x c -> b (f y x) c"), frames, size, size)
    top_left = rearrange(out_moved - out, "b (f y x) c -> b f y x c", f=frames, y=size)[:, 1, :4, :4]
    assert top_left.abs().max() < 1e-6


def test_upstream_fp16_angle_switch():
    """Upstream rounded p * freq to fp16 before cos/sin under fp16 autocast; `model.rotary_fp16_angles: true`
    makes every rotary embedding of the model do that (checked on one against the rounded angles)."""
    rotaries = [m for m in guided_ddim_model(rotary_fp16_angles=True).modules() if isinstance(m, RotaryEmbedding)]
    assert rotaries and all(rotary.fp16_angles for rotary in rotaries)
    upstream = rotaries[0]
    dim = 2 * upstream.freqs.numel()
    exact = RotaryEmbedding(dim)
    x = torch.randn(1, 3000, dim)
    assert torch.equal(exact(x), upstream(x))  # float32 activations: no rounding either way
    half = x.half()
    angles = (torch.arange(3000.0)[:, None] * exact.freqs[None]).repeat_interleave(2, -1)
    rounded = angles.half().float()
    expected = (
        half.float() * rounded.cos()
        + torch.stack((-half.float()[..., 1::2], half.float()[..., 0::2]), -1).flatten(-2) * rounded.sin()
    )
    assert (upstream(half).float() - expected).abs().max() < 2e-2
    assert (exact(half).float() - expected).abs().max() > 0.5  # at late positions the rounding moves angles by ~1 rad


def guided_ddim_model(**overrides) -> Seer:
    """The backend around upstream's `SeerUNet` of tests/fixtures/seer/record_guided_ddim.py (pixel space,
    3 channels, block widths 32, 32, 32, 64, one layer per block, 4 heads, text width 64), sampling as
    upstream does: its schedule, the feed-forward skip off, η = 0."""
    config = SeerConfig(
        **overrides,
        vae="none",
        frames=6,
        context_frames=2,
        unet=UNetSection(block_out_channels=[32, 32, 32, 64], layers_per_block=1, heads=4),
        fstext=FSTextSection(layers=1, heads=2, pos_frames=6),
        text=TextSection(hidden_size=64, layers=1, heads=2, max_length=8),
        sampler=SamplerSection(schedule="upstream", reference_ff_skip=False, eta=0.0, precision="fp32"),
    )
    return Seer(config).eval()


@pytest.mark.parametrize("run_name", ["published_steps30_scale7.5", "steps10_scale1", "steps7_scale3"])
def test_guided_ddim_matches_upstream_sampler(run_name):
    """One window of Seer's sampler against upstream's `DDIMSampler.sample` called as its `ddim_sample` calls
    it (tests/fixtures/seer/README.md), from the same start point: 30 requested steps (31 run) at guidance
    7.5 as upstream's inference config, no guidance (upstream then passes no null text), and guidance 3."""
    recorded = load_file(fixture("seer", "guided_ddim.safetensors"))
    steps, scale, seed = recorded[f"{run_name}.settings"].tolist()
    model = guided_ddim_model()
    torch.testing.assert_close(fill_seeded(model.unet, 9), recorded["weights.parameter_sums"], rtol=1e-12, atol=0)
    with torch.no_grad():
        sample = model._sample_window(
            recorded["reference"],
            recorded["text"],
            None if scale == 1.0 else recorded["null"],
            int(steps),
            scale,
            torch.Generator().manual_seed(int(seed)),
        )
    expected = recorded[f"{run_name}.sample"]
    difference = ((sample - expected).norm() / expected.norm()).item()
    print(f"{run_name}: relative difference {difference:.1e}")
    assert difference <= 1e-5, difference
