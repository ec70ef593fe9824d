"""PVDM parity with upstream (tests/fixtures/pvdm/README.md): the triplane UNet, the diffusion tables,
q_sample, the training loss and the DDIM loop with upstream's noises; the converter against the
released model's key list; the config checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from fixture_paths import fixture, key_shapes
from safetensors.torch import load_file

from vpt.config import validate
from vpt.errors import ConfigError, UsageError
from vpt.models.diffusion import ddim_time_pairs
from vpt.models.pvdm import PVDM, PVDMConfig, TriplaneUNet, config_from_unet_state, convert_upstream_unet

TOL = dict(atol=1e-5, rtol=1e-4)
CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "pvdm"


def tiny_model(kind: str) -> PVDM:
    """The backend around the tiny upstream UNet of `unet_tiny_<kind>_state_dict.pt` (no autoencoder)."""
    state = convert_upstream_unet(torch.load(fixture("pvdm", f"unet_tiny_{kind}_state_dict.pt")))
    upstream = yaml.safe_load(fixture("pvdm", "config_tiny.yaml").read_text())[f"unet_tiny_{kind}"]
    cfg = PVDMConfig(**{**config_from_unet_state(state), "num_heads": upstream["num_heads"]})
    model = PVDM(cfg)
    model.unet.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def cond_model() -> PVDM:
    return tiny_model("cond")


def test_config_read_off_the_tiny_weights_matches_upstream_kwargs(cond_model):
    upstream = yaml.safe_load(fixture("pvdm", "config_tiny.yaml").read_text())["unet_tiny_cond"]
    cfg = cond_model.cfg
    assert (cfg.model_channels, cfg.channel_mult, cfg.num_res_blocks) == (
        upstream["model_channels"],
        upstream["channel_mult"],
        upstream["num_res_blocks"],
    )
    assert sorted(cfg.attention_resolutions) == sorted(upstream["attention_resolutions"])
    assert cfg.cond_model and cfg.latent_length == 2048


@torch.no_grad()
def test_conditional_unet_matches_upstream_with_and_without_condition(cond_model):
    io = torch.load(fixture("pvdm", "unet_tiny_cond_io.pt"))
    x, cond, t = io["inputs"]["x"], io["inputs"]["cond"], io["inputs"]["t"]
    torch.testing.assert_close(cond_model.unet(x, cond, t), io["outputs"]["out_with_cond"], **TOL)
    torch.testing.assert_close(cond_model.unet(x, None, t), io["outputs"]["out_cond_none"], **TOL)


@torch.no_grad()
def test_unconditional_unet_matches_upstream():
    io = torch.load(fixture("pvdm", "unet_tiny_uncond_io.pt"))
    model = tiny_model("uncond")
    assert not hasattr(model.unet, "zeros")
    torch.testing.assert_close(model.unet(io["inputs"]["x"], None, io["inputs"]["t"]), io["outputs"]["out"], **TOL)


def test_schedule_tables_match_upstream(cond_model):
    expected = torch.load(fixture("pvdm", "ddpm_io.pt"))["outputs"]["schedule"]
    for name in ("betas", *cond_model.schedule()):
        torch.testing.assert_close(getattr(cond_model, name), expected[name], **TOL, msg=name)


@torch.no_grad()
def test_q_sample_and_loss_match_upstream(cond_model):
    io = torch.load(fixture("pvdm", "ddpm_io.pt"))
    inputs, outputs = io["inputs"], io["outputs"]
    torch.testing.assert_close(
        cond_model.q_sample(inputs["x0"], inputs["t"], inputs["noise"]), outputs["q_sample"], **TOL
    )
    loss = cond_model.diffusion_loss(inputs["x0"], inputs["cond"], inputs["t"], inputs["noise"])
    torch.testing.assert_close(loss, outputs["p_losses_loss"], **TOL)


def test_ddim_grids_match_upstream():
    upstream = yaml.safe_load(fixture("pvdm", "config_tiny.yaml").read_text())["ddpm"]
    pairs = ddim_time_pairs(1000, 4)
    assert pairs == [tuple(p) for p in torch.load(fixture("pvdm", "ddpm_io.pt"))["inputs"]["ddim_time_pairs"].tolist()]
    for steps in (100, 400):
        pairs = ddim_time_pairs(1000, steps)
        assert len(pairs) == steps
        assert [list(p) for p in pairs[:3]] == upstream[f"ddim_first_time_pairs_{steps}"]
        assert [list(p) for p in pairs[-3:]] == upstream[f"ddim_last_time_pairs_{steps}"]


@torch.no_grad()
def test_ddim_sampling_matches_upstream_with_its_noises(cond_model, monkeypatch):
    """`sample_latents` (4 steps, η = 1, w = 0) fed upstream's initial and per-step noises."""
    io = torch.load(fixture("pvdm", "ddpm_io.pt"))
    inputs = io["inputs"]
    saved = [inputs["ddim_initial_noise"], *inputs["ddim_step_noises"]]
    draws = []

    def replay(shape, **_kwargs):
        draws.append(shape)
        return saved[len(draws) - 1].clone()

    monkeypatch.setattr(torch, "randn", replay)
    sample = cond_model.sample_latents(1, inputs["cond"][:1], steps=4, eta=1.0, w=0.0)
    assert len(draws) == 4  # the start point and one per non-final step
    torch.testing.assert_close(sample, io["outputs"]["ddim_sample"], **TOL)


