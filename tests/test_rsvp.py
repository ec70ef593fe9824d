"""RSVP-M (the `rsvp` backend): parity of the 3-D denoiser and the masked loss with upstream
(tests/fixtures/rsvp/README.md), the full-size key list, the given-excluded mean, inpainting DDIM,
how `predict` places context frames, a short training run, and the configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from einops import rearrange
from fixture_paths import fill_seeded, fixture, key_shapes
from safetensors.torch import load_file
from torch import nn

from vpt.config import validate
from vpt.errors import ConfigError, UsageError
from vpt.models.rsvp import RSVPM, MosoUNet, RSVPMConfig

TOL = dict(atol=1e-5, rtol=1e-4)
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "pvdm"

#: upstream's tiny MosoModel arguments (fixture README), in vpt's names
FIXTURE_CONFIG = dict(
    latent_channels=8,
    latent_size=8,
    clip_frames=4,
    given_frames=2,
    model_channels=32,
    channel_mult=[1, 1],
    num_res_blocks=1,
    attention_resolutions=[1, 2],
    num_heads=4,
)


@pytest.fixture(scope="module")
def upstream_model() -> RSVPM:
    model = RSVPM(RSVPMConfig(**FIXTURE_CONFIG))
    model.unet.load_state_dict(torch.load(fixture("rsvp", "rsvp_moso_tiny_state_dict.pt")), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def recorded() -> dict:
    return torch.load(fixture("rsvp", "rsvp_moso_tiny_io.pt"))


def test_unet_matches_upstream(upstream_model, recorded):
    inputs = recorded["inputs"]
    with torch.no_grad():
        out = upstream_model.unet(inputs["x"], inputs["mask"], inputs["t"], inputs["context"])
    torch.testing.assert_close(out, recorded["outputs"]["model_out"], **TOL)


def test_masked_l1_loss_matches_upstream(upstream_model, recorded):
    inputs = recorded["inputs"]
    assert inputs["mask"][:, :2].all() and not inputs["mask"][:, 2:].any()  # the mask our config builds
    torch.testing.assert_close(upstream_model.given_mask(2, "cpu"), inputs["mask"])
    with torch.no_grad():
        loss = upstream_model.diffusion_loss(
            inputs["x"], inputs["mask"], inputs["t"], inputs["noise"], inputs["context"]
        )
    torch.testing.assert_close(loss, recorded["outputs"]["p_losses_moso_l1"], **TOL)


def test_full_size_model_has_upstream_key_names_and_shapes():
    """The default config (= configs/pvdm/rsvp_m_ucf101.yaml) builds upstream's full MosoModel state dict."""
    with torch.device("meta"):
        unet = MosoUNet(published_config("rsvp_m_ucf101.yaml"))
    ours = {key: tuple(value.shape) for key, value in unet.state_dict().items()}
    assert ours == key_shapes("rsvp", "keys_rsvp_moso_unet_base.txt")
    assert len(ours) == 735 and sum(v.numel() for v in unet.state_dict().values()) == 1_367_090_176


def test_given_excluded_averages_over_the_predicted_positions_only(upstream_model, recorded):
    inputs = recorded["inputs"]
    x, mask, t, noise, context = (inputs[k] for k in ("x", "mask", "t", "noise", "context"))
    model = RSVPM(RSVPMConfig(**FIXTURE_CONFIG, loss_normalise="given_excluded"))
    model.load_state_dict(upstream_model.state_dict())
    with torch.no_grad():
        loss = model.diffusion_loss(x, mask, t, noise, context)
        # by hand: frames 0-1 clean, 2-3 noised; L1 of ε over frames 2-3 only
        abar = model.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        noisy = torch.cat([x[:, :, :2], (abar.sqrt() * x + (1 - abar).sqrt() * noise)[:, :, 2:]], dim=2)
        by_hand = (model.unet(noisy, mask, t, context)[:, :, 2:] - noise[:, :, 2:]).abs().mean()
    torch.testing.assert_close(loss, by_hand, **TOL)
    # half the frames are given, so the upstream mean (given positions as zeros) is exactly half of it
    torch.testing.assert_close(loss / 2, recorded["outputs"]["p_losses_moso_l1"], **TOL)


