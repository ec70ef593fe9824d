"""PVDM's projected autoencoder: upstream parity, the released checkpoint layout, derived plane sizes,
its loss recipe, and the train-ae -> save-latents -> decode path on the built-in data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from einops import rearrange
from fixture_paths import fixture, key_shapes

from vpt.errors import ConfigError, VptError
from vpt.models.autoencoders import autoencoder_from_upstream_state, build_autoencoder, load_autoencoder
from vpt.weights import UnsafeWeightsError, read_weights

ATOL, RTOL = 1e-5, 1e-4
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ae"


def _tiny_state() -> dict[str, torch.Tensor]:
    return {
        **read_weights(fixture("pvdm", "ae_tiny_state_dict_part1.pt")),
        **read_weights(fixture("pvdm", "ae_tiny_state_dict_part2.pt")),
    }


@pytest.fixture(scope="module")
def tiny():
    return autoencoder_from_upstream_state(_tiny_state(), where="ae_tiny")


@pytest.fixture(scope="module")
def io():
    return read_weights(fixture("pvdm", "ae_tiny_io.pt"))


def _config_arch(name: str) -> dict:
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["autoencoder"]["arch"]


# --- parity ---------------------------------------------------------------------------------------


def test_tiny_architecture_is_read_off_the_upstream_weights(tiny):
    ddconfig = yaml.safe_load(fixture("pvdm", "config_tiny.yaml").read_text())["autoencoder_tiny"]["ddconfig"]
    config = tiny.config
    assert (config.channels, config.resolution, config.timesteps, config.splits) == (
        ddconfig["channels"],
        ddconfig["resolution"],
        ddconfig["timesteps"],
        ddconfig["splits"],
    )
    assert (config.embed_dim, config.patch_size, config.depth) == (4, 8, 8)


@torch.no_grad()
def test_tiny_matches_upstream(tiny, io):
    video = rearrange(io["inputs"]["video"], "b c t h w -> b t c h w")  # upstream takes B C T H W
    expected = io["outputs"]
    torch.testing.assert_close(tiny.encode_tokens(video), expected["encoder_tokens"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(tiny.planes_to_cube(tiny.encode_planes(video)), expected["encode"], atol=ATOL, rtol=RTOL)
    latents = tiny.encode(video)  # (B, T // 16, 4, L)
    assert latents.shape == (2, 1, 4, 144)
    torch.testing.assert_close(latents[:, 0], expected["extract"], atol=ATOL, rtol=RTOL)
    flat = lambda v: rearrange(v, "b t c h w -> (b t) c h w")  # noqa: E731  upstream's frame-fastest layout
    torch.testing.assert_close(flat(tiny.decode(latents)), expected["decode_from_sample"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(
        flat(tiny.forward_train(video).reconstruction), expected["forward_recon"], atol=ATOL, rtol=RTOL
    )


@torch.no_grad()
def test_latents_keep_upstream_plane_order(tiny, io):
    video = rearrange(io["inputs"]["video"], "b c t h w -> b t c h w")
    planes = tiny.encode_planes(video)
    assert {name: tuple(p.shape[2:]) for name, p in planes.items()} == {"xy": (4, 4), "yt": (16, 4), "xt": (16, 4)}
    latents = tiny.encode(video)[:, 0]
    torch.testing.assert_close(latents[..., 16:80], planes["yt"].flatten(2))  # [xy 4*4 | yt 16*4 | xt 16*4]
    assert latents.abs().max() < 1  # tanh-bounded
    split = tiny.split_planes(latents)
    assert all(torch.equal(split[name], planes[name]) for name in planes)


@torch.no_grad()
def test_bf16_autocast_stays_close_to_float32(tiny, io):
    video = rearrange(io["inputs"]["video"], "b c t h w -> b t c h w")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        latents = tiny.encode(video)
        frames = tiny.decode(latents)
    assert latents.dtype == torch.bfloat16  # rotary angles stay float32 inside; the tokens run in bf16
    torch.testing.assert_close(latents[:, 0].float(), io["outputs"]["extract"], atol=0.05, rtol=0)  # measured 0.02
    flat = rearrange(frames.float(), "b t c h w -> (b t) c h w")
    torch.testing.assert_close(flat, io["outputs"]["decode_from_sample"], atol=0.05, rtol=0)  # measured 0.009


def test_activation_checkpointing_recomputes_layers_with_the_same_gradients(tiny, io, monkeypatch):
    from vpt.models.autoencoders import pvdm

    calls = []
    monkeypatch.setattr(
        pvdm, "checkpoint", lambda *a, **k: calls.append(1) or torch.utils.checkpoint.checkpoint(*a, **k)
    )
    video = rearrange(io["inputs"]["video"], "b c t h w -> b t c h w")[:1]
    grads = []
    for checkpointing in (False, True):
        model = build_autoencoder("pvdm", {**vars(tiny.config), "checkpointing": checkpointing}).train()
        model.load_state_dict(tiny.state_dict())
        model.forward_train(video).reconstruction.square().mean().backward()
        grads.append(model.encoder.to_patch_embedding.weight.grad)
    assert len(calls) == 2 * tiny.config.depth  # every encoder and decoder layer, only when asked for
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


# --- the released checkpoint layout ---------------------------------------------------------------


def test_ucf101_config_has_the_released_key_list_and_the_converter_reads_it_back():
    released = key_shapes("pvdm", "keys_pvdm_autoencoder_base.txt")
    with torch.device("meta"):
        model = build_autoencoder("pvdm", _config_arch("pvdm_ucf101"))
        state = {name: torch.empty(shape) for name, shape in released.items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == released
    assert sum(v.numel() for v in model.state_dict().values()) == 62_064_511
    assert model.latent_dims(256, 256) == (4, 2048)  # what the diffusion stage expects
    from vpt.models.autoencoders.loading import _recognize

    inferred = _recognize(state, "model_last.pth").arch_from_state(state)
    assert {k: v for k, v in vars(model.config).items() if k in inferred} == inferred


def test_sky_config_is_the_same_autoencoder():
    assert _config_arch("pvdm_sky") == _config_arch("pvdm_ucf101")


def test_model_last_pth_loads_through_the_weights_reader(tmp_path, io):
    path = tmp_path / "model_last.pth"
    torch.save({f"module.{k}": v for k, v in _tiny_state().items()}, path)  # saved from a DDP wrapper
    model = load_autoencoder(path)
    assert model.type == "pvdm" and model.provenance["format"] == "state-dict"
    video = rearrange(io["inputs"]["video"], "b c t h w -> b t c h w")
    with torch.no_grad():
        torch.testing.assert_close(model.encode(video)[:, 0], io["outputs"]["extract"], atol=ATOL, rtol=RTOL)


class _RunsCode:
    def __reduce__(self):
        return (print, ("a pickle that calls a function",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "model_last.pth"
    torch.save({"xy_token": torch.zeros(1, 1, 16), "payload": _RunsCode()}, path)
    with pytest.raises(UnsafeWeightsError):
        load_autoencoder(path)


# --- derived sizes ----------------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize(
    "resolution, patch, frames, splits",
    [
        (48, 8, 6, 1),  # 6 frames on a 6 x 6 grid
        (128, 4, 4, 2),  # the 128 px / patch 4 setting upstream breaks on; 2 splits of 2 frames
    ],
)
def test_other_resolutions_and_frame_counts_derive_their_planes(resolution, patch, frames, splits):
    model = build_autoencoder(
        "pvdm",
        {
            "channels": 16,
            "resolution": resolution,
            "timesteps": frames,
            "splits": splits,
            "depth": 1,
            "patch_size": patch,
        },
    ).eval()
    grid, k = resolution // patch, frames // splits
    assert model.frames_per_latent == k and model.plane_shapes() == {
        "xy": (grid, grid),
        "yt": (k, grid),
        "xt": (k, grid),
    }
    video = torch.rand(1, 2 * k, 3, resolution, resolution) * 2 - 1
    latents = model.encode(video)
    assert (
        latents.shape
        == (1, 2, 4, grid * grid + 2 * k * grid)
        == (1, *model.latent_shape(2 * k, resolution, resolution))
    )
    assert model.decode(latents).shape == video.shape


@pytest.mark.parametrize(
    "arch, needle",
    [
        ({"resolution": 36}, "resolution 36 is not divisible by patch_size 8"),
        ({"timesteps": 16, "splits": 3}, "timesteps 16 is not divisible by splits 3"),
        ({"channels": 4}, "channels must be >= 8"),
    ],
)
def test_invalid_sizes_are_one_line(arch, needle):
    with pytest.raises(ConfigError) as error:
        build_autoencoder("pvdm", {"channels": 16, "resolution": 32, "depth": 1, **arch})
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_frames_of_another_size_are_one_line(tiny):
    with pytest.raises(VptError, match="built for 32x32 frames, got 64x64"):
        tiny.encode(torch.zeros(1, 16, 3, 64, 64))


# --- the loss recipe --------------------------------------------------------------------------------


def _objective(**loss):
    from vpt.models.autoencoders.objective import LossConfig

    torch.manual_seed(0)
    ae = build_autoencoder("pvdm", {"channels": 16, "resolution": 16, "timesteps": 4, "depth": 1})
    settings = dict(
        discriminator="pvdm",
        adaptive_weight=False,
        reconstruction_weight=4.0,
        feature_matching_weight=4.0,
        gan_weight=1.0,
        disc_factor=1.0,
        disc_layers=2,
        disc_channels=8,
        disc_start=0,
    )
    return ae.build_objective(LossConfig(**{**settings, **loss})).train()


def test_discriminators_have_the_loss_last_pth_layout():
    objective = _objective(disc_layers=3, disc_channels=64)
    released = {
        k: v
        for k, v in key_shapes("pvdm", "keys_pvdm_loss_lpips_discriminators.txt").items()
        if k.startswith("discriminator_")
    }
    ours = {k: tuple(v.shape) for k, v in objective.state_dict().items() if k.startswith("discriminator_")}
    assert ours == released
    state = {
        k: torch.full(shape, 0.5)
        if k.endswith("weight")
        else torch.zeros(shape, dtype=torch.long if "num_batches" in k else torch.float)
        for k, shape in key_shapes("pvdm", "keys_pvdm_loss_lpips_discriminators.txt").items()
    }
    objective.load_upstream_discriminators(state)  # LPIPS keys are dropped, the discriminators fit
    assert objective.discriminator_3d.model4[0].weight.eq(0.5).all()


def test_gan_terms_wait_for_disc_start_then_add_with_the_published_weights():
    video = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    before = _objective(disc_start=5)
    out = before.loss(video)
    assert torch.allclose(out["loss"], 4.0 * out["rec"])  # no LPIPS network given, no GAN yet
    after = _objective(disc_start=5)
    after.micro_steps.fill_(5)
    out = after.loss(video)
    expected = 4.0 * out["rec"] + out["g_loss"] + 4.0 * out["feature_matching"] + out["d_loss"]  # published weights
    assert out["feature_matching"] > 0 and torch.allclose(out["loss"], expected)


def _gradients(video, **loss) -> dict:
    """Logs and gradients (autoencoder, 2-D and 3-D discriminator) of one loss evaluation."""
    objective = _objective(**loss)
    torch.manual_seed(1)  # the same frame is chosen in every call
    out = objective.loss(video)
    out["loss"].backward()
    grads = {
        name: torch.cat([p.grad.flatten() for p in getattr(objective, name).parameters()])
        for name in ("autoencoder", "discriminator_2d", "discriminator_3d")
    }
    return {**{k: float(v) for k, v in out.items() if k != "loss"}, **grads}


def test_each_player_gets_only_the_gradient_of_its_own_objective():
    video = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    both = _gradients(video)
    no_generator_terms = _gradients(video, gan_weight=0.0, feature_matching_weight=0.0)
    no_discriminator_term = _gradients(video, disc_factor=0.0)
    for name in ("discriminator_2d", "discriminator_3d"):
        assert both[name].abs().sum() > 0
        torch.testing.assert_close(both[name], no_generator_terms[name])
    torch.testing.assert_close(both["autoencoder"], no_discriminator_term["autoencoder"])
    assert not torch.allclose(both["autoencoder"], no_generator_terms["autoencoder"])  # the GAN terms do reach the AE


@pytest.mark.parametrize(
    "loss, needle",
    [
        ({"discriminator": "patchgan"}, "trains with 'pvdm'"),
        ({"adaptive_weight": True}, "fixed loss.gan_weight"),
        ({"gan_loss": "lsgan"}, "hinge or vanilla"),
    ],
)
def test_settings_the_recipe_has_no_place_for_are_refused(loss, needle):
    with pytest.raises(ConfigError, match=needle):
        _objective(**loss)


def test_gan_schedules_are_refused_where_they_cannot_run(monkeypatch):
    from vpt.models.autoencoders.objective import LossConfig, check_loss_config

    vqgan = build_autoencoder(
        "vqgan",
        dict(
            ch=8,
            ch_mult=[1],
            num_res_blocks=1,
            attn_resolutions=[],
            resolution=8,
            z_channels=4,
            embed_dim=4,
            n_embed=8,
            norm_groups=4,
        ),
    )
    with pytest.raises(ConfigError, match="gan_schedule: alternating belongs to the pvdm and moso"):
        check_loss_config(LossConfig(gan_schedule="alternating"), vqgan)
    pvdm = build_autoencoder("pvdm", {"channels": 16, "resolution": 16, "timesteps": 4, "depth": 1})
    for discriminator, autoencoder in (("none", vqgan), ("patchgan", pvdm)):  # vg: one discriminator, not PVDM's
        with pytest.raises(ConfigError, match="gan_schedule: vg is VideoGeneration-PyTorch's recipe"):
            check_loss_config(LossConfig(gan_schedule="vg", discriminator=discriminator), autoencoder)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="alternating trains on one process"):
        _objective(gan_schedule="alternating")


# --- train-ae -> save-latents on the built-in data ---------------------------------------------------

TINY = ["--set", "autoencoder.arch.channels=16", "--set", "autoencoder.arch.depth=1"]


@pytest.fixture(scope="module")
def shapes_32(tmp_path_factory):
    """`make-data shapes`: 6 videos of 32 frames (two clips each) at 32 x 32, as HDF5."""
    from data_helpers import shapes_h5

    return shapes_h5(tmp_path_factory.mktemp("shapes"), num_videos=6, frames=32, size=32)


def test_train_ae_then_save_latents_stores_planes_that_decode_back(shapes_32, tmp_path, invoke):
    import json

    from vpt.commands.save_latents import encode_dataset
    from vpt.data.datasets import frames_to_tensor
    from vpt.data.h5 import VideoH5

    h5, run = shapes_32, tmp_path / "run"
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIGS / "pvdm_shapes.yaml",
        "--data",
        h5,
        "--run",
        run,
        *TINY,
        "--set",
        "train.batch_size=2",
        "--set",
        "train.val_every=2",
        "--set",
        "loss.discriminator=pvdm",
        "--set",
        "loss.disc_start=1",
        "--max-steps",
        "2",
    )
    assert code == 0, output
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("feature_matching" in r for r in losses) and any("val_psnr" in r for r in losses)

    summary = encode_dataset(run, h5, tmp_path / "latents")
    assert summary["latent_shape"] == (4, 4 * 4 + 16 * 4 + 16 * 4)
    latents = VideoH5(tmp_path / "latents" / "val")
    assert json.loads(latents.attrs["latent_planes"]) == {"xy": [4, 4], "yt": [16, 4], "xt": [16, 4]}
    assert int(latents.attrs["frames_per_latent"]) == 16
    stored = torch.from_numpy(latents.read(0))[None]  # (1, n_clips, 4, L): 32 frames -> 2 clips
    assert stored.shape == (1, 2, 4, 144)
    ae = load_autoencoder(run)
    video = frames_to_tensor(VideoH5(h5 / "val").read(0))[None]  # (1, 32, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(stored, ae.encode(video), atol=1e-5, rtol=0)
        torch.testing.assert_close(ae.decode(stored), ae.reconstruct(video), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("autoencoder.arch.resolution=36", "resolution 36 is not divisible by patch_size 8"),
        ("loss.discriminator=patchgan", "trains with 'pvdm'"),
        ("data.image_size=64", "built for 32x32 frames, got 64x64"),
    ],
)
def test_train_ae_mistakes_are_one_line(shapes_32, tmp_path, invoke, setting, needle):
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIGS / "pvdm_shapes.yaml",
        "--data",
        shapes_32,
        "--run",
        tmp_path / "run",
        *TINY,
        "--set",
        setting,
        "--max-steps",
        "1",
    )
    assert code != 0
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and needle in error[0], output


def test_discriminators_start_from_loss_last_pth(shapes_32, tmp_path, invoke):
    from safetensors.torch import load_file

    source = _objective(disc_layers=2, disc_channels=8)
    torch.manual_seed(3)
    upstream = {
        f"module.{k}": torch.randn_like(v) if v.is_floating_point() else v
        for k, v in source.state_dict().items()
        if k.startswith("discriminator_")
    }
    upstream["module.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)  # LPIPS entries are skipped
    path = tmp_path / "loss_last.pth"
    torch.save(upstream, path)
    run = tmp_path / "run"
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIGS / "pvdm_shapes.yaml",
        "--data",
        shapes_32,
        "--run",
        run,
        *TINY,
        "--set",
        "loss.discriminator=pvdm",
        "--set",
        "loss.disc_channels=8",
        "--set",
        f"loss.discriminator_init_from={path}",
        "--set",
        "train.lr=1e-12",
        "--set",
        "train.val_every=0",
        "--set",
        "train.batch_size=1",
        "--max-steps",
        "1",
    )
    assert code == 0, output
    saved = load_file(next((run / "checkpoints").glob("step_*")) / "model.safetensors")
    torch.testing.assert_close(
        saved["discriminator_3d.model2.0.weight"], upstream["module.discriminator_3d.model2.0.weight"]
    )


def test_init_from_model_last_pth_keeps_the_configs_checkpointing(shapes_32, tmp_path, invoke):
    torch.manual_seed(5)
    source = build_autoencoder("pvdm", {"channels": 16, "resolution": 32, "timesteps": 16, "depth": 1})
    path = tmp_path / "model_last.pth"
    torch.save(source.state_dict(), path)
    run = tmp_path / "run"
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIGS / "pvdm_shapes.yaml",
        "--data",
        shapes_32,
        "--run",
        run,
        *TINY,
        "--set",
        "autoencoder.arch.checkpointing=true",
        "--init-from",
        path,
        "--set",
        "train.lr=0.0",
        "--set",
        "train.val_every=0",
        "--set",
        "train.batch_size=1",
        "--max-steps",
        "1",
    )
    assert code == 0, output
    assert yaml.safe_load((run / "config.yaml").read_text())["autoencoder"]["arch"]["checkpointing"] is True
    trained = load_autoencoder(run)
    torch.testing.assert_close(trained.xy_token, source.xy_token)


# --- upstream's two stages: the GAN stage starts from the first stage's weights and autoencoder optimizer ------

STAGE = [
    "--config",
    CONFIGS / "pvdm_shapes.yaml",
    *TINY,
    "--set",
    "train.batch_size=1",
    "--set",
    "train.val_every=0",
    "--set",
    "train.precision=no",
    "--set",
    "train.grad_clip=0",
]


@pytest.fixture(scope="module")
def first_stage(shapes_32, tmp_path_factory):
    """Two steps of the first stage (no discriminators): the run, its checkpoint and optimizer state."""
    from vpt.cli import main

    run = tmp_path_factory.mktemp("stage1") / "run"
    with pytest.raises(SystemExit) as finished:
        main([str(a) for a in ("train-ae", *STAGE, "--data", shapes_32, "--run", run, "--max-steps", "2")])
    assert finished.value.code == 0
    checkpoint = run / "checkpoints" / "step_000002"
    return run, checkpoint, read_weights(checkpoint / "training_state" / "optimizer.bin")


def _gan_stage(invoke, shapes_32, run: Path, source: Path, *options: str):
    return invoke(
        "train-ae",
        *STAGE,
        "--data",
        shapes_32,
        "--run",
        run,
        "--init-from",
        source,
        *options,
        "--set",
        "loss.discriminator=pvdm",
        "--max-steps",
        "1",
    )


def test_gan_stage_continues_the_first_stages_autoencoder_optimizer(first_stage, shapes_32, tmp_path, invoke):
    """With --init-optimizer the first GAN-stage update is AdamW continued from the first stage's moments and
    step count; without it the moments start at zero. Both runs see the same batch, so the fresh run gives the
    gradient g of that update: its first moment is (1 - beta1) g."""
    source, checkpoint, first = first_stage
    for name, options in (("carried", ["--init-optimizer"]), ("fresh", [])):
        code, output = _gan_stage(invoke, shapes_32, tmp_path / name, source, *options)
        assert code == 0, output
    carried, fresh = (
        read_weights(tmp_path / n / "checkpoints" / "step_000001" / "training_state" / "optimizer.bin")
        for n in ("carried", "fresh")
    )
    start = read_weights(checkpoint / "model.safetensors")  # the first stage's raw weights
    ends = {
        n: read_weights(tmp_path / n / "checkpoints" / "step_000001" / "model.safetensors")
        for n in ("carried", "fresh")
    }
    group = carried["param_groups"][0]
    lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    # the autoencoder's parameter group, in its order
    names = [f"autoencoder.{n}" for n, _ in load_autoencoder(source, ema=False).named_parameters()]
    assert len(group["params"]) == len(names) == len(first["param_groups"][0]["params"])
    checked = 0
    for position, name in enumerate(names):
        before = first["state"].get(position)
        if before is None:
            continue
        gradient = fresh["state"][position]["exp_avg"] / (1 - beta1)
        assert float(fresh["state"][position]["step"]) == 1  # fresh: bias correction from the first step
        after = carried["state"][position]
        count = float(before["step"]) + 1
        assert count == 3 and float(after["step"]) == count
        exp_avg = beta1 * before["exp_avg"] + (1 - beta1) * gradient
        exp_avg_sq = beta2 * before["exp_avg_sq"] + (1 - beta2) * gradient**2
        torch.testing.assert_close(after["exp_avg"], exp_avg, rtol=1e-4, atol=1e-10)
        torch.testing.assert_close(after["exp_avg_sq"], exp_avg_sq, rtol=1e-4, atol=1e-14)
        update = (exp_avg / (1 - beta1**count)) / ((exp_avg_sq / (1 - beta2**count)).sqrt() + eps)
        expected = start[name] * (1 - lr * decay) - lr * update
        torch.testing.assert_close(ends["carried"][name], expected, rtol=1e-5, atol=1e-7)
        fresh_update = gradient / (gradient.abs() + eps)  # AdamW's first step from zero moments
        torch.testing.assert_close(
            ends["fresh"][name], start[name] * (1 - lr * decay) - lr * fresh_update, rtol=1e-5, atol=1e-7
        )
        checked += 1
    assert checked == len(names)
    discriminator_steps = {float(s["step"]) for i, s in carried["state"].items() if i >= len(names)}
    assert discriminator_steps == {1.0}  # the discriminators' optimizer starts fresh, as upstream's d_opt


def test_init_optimizer_mistakes_are_one_line(first_stage, shapes_32, tmp_path, invoke):
    source, checkpoint, first = first_stage
    weights_file = tmp_path / "model_last.pth"
    torch.save(
        {k.removeprefix("autoencoder."): v for k, v in read_weights(checkpoint / "model.safetensors").items()},
        weights_file,
    )
    no_state = tmp_path / "no_state"
    shutil.copytree(source, no_state)
    (no_state / "checkpoints" / "step_000002" / "training_state" / "optimizer.bin").unlink()
    short = tmp_path / "short"
    shutil.copytree(source, short)
    first["param_groups"][0]["params"].pop()
    torch.save(first, short / "checkpoints" / "step_000002" / "training_state" / "optimizer.bin")
    cases = [
        (["--set", "autoencoder.init_optimizer=true"], None, "needs autoencoder.init_from"),
        (["--init-optimizer"], weights_file, "is not a `vpt train-ae` run"),
        (["--init-optimizer"], no_state, "holds no optimizer state"),
        (["--init-optimizer"], short, f"holds {len(first['param_groups'][0]['params'])} parameters, this model's"),
    ]
    for index, (options, init_from, needle) in enumerate(cases):
        arguments = ["--init-from", init_from] if init_from else []
        code, output = invoke(
            "train-ae",
            *STAGE,
            "--data",
            shapes_32,
            "--run",
            tmp_path / f"run{index}",
            *arguments,
            *options,
            "--max-steps",
            "1",
        )
        error = [line for line in output.splitlines() if line.startswith("error:")]
        assert code != 0 and len(error) == 1 and needle in error[0], output