def small_model() -> PVDM:
    """A fast conditional model (8x8 planes of 4 frames) with every weight random, heads included."""
    cfg = PVDMConfig(
        latent_size=8,
        latent_frames=4,
        model_channels=32,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[2],
        num_heads=4,
    )
    torch.manual_seed(0)
    model = PVDM(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.05)
    return model.eval()


@torch.no_grad()
def test_guidance_mixes_conditional_and_zero_condition_noise(monkeypatch):
    """One DDIM step (t = 999 -> x̂0) with w = 2: ε̂ = 3 ε(x, c) - 2 ε(x, 0)."""
    model = small_model()
    x, cond = torch.randn(2, 4, model.cfg.latent_length), torch.randn(2, 4, model.cfg.latent_length)
    t = torch.tensor([999, 999])
    guided = 3.0 * model.unet(x, cond, t) - 2.0 * model.unet(x, torch.zeros_like(cond), t)
    schedule = model.schedule()
    expected = schedule["sqrt_recip_alphas_cumprod"][999] * x - schedule["sqrt_recipm1_alphas_cumprod"][999] * guided
    monkeypatch.setattr(torch, "randn", lambda shape, **_kwargs: x.clone())
    torch.testing.assert_close(model.sample_latents(2, cond, steps=1, w=2.0), expected.clamp(-1, 1), **TOL)
    assert not torch.allclose(model.sample_latents(2, cond, steps=1, w=0.0), expected.clamp(-1, 1))


def published_config(name: str) -> PVDMConfig:
    raw = yaml.safe_load((CONFIGS / name).read_text())
    return validate(PVDMConfig, raw["model"], source=name, prefix="model.")


@pytest.mark.parametrize("kind", ["cond", "uncond"])
def test_released_config_has_the_released_key_names_and_shapes(kind):
    """configs/pvdm/ucf101.yaml builds (on the meta device) exactly the released diffusion state dict."""
    cfg = published_config("ucf101.yaml")
    cfg.cond_model = kind == "cond"
    with torch.device("meta"):
        unet = TriplaneUNet(cfg)
    ours = {f"diffusion_model.{k}": tuple(v.shape) for k, v in unet.state_dict().items()}
    released = key_shapes("pvdm", f"keys_pvdm_unet_base_{kind}.txt")
    assert ours == released
    # and the converter reads the same widths back off those names and shapes
    state = convert_upstream_unet({k: torch.empty(s, device="meta") for k, s in released.items()})
    read = config_from_unet_state(state)
    assert {k: getattr(cfg, k) for k in read} == read