class MosoDouble(nn.Module):
    """Test double of the MOSO autoencoder's four-method interface (not vpt code): tokens are the
    quantised brightness of each cell of a grid per frame, embeddings come from a fixed random codebook,
    decoding is the tanh of the channel mean upsampled to frames. Records every clip it tokenises."""

    def __init__(self, dim: int = 8, grid: int = 4, size: int = 8, codes: int = 16):
        super().__init__()
        self.codebook = nn.Embedding(codes, dim)
        self.grid, self.size, self.codes = grid, size, codes
        self.clips: list[torch.Tensor] = []

    def tokens(self, video: torch.Tensor) -> dict[str, torch.Tensor]:  # (B, C, T, H, W)
        self.clips.append(video.clone())
        level = F.adaptive_avg_pool3d(video.mean(1, keepdim=True), (video.shape[2], self.grid, self.grid))[:, 0]
        motion = ((level + 1) / 2 * (self.codes - 1)).round().long().clamp(0, self.codes - 1)  # (B, T, g, g)
        return {"scene": motion[:, 0], "object": motion[:, -1], "motion": motion}

    def split_latent(self, latents: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, L) ids as floats, laid out [scene | object | motion] -> token grids (as the MOSO AE stores them)."""
        cell = self.grid * self.grid
        ids = latents.round().long()
        return {
            "scene": ids[:, :cell].unflatten(1, (self.grid, self.grid)),
            "object": ids[:, cell : 2 * cell].unflatten(1, (self.grid, self.grid)),
            "motion": ids[:, 2 * cell :].unflatten(1, (-1, self.grid, self.grid)),
        }

    def diffusion_input(self, motion: torch.Tensor) -> torch.Tensor:
        return rearrange(self.codebook(motion), "b t h w d -> b d t h w")

    def context(self, scene: torch.Tensor, object_tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.codebook(scene).flatten(1, 2), self.codebook(object_tokens).flatten(1, 2)], dim=1)

    def decode_diffusion(self, x: torch.Tensor, scene: torch.Tensor, object_tokens: torch.Tensor) -> torch.Tensor:
        level = F.interpolate(
            x.mean(1, keepdim=True).tanh(), scale_factor=(1, self.size // self.grid, self.size // self.grid)
        )
        return level.expand(-1, 3, -1, -1, -1)  # (B, 3, T, H, W)


def small_model(**changes) -> RSVPM:
    torch.manual_seed(0)
    cfg = RSVPMConfig(
        **{
            **dict(
                latent_channels=8,
                latent_size=4,
                clip_frames=4,
                given_frames=2,
                model_channels=32,
                channel_mult=[1, 2],
                num_res_blocks=1,
                attention_resolutions=[2],
                num_heads=4,
                steps=4,
            ),
            **changes,
        }
    )
    return RSVPM(cfg, autoencoder=MosoDouble()).eval()


def test_inpainting_reproduces_given_positions_exactly_and_is_seeded():
    model = small_model()
    x_given = 3 * torch.randn(2, 8, 4, 4, 4)  # beyond [-1, 1]: the reset must come after the clamp
    context = torch.randn(2, 12, 8)
    mask = model.given_mask(2, "cpu")

    def sample(seed: int) -> torch.Tensor:
        return model.inpaint(x_given, mask, context, steps=5, generator=torch.Generator().manual_seed(seed))

    first = sample(0)
    assert torch.equal(first[:, :, :2], x_given[:, :, :2])
    assert first[:, :, 2:].abs().max() <= 1.0  # predicted positions: clamped x̂0
    assert torch.equal(sample(0), first)
    assert not torch.equal(sample(1)[:, :, 2:], first[:, :, 2:])


def frames(values: list[float], size: int = 8) -> torch.Tensor:
    """(1, n, 3, size, size) constant frames, one value each, to recognise where they end up."""
    return torch.tensor(values).view(1, -1, 1, 1, 1).expand(1, -1, 3, size, size).clone()


def test_predict_puts_the_newest_frames_at_the_given_positions():
    model = small_model()  # first 2 of 4 frames given: 2 new frames per clip
    context = frames([-0.9, -0.5, 0.5])
    out = model.predict(context, 3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 3, 8, 8)
    first, second = model.autoencoder.clips  # two clips for three frames
    levels = first[0, 0, :, 0, 0].tolist()  # (T,): the value of each position
    assert levels == pytest.approx([-0.5, 0.5, 0.5, 0.5])  # newest two given; the rest copy the nearest given
    # the second clip is given the first clip's two predicted frames
    torch.testing.assert_close(second.transpose(1, 2)[:, :2], out[:, :2])
    torch.testing.assert_close(second.transpose(1, 2)[:, 2:], out[:, 1:2].expand(-1, 2, -1, -1, -1))


def test_predict_with_a_single_given_frame_in_the_middle():
    model = small_model(given_frames=[1])  # as upstream's MEA_new: one given frame, frames after it predicted
    assert model.context_frames == 1
    out = model.predict(frames([-0.9, 0.3]), 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 2, 3, 8, 8)
    (clip,) = model.autoencoder.clips  # positions 2 and 3 are predicted: one clip
    assert clip[0, 0, :, 0, 0].tolist() == pytest.approx([0.3] * 4)


def test_predict_needs_the_given_span_of_context():
    with pytest.raises(UsageError, match="needs 2 context frames"):
        small_model().predict(frames([0.1]), 2)


def test_loss_goes_down_on_a_fixed_batch():
    model = small_model().train()
    clip = torch.rand(4, 6, 3, 8, 8) * 2 - 1  # (B, T, 3, H, W): longer than a clip, a window is drawn
    optimiser = torch.optim.Adam(model.unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        torch.manual_seed(1)  # the same window, steps and noise every time
        loss = model.loss({"video": clip})["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.grad is None for p in model.autoencoder.parameters())  # the first stage stays frozen


def test_training_on_cached_tokens_equals_training_on_their_frames():
    model = small_model()
    clip = torch.rand(2, 4, 3, 8, 8) * 2 - 1
    tokens = model.autoencoder.tokens(clip.transpose(1, 2))
    latents = torch.cat([tokens[name].flatten(1) for name in ("scene", "object", "motion")], dim=1).float()
    torch.manual_seed(3)
    from_frames = model.loss({"video": clip})["loss"]
    torch.manual_seed(3)
    from_latents = model.loss({"latents": latents[:, None]})["loss"]  # (B, n=1 clip, L)
    assert torch.equal(from_frames, from_latents)
    # and periodic samples can show cached latents as frames: the decoded clip of its tokens
    assert model.can_show_latents
    x, _context, _tokens = model.embed(clip)
    torch.testing.assert_close(
        model.decode(latents[:, None].expand(-1, 2, -1)), model.decode_motion(x, tokens).repeat(1, 2, 1, 1, 1)
    )


def test_motion_shape_other_than_the_config_is_one_line():
    with pytest.raises(ConfigError, match="latent_size"):
        small_model(latent_size=8).loss({"video": torch.zeros(1, 4, 3, 8, 8)})


def test_unknown_config_key_is_one_line():
    with pytest.raises(ConfigError) as info:
        validate(RSVPMConfig, {"given_frame": 8}, source="run.yaml", prefix="model.")
    assert "did you mean 'model.given_frames'" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("value", "indices"), [(8, list(range(8))), ([8], [8]), ([3, 1], [1, 3])])
def test_given_frames_is_a_count_or_indices(value, indices):
    assert validate(RSVPMConfig, {"given_frames": value}, source="x", prefix="model.").given_indices() == indices


@pytest.mark.parametrize(
    ("given_frames", "upstream_given"), [pytest.param(8, slice(None, 8), id="main"), pytest.param([8], 8, id="MEA_new")]
)
def test_given_frames_build_the_masks_of_upstreams_branches(given_frames, upstream_given):
    """Upstream's `random_mask` on 16 frames, by hand: `main` gives the first half (mask[:, :L // 2] = 1),
    `MEA_new` the middle frame only (mask[:, L // 2] = 1); its trainer repeats the (B, T) mask over the grid."""
    model = RSVPM(RSVPMConfig(**{**FIXTURE_CONFIG, "clip_frames": 16, "given_frames": given_frames}))
    upstream = torch.zeros(2, 16, dtype=torch.long)  # (B, T)
    upstream[:, upstream_given] = 1
    assert torch.equal(model.given_mask(2, "cpu"), upstream[:, :, None, None].repeat(1, 1, 8, 8))


@pytest.mark.parametrize("value", [0, 16, [15], [2, 2], [-1]])
def test_given_frames_must_leave_a_frame_to_predict(value):
    with pytest.raises(ConfigError, match="given_frames"):
        validate(RSVPMConfig, {"given_frames": value}, source="x", prefix="model.")


def published_config(name: str) -> RSVPMConfig:
    raw = yaml.safe_load((CONFIGS / name).read_text())
    return validate(RSVPMConfig, raw["model"], source=name, prefix="model.")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_pvdm_config_builds_its_backend(path):
    from vpt.commands.train import train_schema
    from vpt.config import load_config
    from vpt.models.registry import get_backend

    backend_cls = get_backend(yaml.safe_load(path.read_text())["backend"])
    cfg = load_config(train_schema(backend_cls), path)
    with torch.device("meta"):
        model = backend_cls(cfg.model)
    assert model.name == cfg.backend


def test_ucf_config_has_upstreams_values():
    from vpt.commands.train import train_schema
    from vpt.config import load_config

    cfg = load_config(train_schema(RSVPM), CONFIGS / "rsvp_m_ucf101.yaml")
    assert cfg.model == RSVPMConfig()  # the defaults are upstream's
    assert cfg.model.given_indices() == list(range(8)) and cfg.model.steps == 100 and cfg.model.loss_type == "l1"
    assert (cfg.train.ema_every, cfg.train.ema_decay, cfg.train.lr, cfg.train.warmup_steps) == (25, 0.9999, 1e-4, 0)
    assert (cfg.train.grad_clip, cfg.train.grad_clip_mode, cfg.train.ema_offset, cfg.train.ema_warmup) == (
        1.0,
        "value",
        1,
        True,
    )
    assert (cfg.eval.context_frames, cfg.eval.predicted_frames) == (8, 8)


def test_as_predicted_training_conditions_on_what_predict_can_see():
    """whole_clip (upstream) conditions on the real clip's tokens; as_predicted on the tokens of the clip
    `predict` builds (given frames, copies of the nearest one elsewhere), the targets staying the real ones."""
    clip = torch.rand(2, 4, 3, 8, 8) * 2 - 1  # (B, T, 3, H, W); frames 0-1 given
    padded = torch.stack([clip[:, 0], clip[:, 1], clip[:, 1], clip[:, 1]], dim=1)
    model = small_model(train_tokens="as_predicted")
    x_real, context_real, _ = model.embed(clip)
    x_padded, context_padded, _ = model.embed(padded)
    assert not torch.equal(context_real, context_padded)  # the object token of the double is the last frame's
    x0, context = model._training_pair({"video": clip})
    torch.testing.assert_close(context, context_padded, atol=0, rtol=0)
    torch.testing.assert_close(x0[:, :, :2], x_padded[:, :, :2], atol=0, rtol=0)
    torch.testing.assert_close(x0[:, :, 2:], x_real[:, :, 2:], atol=0, rtol=0)
    x0, context = small_model()._training_pair({"video": clip})
    torch.testing.assert_close(context, context_real, atol=0, rtol=0)
    torch.testing.assert_close(x0, x_real, atol=0, rtol=0)
    with pytest.raises(ConfigError, match="as_predicted"):
        model._training_pair({"latents": torch.zeros(2, 1, 48)})


#: upstream's MosoModel of tests/fixtures/rsvp/record_inpainting_ddim.py, in vpt's names
INPAINTING_CONFIG = dict(
    latent_channels=4,
    latent_size=4,
    clip_frames=6,
    given_frames=3,
    model_channels=32,
    channel_mult=[1, 2],
    num_res_blocks=1,
    attention_resolutions=[2],
    num_heads=2,
)


@pytest.mark.parametrize(
    "run_name, tolerance",
    [
        ("published_steps100_eta1", 1e-5),
        ("steps10_eta05_noclip", 1e-5),
        ("steps8_eta0_given2_noclip", 1e-5),
        # η = 0 with x̂0 clamped: upstream's loop itself turns a 1e-6 change of ε̂ into 1.5e-5 (README.md), and
        # the two networks differ by ~8e-7 per call in float32
        ("steps8_eta0_given2", 5e-5),
    ],
)
def test_inpainting_ddim_matches_upstream_ddim_sample_moso(run_name, tolerance):
    """`inpaint` against upstream `DDPM.ddim_sample_moso` (tests/fixtures/rsvp/README.md) from the same start
    point and per-step noises (the stream of the recorded seed): 100 steps at η = 1 as upstream's validation
    samples, a short run at η = 0.5 without clamping x̂0, and η = 0 with a single given frame in the middle."""
    recorded = load_file(fixture("rsvp", "inpainting_ddim.safetensors"))
    steps, eta, clip, seed = recorded[f"{run_name}.settings"].tolist()
    model = RSVPM(RSVPMConfig(**INPAINTING_CONFIG, clip_denoised=bool(clip))).eval()
    torch.testing.assert_close(fill_seeded(model.unet, 5), recorded["weights.parameter_sums"], rtol=1e-12, atol=0)
    sample = model.inpaint(
        recorded["x_given"],
        recorded[f"{run_name}.mask"],
        recorded["context"],
        steps=int(steps),
        eta=eta,
        generator=torch.Generator().manual_seed(int(seed)),
    )
    expected = recorded[f"{run_name}.sample"]
    difference = ((sample - expected).norm() / expected.norm()).item()
    print(f"{run_name}: relative difference {difference:.1e}")
    assert difference <= tolerance, difference