@pytest.mark.parametrize("name", ["ucf101.yaml", "sky.yaml", "shapes.yaml"])
def test_configs_validate_as_whole_training_configs(name):
    from vpt.commands.train import train_schema
    from vpt.config import load_config

    cfg = load_config(train_schema(PVDM), CONFIGS / name)
    assert cfg.backend == "pvdm" and cfg.eval.context_frames == cfg.eval.predicted_frames == 16
    assert cfg.eval.context_in_fvd is False
    if name != "shapes.yaml":  # the published recipe: l2 loss, constant lr, no clipping, EMA every 25 steps
        assert cfg.model.loss_type == "l2"
        assert (cfg.train.warmup_steps, cfg.train.grad_clip, cfg.train.ema_every, cfg.train.ema_decay) == (
            0,
            0.0,
            25,
            0.9999,
        )


def test_sky_config_differs_from_ucf_only_in_cond_prob():
    ucf, sky = published_config("ucf101.yaml"), published_config("sky.yaml")
    assert (ucf.cond_prob, sky.cond_prob) == (0.3, 0.2)
    sky.cond_prob = ucf.cond_prob
    assert sky == ucf


def test_released_checkpoint_is_recognised(tmp_path):
    path = tmp_path / "ema_model_10000.pth"
    torch.save(torch.load(fixture("pvdm", "unet_tiny_cond_state_dict.pt")), path)
    assert PVDM.recognizes_checkpoint(path)
    other = tmp_path / "other.pth"
    torch.save({"model.weight": torch.zeros(1)}, other)
    assert not PVDM.recognizes_checkpoint(other)


@pytest.fixture()
def tiny_ae_release(tmp_path) -> Path:
    """The tiny upstream autoencoder of the fixtures as a `model_last.pth` (32 px, 16 frames: 144 tokens)."""
    path = tmp_path / "model_last.pth"
    torch.save(
        {
            **torch.load(fixture("pvdm", "ae_tiny_state_dict_part1.pt")),
            **torch.load(fixture("pvdm", "ae_tiny_state_dict_part2.pt")),
        },
        path,
    )
    return path


def _release(tmp_path: Path, kind: str) -> Path:
    """A tiny UNet as a release file, with the config.json that names its heads (not the released size)."""
    path = tmp_path / f"ema_model_{kind}.pth"
    torch.save(
        {f"module.{k}": v for k, v in torch.load(fixture("pvdm", f"unet_tiny_{kind}_state_dict.pt")).items()}, path
    )
    (tmp_path / "config.json").write_text('{"model": {"num_heads": 4}}')
    return path


def test_released_unet_takes_its_plane_sizes_from_the_autoencoder(tmp_path, tiny_ae_release):
    """The UNet's weights fit any plane size: the tiny unconditional one runs on the tiny AE's 144 tokens."""
    path = _release(tmp_path, "uncond")
    assert PVDM.recognizes_checkpoint(path)
    model = PVDM.from_checkpoint(path, autoencoder=tiny_ae_release, preset="sky")
    assert (model.cfg.latent_size, model.cfg.latent_frames, model.cfg.latent_length) == (4, 16, 144)
    assert (model.cfg.steps, model.cfg.cond_model, model.frame_size, model.cfg.num_heads) == (400, False, 32, 4)
    protocol = model.default_protocol()
    assert (protocol.context_frames, protocol.predicted_frames, protocol.fvd_preset) == (16, 16, "stylegan-v")
    video = torch.rand(1, 16, 3, 32, 32) * 2 - 1
    out = model.predict(video, 16, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 16, 3, 32, 32) and torch.isfinite(out).all() and out.abs().max() <= 1


def test_released_unet_on_an_autoencoder_of_other_latents_is_one_line(tmp_path, tiny_ae_release):
    with pytest.raises(UsageError, match="2048 tokens.*gives 144"):
        PVDM.from_checkpoint(_release(tmp_path, "cond"), autoencoder=tiny_ae_release)


def model_on_tiny_ae(release: Path, cond_prob: float = 0.3) -> PVDM:
    """A small random conditional UNet on the tiny upstream autoencoder's 4 x 144 latents."""
    cfg = PVDMConfig(
        autoencoder=str(release),
        latent_size=4,
        latent_frames=16,
        model_channels=32,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[2],
        num_heads=4,
        cond_prob=cond_prob,
    )
    torch.manual_seed(0)
    model = PVDM(cfg)
    with torch.no_grad():
        for param in model.unet.parameters():
            param.normal_(0.0, 0.05)
    return model.eval()


def test_training_on_frames_equals_training_on_their_latents(tiny_ae_release):
    """A conditional step on 32 frames encodes clip 0 as the condition of clip 1, as cached latents give them."""
    model = model_on_tiny_ae(tiny_ae_release, cond_prob=1.0)
    video = torch.rand(2, 32, 3, 32, 32) * 2 - 1
    latents = model.encode(video)  # (2, 2, 4, 144)
    torch.manual_seed(5)
    from_frames = model.loss({"video": video})["loss"]
    torch.manual_seed(5)
    from_latents = model.loss({"latents": latents})["loss"]
    torch.testing.assert_close(from_frames, from_latents, **TOL)
    with pytest.raises(ConfigError, match="32 frames"):
        model.loss({"video": video[:, :16]})


def test_unconditioned_windows_of_frames_start_at_any_frame_as_upstream(tiny_ae_release, monkeypatch):
    """Training on 32 frames, a batch drawn without a condition targets the 16 frames from a start drawn after the
    condition coin, uniform over 0 ... 16 (upstream's random.randint(0, 16)): any frame, where cached latents can
    only start at a clip boundary."""
    model = model_on_tiny_ae(tiny_ae_release, cond_prob=0.0)
    video = torch.rand(1, 32, 3, 32, 32) * 2 - 1  # (B, T, 3, H, W)
    targets = []
    compute = model.diffusion_loss
    monkeypatch.setattr(model, "diffusion_loss", lambda x0, *rest: targets.append(x0) or compute(x0, *rest))
    starts = []
    for seed in range(3):
        torch.manual_seed(seed)
        torch.rand(())  # the condition coin
        starts.append(int(torch.randint(0, 17, ())))
        torch.manual_seed(seed)
        model.loss({"video": video})
        window = video[:, starts[-1] : starts[-1] + 16]  # (1, 16, 3, H, W)
        torch.testing.assert_close(targets[-1], model.encode(window)[:, 0].float(), **TOL)
    assert any(start % 16 for start in starts)  # the seeds draw starts inside a clip


def test_short_context_is_padded_in_front_with_black_frames(tiny_ae_release, capsys):
    model = model_on_tiny_ae(tiny_ae_release)
    context = torch.rand(1, 6, 3, 32, 32) * 2 - 1
    short = model.predict(context, 4, steps=2, generator=torch.Generator().manual_seed(0))
    assert "padded in front with black frames" in capsys.readouterr().err
    padded = torch.cat([torch.full((1, 10, 3, 32, 32), -1.0), context], dim=1)
    torch.testing.assert_close(short, model.predict(padded, 4, steps=2, generator=torch.Generator().manual_seed(0)))
    assert short.shape == (1, 4, 3, 32, 32)


def test_short_video_is_padded_and_trains_with_a_zero_condition(tmp_path, tiny_ae_release, monkeypatch):
    """data.pad_short as upstream's SkyTimelapse loader: a 20-frame video gives 16 black frames, then 16 of its
    own; the conditional loss zeroes its condition and, when no condition is drawn, targets its real clip."""
    from data_helpers import numbered_video
    from torch.utils.data import default_collate

    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.data.h5 import ShardWriter
    from vpt.training.sampler import SampleKey

    with ShardWriter(tmp_path / "h5" / "train" / "shard_0001.hdf5") as shard:
        shard.add(numbered_video(40, 32))
        shard.add(numbered_video(20, 32))
    path = str(tmp_path / "h5")
    assert len(ClipDataset(DataConfig(path=path, frames=32))) == 1  # without the option the short video is left out
    dataset = ClipDataset(DataConfig(path=path, frames=32, pad_short=True))
    batch = default_collate([dataset[SampleKey(index, 7)] for index in range(2)])
    video = batch["video"]  # (2, 32, 3, 32, 32)
    assert batch["padded_frames"].tolist() == [0, 16] and torch.equal(video[1, :16], torch.full((16, 3, 32, 32), -1.0))
    own = ((video[1, 16:, 0, 0, 0] + 1) * 127.5).round().int().tolist()  # numbered frames carry their index
    assert own == list(range(own[0], own[0] + 16)) and 0 <= own[0] <= 20 - 16

    model = model_on_tiny_ae(tiny_ae_release, cond_prob=1.0)
    clips = model.encode(video).float()  # (2, 2, 4, 144): each sample's first and second 16-frame clip
    received = []
    model.unet.register_forward_pre_hook(lambda module, args: received.append(args[1]))  # the condition
    model.loss(batch)
    model.loss({"video": video})  # without the loader's mark the black frames would be the condition
    torch.testing.assert_close(received[0][0], clips[0, 0], **TOL)
    assert torch.equal(received[0][1], torch.zeros_like(clips[1, 0]))
    torch.testing.assert_close(received[1][1], clips[1, 0], **TOL)
    assert clips[1, 0].abs().sum() > 0

    targets = []
    compute = model.diffusion_loss
    monkeypatch.setattr(model, "diffusion_loss", lambda x0, *rest: targets.append(x0) or compute(x0, *rest))
    model.cfg.cond_prob = 0.0
    for seed in range(4):  # random windows for the whole clip, the video's own frames for the padded one
        torch.manual_seed(seed)
        model.loss(batch)
        torch.testing.assert_close(targets[-1][1], clips[1, 1], **TOL)
    assert any(not torch.allclose(target[0], clips[0, 1], **TOL) for target in targets)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(latent_size=30), "latent_size"),
        (dict(model_channels=48), "multiple of 32"),
        (dict(num_heads=3), "num_heads"),
        (dict(steps=0), "steps"),
    ],
)
def test_invalid_sizes_are_one_line_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        PVDMConfig(**fields)


def test_other_plane_sizes_build_and_run():
    """Plane sizes follow the config (upstream hard-codes 32 / 16 / 2048): 8x8 planes of 4 frames."""
    cfg = PVDMConfig(
        latent_size=8,
        latent_frames=4,
        model_channels=32,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[2],
        num_heads=4,
    )
    assert cfg.latent_length == 8 * 8 + 2 * 4 * 8
    model = PVDM(cfg)
    x = torch.randn(2, 4, cfg.latent_length)
    assert model.unet(x, None, torch.tensor([3, 500])).shape == x.shape
    loss = model.loss({"latents": torch.randn(2, 2, 4, cfg.latent_length)})["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.unet.input_blocks[0][0].weight.grad is not None


@pytest.mark.parametrize("run_name", ["steps8_eta1_w0", "steps6_eta05_w15", "steps5_eta0_w2_nocond"])
@torch.no_grad()
def test_guided_ddim_matches_upstream_ddim_sample(run_name):
    """`sample_latents` against upstream `DDPM.ddim_sample` with η and w (tests/fixtures/pvdm/README.md), on a
    one-level, two-head UNet; start point and per-step noises are the stream of the recorded seed. The step
    counts are small because each upstream-sized call costs ~0.5 s on a CPU; the 100- and 400-step grids
    themselves are compared in `test_ddim_grids_match_upstream`."""
    state = convert_upstream_unet(load_file(fixture("pvdm", "ddim_guided.weights.safetensors")))
    model = PVDM(PVDMConfig(**config_from_unet_state(state, num_heads=2)))
    model.unet.load_state_dict(state)
    recorded = load_file(fixture("pvdm", "ddim_guided.safetensors"))
    steps, eta, w, with_cond, seed = recorded[f"{run_name}.settings"].tolist()
    sample = model.eval().sample_latents(
        1,
        recorded["cond"] if with_cond else None,
        steps=int(steps),
        eta=eta,
        w=w,
        generator=torch.Generator().manual_seed(int(seed)),
    )
    expected = recorded[f"{run_name}.sample"]
    difference = ((sample - expected).norm() / expected.norm()).item()
    assert difference <= 1e-5, difference
