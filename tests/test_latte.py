"""Latte parity with the VideoGeneration-PyTorch fixtures (tests/fixtures/latte/README.md) and the
backend's sampling maths on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from fixture_paths import fixture, key_shapes

from vpt.errors import ConfigError, UsageError
from vpt.models.latent import PixelAutoencoder
from vpt.models.latte import (
    LATTE_SIZES,
    Latte,
    LatteConfig,
    LatteDiT,
    convert_vg_state,
    patch_position_table,
    timestep_features,
)

ATOL, RTOL = 1e-5, 1e-4
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "latte"
TINY = dict(
    latent_channels=4,
    num_frames=4,
    patch_size=2,
    num_layers=4,
    hidden_size=32,
    num_heads=2,
    head_dim=12,
    timestep_emb_dim=16,
)


def _tiny_dit() -> LatteDiT:
    model = LatteDiT(LatteConfig(**TINY))
    model.load_state_dict(convert_vg_state(torch.load(fixture("latte", "ditv_tiny_state_dict.pt"))))
    return model.eval()


def test_embeddings_match_upstream():
    io = torch.load(fixture("latte", "embeddings_io.pt"))
    inputs, outputs = io["inputs"], io["outputs"]
    torch.testing.assert_close(
        timestep_features(inputs["t"], inputs["temb_dim"]), outputs["timestep_embedding"], atol=ATOL, rtol=RTOL
    )
    rows, cols = inputs["grid_size"]
    torch.testing.assert_close(
        patch_position_table(inputs["pos_emb_dim"], rows, cols), outputs["patch_pos_embedding"], atol=ATOL, rtol=RTOL
    )
    torch.testing.assert_close(
        timestep_features(inputs["frame_positions"], inputs["frame_emb_dim"]),
        outputs["frame_embedding"],
        atol=ATOL,
        rtol=RTOL,
    )


def test_denoiser_matches_upstream():
    model = _tiny_dit()
    io = torch.load(fixture("latte", "ditv_tiny_io.pt"))
    inputs, outputs = io["inputs"], io["outputs"]
    with torch.no_grad():
        joint = model(inputs["x_joint"], inputs["t"], num_images=inputs["num_images"])
        video = model(inputs["x_video"], inputs["t"])
        one = model(inputs["x_one"], inputs["t_one"])
    torch.testing.assert_close(joint, outputs["y_joint"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(video, outputs["y_video"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(one, outputs["y_one"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("dataset", ["mnist", "ucf"])
def test_released_vg_keys_convert_onto_the_shipped_configs(dataset):
    """Every upstream key of the released DiT lands on a parameter of the same shape in the model that
    configs/latte/vg_<dataset>.yaml builds (Latte-B/2 with 256-wide time features)."""
    from vpt.commands.train import train_schema
    from vpt.config import validate

    path = CONFIGS / f"vg_{dataset}.yaml"
    cfg = validate(train_schema(Latte), yaml.safe_load(path.read_text()), source=str(path))
    with torch.device("meta"):
        model = LatteDiT(cfg.model)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    upstream = key_shapes("latte", f"keys_vg_ditv_{dataset}.txt")
    converted = convert_vg_state({key: torch.empty(shape, device="meta") for key, shape in upstream.items()})
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    assert sum(torch.Size(s).numel() for s in expected.values()) == 129_534_736
    assert (cfg.eval.fvd_preset, cfg.eval.clips, cfg.eval.predicted_frames) == ("stylegan-v", 2048, 16)
    # VG's sampler: all 1000 ancestral steps with the posterior variance (test_latte_respacing.py runs it)
    assert (cfg.model.sampler, cfg.model.steps, cfg.model.variance_type) == ("ddpm", 1000, "fixed_small")


def test_shapes_config_is_a_small_class_conditional_model():
    from vpt.commands.train import train_schema
    from vpt.config import validate

    path = CONFIGS / "shapes.yaml"
    cfg = validate(train_schema(Latte), yaml.safe_load(path.read_text()), source=str(path))
    assert cfg.model.num_classes == 5 and cfg.data.frames == cfg.model.num_frames
    assert sum(p.numel() for p in LatteDiT(cfg.model).parameters()) == 317_904


@pytest.mark.parametrize("name, classes", [("ucf101_xl2", 101), ("sky_xl2", 0)])
def test_official_configs_build_the_released_architecture(name, classes):
    from vpt.commands.train import train_schema
    from vpt.config import validate
    from vpt.models.latte import config_from_official_state

    path = CONFIGS / f"{name}.yaml"
    cfg = validate(train_schema(Latte), yaml.safe_load(path.read_text()), source=str(path))
    keys = "ucf101_XL2_classcond" if classes else "sky_ffs_taichi_XL2_uncond"
    upstream = {
        k: torch.empty(s, device="meta") for k, s in key_shapes("latte", f"keys_official_latte_{keys}.txt").items()
    }
    for key, value in config_from_official_state(upstream).items():
        assert getattr(cfg.model, key) == value, key
    assert (cfg.eval.fvd_preset, cfg.eval.clips, cfg.train.ema_decay) == ("stylegan-v", 2048, 0.9999)


def test_size_registry_has_every_width_and_patch():
    assert sorted(LATTE_SIZES) == sorted(f"{w}/{p}" for w in ("S", "B", "L", "XL") for p in (2, 4, 8))
    xl = LatteConfig(size="XL/2")
    assert (xl.num_layers, xl.hidden_size, xl.num_heads, xl.head_dim, xl.patch_size) == (28, 1152, 16, 72, 2)


def test_fresh_model_predicts_zero_noise():
    model = LatteDiT(LatteConfig(**TINY)).eval()
    out = model(torch.randn(2, 4, 4, 8, 12), torch.tensor([1, 500]))
    assert torch.count_nonzero(out) == 0  # adaLN-Zero and a zero output layer


def test_scheduler_matches_upstream():
    backend = Latte(LatteConfig(**TINY), autoencoder=PixelAutoencoder())
    scheduler = backend._scheduler("ddpm")
    io = torch.load(fixture("latte", "scheduler_io.pt"))
    inputs, outputs = io["inputs"], io["outputs"]
    torch.testing.assert_close(scheduler.betas, outputs["betas"], atol=1e-7, rtol=0)
    torch.testing.assert_close(scheduler.alphas_cumprod, outputs["alpha_cum_prod"], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        scheduler.add_noise(inputs["x0"], inputs["noise"], inputs["t"]), outputs["add_noise"], atol=ATOL, rtol=RTOL
    )
    scheduler.set_timesteps(1000)
    step = scheduler.step(inputs["pred_noise"], 500, inputs["xt_single"], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(step.prev_sample, outputs["prev_t500"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(step.pred_original_sample.clamp(-1, 1), outputs["x0_t500"], atol=ATOL, rtol=RTOL)
    last = scheduler.step(inputs["pred_noise"], 0, inputs["xt_single"])
    torch.testing.assert_close(last.prev_sample, outputs["prev_t0"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(last.pred_original_sample.clamp(-1, 1), outputs["x0_t0"], atol=ATOL, rtol=RTOL)


# --- the backend's sampling on a tiny model (pixel "latents", random weights) -----------------------


def _tiny_backend(**overrides) -> Latte:
    cfg = LatteConfig(
        **{
            **TINY,
            "latent_channels": 12,
            "hidden_size": 32,
            "num_frames": 4,
            "sampler": "ddim",
            "steps": 3,
            **overrides,
        }
    )
    model = Latte(cfg, autoencoder=PixelAutoencoder(2))  # frames (3, 16, 16) <-> latents (12, 8, 8)
    torch.manual_seed(0)
    for layer in [block.modulation for block in model.denoiser.blocks] + [
        model.denoiser.final.modulation,
        model.denoiser.final.linear,
    ]:
        torch.nn.init.normal_(layer.weight, std=0.02)  # a non-zero prediction, so sampling depends on the model
    return model.eval()


def test_replacement_sampler_returns_the_known_latents_and_depends_on_them():
    model = _tiny_backend()
    known = torch.randn(2, 2, 12, 8, 8)
    clip = model.sample_latents(known, 4, generator=torch.Generator().manual_seed(0))
    assert clip.shape == (2, 4, 12, 8, 8)
    torch.testing.assert_close(clip[:, :2], known, atol=0, rtol=0)
    other = model.sample_latents(known + 1, 4, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(other[:, 2:], clip[:, 2:])  # the unknown frames see the known ones


def test_predict_generates_and_continues_in_windows():
    model = _tiny_backend()
    counted = []
    with model.reporting_frames(counted.append):
        generated = model.predict(torch.zeros(2, 0, 3, 16, 16), 3, generator=torch.Generator().manual_seed(0))
    assert generated.shape == (2, 3, 3, 16, 16) and sum(counted) == 6
    context = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    long = model.predict(context, 7, steps=2, generator=torch.Generator().manual_seed(0))  # windows of 4 frames
    assert long.shape == (2, 7, 3, 16, 16) and long.abs().max() <= 1.0
    with pytest.raises(UsageError, match="unconditional"):
        model.predict(context, 2, class_labels=1)


def test_class_conditional_guidance_and_label_dropout():
    model = _tiny_backend(num_classes=3, class_dropout=0.5)
    assert model.takes_class_labels and "class_labels" in model.sampling_options()
    runs = {
        label: model.predict(
            torch.zeros(1, 0, 3, 16, 16),
            2,
            class_labels=label,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
        )
        for label in (0, 2, None)
    }
    assert not torch.allclose(runs[0], runs[2]) and not torch.allclose(runs[0], runs[None])
    with pytest.raises(UsageError, match="class_labels"):
        model.predict(torch.zeros(1, 0, 3, 16, 16), 2, class_labels=3)
    torch.manual_seed(1)
    labels = model._training_labels({"label": torch.zeros(400, dtype=torch.long)}, 400, torch.device("cpu"))
    assert 150 < int((labels == 3).sum()) < 250  # about half replaced by the "no label" class


def test_loss_trains_on_latents_with_joint_image_frames():
    model = _tiny_backend(num_images=2).train()
    batch = {"latents": torch.randn(3, 6, 12, 8, 8)}  # 4 video frames + 2 single images per clip
    loss = model.loss(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.denoiser.patch_embed.weight.grad.abs().sum() > 0


def test_loss_keeps_the_joint_images_the_loader_drew():
    """With data.joint_images the batch's image frames are used where they are; without it they move to the next clip."""
    model = _tiny_backend(num_images=2).train()
    latents = torch.randn(3, 6, 12, 8, 8)  # 4 video frames + 2 single images per clip
    handed_back = torch.cat([latents[:, :4], latents[:, 4:].roll(-1, dims=0)], dim=1)  # undone by the hand-over

    def loss(batch: dict) -> torch.Tensor:
        torch.manual_seed(1)
        return model.loss(batch)["loss"]

    drawn = loss({"latents": latents, "joint_images": torch.full((3,), 2)})
    torch.testing.assert_close(drawn, loss({"latents": handed_back}), rtol=0, atol=0)
    assert not torch.allclose(drawn, loss({"latents": latents}))
    with pytest.raises(ConfigError, match="data.joint_images=3 must equal model.num_images=2"):
        model.loss({"latents": torch.randn(3, 7, 12, 8, 8), "joint_images": torch.full((3,), 3)})


# --- the label path, end to end: caption word -> class id -> embedding row -> guided sampling --------

SHAPES_CLASS_WORDS = yaml.safe_load((CONFIGS / "shapes.yaml").read_text())["model"]["class_words"]


def test_each_shapes_clip_gets_the_class_of_its_motion(tmp_path):
    """Through the real data path (make-data shapes -> video folder + captions.json -> ClipDataset), every
    clip's caption gives the index of its true motion in shapes.yaml's class_words."""
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.data.shapes import make_shapes

    make_shapes(tmp_path / "shapes", num_videos=24, frames=4, size=16, workers=0)
    motions = {
        name: entry["motion"]
        for name, entry in json.loads((tmp_path / "shapes" / "positions.json").read_text()).items()
    }
    clips = ClipDataset(DataConfig(path=str(tmp_path / "shapes"), frames=4))
    model = _tiny_backend(class_words=SHAPES_CLASS_WORDS)
    classes = [model.class_of_caption(clips[i]["text"]) for i in range(len(clips))]
    assert classes == [SHAPES_CLASS_WORDS.index(motions[f"train/{clips.source.name(i)}"]) for i in range(len(clips))]
    assert set(classes) == set(range(5))  # every motion is among them, so each id was checked
    assert model.cfg.num_classes == 5 and model.denoiser.label_embed.num_embeddings == 6  # + the "no label" row
    with pytest.raises(ConfigError, match="names none"):
        model.class_of_caption("a shape that stays")


def test_training_gives_every_block_the_caption_class_and_drops_labels_to_the_null_class():
    model = _tiny_backend(class_words=SHAPES_CLASS_WORDS, class_dropout=0.3).train()
    classes = torch.arange(300) % 5
    captions = [f"the red square {'falls' if c == 4 else 'moves ' + SHAPES_CLASS_WORDS[c]}" for c in classes]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.denoiser.label_embed.register_forward_hook(lambda m, args, out: seen.update(ids=args[0], rows=out)),
        model.denoiser.time_embed.register_forward_hook(lambda m, args, out: seen.update(time=out)),
        model.denoiser.blocks[-1].modulation.register_forward_hook(lambda m, args, out: seen.update(cond=args[0])),
    ]
    torch.manual_seed(0)
    model.loss({"latents": torch.randn(300, 4, 12, 4, 4), "text": captions})  # (B, F, c, h, w)
    for hook in hooks:
        hook.remove()
    ids = seen["ids"]  # (300,) the class ids the embedding was asked for
    dropped = ids == 5
    assert torch.equal(ids[~dropped], classes[~dropped])  # each clip its caption's class ...
    assert 60 <= int(dropped.sum()) <= 120  # ... or, with probability 0.3 (90 expected, sd 7.9), "no label"
    table = model.denoiser.label_embed.weight
    torch.testing.assert_close(seen["rows"], table[ids])
    assert len({tuple(row.tolist()) for row in table}) == 6  # five classes and the null class: six rows
    # the label row is added to the step's embedding and conditions the blocks (here the last one)
    torch.testing.assert_close(seen["cond"], torch.nn.functional.silu(seen["time"] + seen["rows"]))


def test_sampling_guides_the_prompt_class_against_the_null_class_as_upstream():
    """The prompt's class is the training class of that caption; each step the conditional branch sees
    it and the unconditional the null class, on the same noisy latents, and the step uses
    ε_∅ + s (ε_y − ε_∅). One DDIM step at ᾱ = 0.5 makes the sample z = √2 x_T − ε̂ exactly."""
    model = _tiny_backend(class_words=SHAPES_CLASS_WORDS, beta_start=0.5, beta_end=0.5)
    caption = "the blue circle moves down"
    calls = []
    hook = model.denoiser.register_forward_hook(lambda m, args, out: calls.append((args[0], args[2], out)))
    for prompt in (caption, "down", "Down"):
        frames = model.predict(
            torch.zeros(2, 0, 3, 16, 16),
            4,
            class_labels=prompt,
            guidance_scale=3.0,
            steps=1,
            generator=torch.Generator().manual_seed(0),
        )  # (2, 4, 3, 16, 16)
        (x, labels, out), *more = calls
        assert not more
        calls.clear()
        trained = model.class_of_caption(caption)
        assert labels.tolist() == [trained, trained, 5, 5]  # conditional half, then the unconditional half
        torch.testing.assert_close(x[:2], x[2:], atol=0, rtol=0)
        eps_label, eps_null = out.chunk(2)
        guided = eps_null + 3.0 * (eps_label - eps_null)
        expected = model.decode(math.sqrt(2.0) * x[:2] - guided)
        torch.testing.assert_close(frames, expected)
    hook.remove()
    with pytest.raises(UsageError, match="names none of model.class_words"):
        model.predict(torch.zeros(1, 0, 3, 16, 16), 2, class_labels="moves sideways")


def test_only_the_class_changes_a_sample_drawn_from_the_same_noise():
    model = _tiny_backend(class_words=SHAPES_CLASS_WORDS)

    def sample(label, guidance_scale=3.0):
        return model.predict(
            torch.zeros(2, 0, 3, 16, 16),
            4,
            class_labels=label,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(0),
        )

    torch.testing.assert_close(sample("left"), sample(0), atol=0, rtol=0)
    for scale in (1.0, 3.0):
        assert not torch.allclose(sample("left", scale), sample("right", scale), atol=1e-4)
    assert not torch.allclose(sample("left"), sample(None), atol=1e-4)


# --- learned variance (the official model's IDDPM objective) -------------------------------------------


def _posterior(abar: torch.Tensor, t: int, x0: torch.Tensor, xt: torch.Tensor):
    """q(x_{t-1} | x_t, x_0) written from the DDPM paper's formulas, as (mean, variance)."""
    a_t, a_prev = abar[t].double(), (abar[t - 1].double() if t > 0 else torch.tensor(1.0, dtype=torch.float64))
    beta = 1 - a_t / a_prev
    mean = (a_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_prev) * xt) / (1 - a_t)
    return mean, beta * (1 - a_prev) / (1 - a_t), beta


def test_variance_vlb_is_the_gaussian_kl_and_the_decoder_nll():
    from torch.distributions import Normal, kl_divergence

    from vpt.models.latte import variance_vlb

    abar = Latte(LatteConfig(**TINY), autoencoder=PixelAutoencoder())._scheduler().alphas_cumprod
    torch.manual_seed(0)
    x0, xt, eps = (
        torch.rand(2, 3, 4, 5).double() * 2 - 1,
        torch.randn(2, 3, 4, 5).double(),
        torch.randn(2, 3, 4, 5).double(),
    )
    v = torch.rand(2, 3, 4, 5).double() * 2 - 1
    t = torch.tensor([400, 0])
    got = variance_vlb(abar, x0, xt, t, eps, v).flatten(1).mean(dim=1)

    # t = 400: KL(q || p) with p's mean from the predicted x0 and the log-variance interpolated by v
    true_mean, true_var, beta = _posterior(abar, 400, x0[0], xt[0])
    x0_pred = (xt[0] - (1 - abar[400].double()).sqrt() * eps[0]) / abar[400].double().sqrt()
    model_mean, _, _ = _posterior(abar, 400, x0_pred, xt[0])
    frac = (v[0] + 1) / 2
    model_var = torch.exp(frac * torch.log(beta) + (1 - frac) * torch.log(true_var))
    kl = kl_divergence(Normal(true_mean, true_var.sqrt()), Normal(model_mean, model_var.sqrt()))
    torch.testing.assert_close(got[0].double(), kl.mean() / torch.log(torch.tensor(2.0)).double(), atol=1e-5, rtol=1e-4)

    # t = 0: minus the log-probability of x0's 1/255-wide bin (exact normal CDF vs IDDPM's tanh approximation)
    x0_pred = (xt[1] - (1 - abar[0].double()).sqrt() * eps[1]) / abar[0].double().sqrt()
    _, _, beta0 = _posterior(abar, 1, x0[1], xt[1])  # the clipped posterior variance: that of t = 1
    clipped = beta0 * (1 - abar[0].double()) / (1 - abar[1].double())
    frac = (v[1] + 1) / 2
    log_var = frac * torch.log(1 - abar[0].double()) + (1 - frac) * torch.log(clipped)
    normal = Normal(x0_pred, torch.exp(0.5 * log_var))
    prob = normal.cdf(x0[1] + 1 / 255) - normal.cdf(x0[1] - 1 / 255)
    expected = (-torch.log(prob.clamp(min=1e-12))).mean() / torch.log(torch.tensor(2.0)).double()
    torch.testing.assert_close(got[1].double(), expected, atol=0, rtol=2e-2)


def test_learned_sigma_model_trains_and_samples():
    model = _tiny_backend(learn_sigma=True, num_classes=2, sampler="ddpm").train()
    out = model.denoiser(torch.randn(1, 4, 12, 8, 8), torch.tensor([3]))
    assert out.shape == (1, 4, 24, 8, 8)
    losses = model.loss({"latents": torch.randn(2, 4, 12, 8, 8), "label": torch.tensor([0, 1])})
    assert torch.isfinite(losses["loss"]) and losses["vlb"] > 0
    losses["loss"].backward()
    model.eval()
    for sampler in ("ddpm", "ddim"):
        clip = model.predict(
            torch.zeros(2, 0, 3, 16, 16),
            4,
            sampler=sampler,
            class_labels=[0, 1],
            guidance_scale=4.0,
            generator=torch.Generator().manual_seed(0),
        )
        assert clip.shape == (2, 4, 3, 16, 16) and torch.isfinite(clip).all()


# --- official (Vchitect/Latte) checkpoints -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, classes, elements",
    [
        ("keys_official_latte_ucf101_XL2_classcond.txt", 101, 674_112_416),
        ("keys_official_latte_sky_ffs_taichi_XL2_uncond.txt", 0, 673_994_912),
    ],
)
def test_official_keys_convert_onto_latte_xl2(name, classes, elements):
    from vpt.models.latte import config_from_official_state, convert_official_state

    upstream = {key: torch.empty(shape, device="meta") for key, shape in key_shapes("latte", name).items()}
    fields = config_from_official_state(upstream)
    assert fields == {
        **{k: v for k, v in vars(LatteConfig(size="XL/2")).items() if k in fields},
        "latent_channels": 4,
        "timestep_emb_dim": 256,
        "num_frames": 16,
        "num_classes": classes,
        "learn_sigma": True,
        "position_order": "column",
    }
    with torch.device("meta"):
        model = LatteDiT(LatteConfig(**fields))
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    converted = convert_official_state(upstream)
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    fixed_tables = (256 + 16) * 1152  # pos_embed and temp_embed, computed here
    assert sum(torch.Size(s).numel() for s in expected.values()) + fixed_tables == elements


def test_official_conventions_convert_exactly():
    """The converted Linear patch embedding equals the Conv one, the swapped time weight gives the same
    features, and the column-first table puts the column index first."""
    from vpt.models.latte import convert_official_state

    torch.manual_seed(0)
    conv_weight, time_weight = torch.randn(8, 3, 2, 2), torch.randn(8, 16)
    converted = convert_official_state({"x_embedder.proj.weight": conv_weight, "t_embedder.mlp.0.weight": time_weight})
    frame = torch.randn(1, 3, 4, 6)
    conv_tokens = torch.nn.functional.conv2d(frame, conv_weight, stride=2).flatten(2).transpose(1, 2)  # (1, 6, 8)
    patches = frame.reshape(1, 3, 2, 2, 3, 2).permute(0, 2, 4, 3, 5, 1).reshape(1, 6, 12)  # (ph pw c), row-major
    torch.testing.assert_close(patches @ converted["patch_embed.weight"].T, conv_tokens, atol=1e-5, rtol=1e-5)
    t = torch.tensor([0.0, 7.0, 999.0])
    cos_first = torch.cat([timestep_features(t, 16)[:, 8:], timestep_features(t, 16)[:, :8]], dim=1)
    torch.testing.assert_close(timestep_features(t, 16) @ converted["time_embed.0.weight"].T, cos_first @ time_weight.T)
    column_first = patch_position_table(8, 2, 3, order="column").reshape(2, 3, 8)
    torch.testing.assert_close(
        column_first[1, 2],
        torch.cat([timestep_features(torch.tensor([2]), 4)[0], timestep_features(torch.tensor([1]), 4)[0]]),
    )


def _official_checkpoint(tmp_path, **overrides) -> tuple[LatteConfig, LatteDiT, Path]:
    """A tiny LatteDiT (and its config), and its weights + 1 as an official-layout file ({"model", "ema"},
    fixed tables inside)."""
    config = LatteConfig(
        **{
            **TINY,
            "learn_sigma": True,
            "num_classes": 3,
            "position_order": "column",
            "num_heads": 6,
            "head_dim": 64,
            "hidden_size": 384,
            **overrides,
        }
    )  # Latte-S width, 2 layers deep
    source = LatteDiT(config)
    renames = {
        "patch_embed.weight": "x_embedder.proj.weight",
        "patch_embed.bias": "x_embedder.proj.bias",
        "time_embed.0.weight": "t_embedder.mlp.0.weight",
        "time_embed.0.bias": "t_embedder.mlp.0.bias",
        "time_embed.2.weight": "t_embedder.mlp.2.weight",
        "time_embed.2.bias": "t_embedder.mlp.2.bias",
        "label_embed.weight": "y_embedder.embedding_table.weight",
        "final.linear.weight": "final_layer.linear.weight",
        "final.linear.bias": "final_layer.linear.bias",
        "final.modulation.weight": "final_layer.adaLN_modulation.1.weight",
        "final.modulation.bias": "final_layer.adaLN_modulation.1.bias",
    }
    official = {}
    for key, value in source.state_dict().items():
        if key.startswith("blocks."):
            key = key.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.2.", ".mlp.fc2.")
            key = key.replace(".modulation.", ".adaLN_modulation.1.")
        official[renames.get(key, key)] = value + 1.0  # "EMA" weights: + 1
    official["x_embedder.proj.weight"] = rearrange_back(official["x_embedder.proj.weight"], 2, 4)
    official["t_embedder.mlp.0.weight"] = torch.cat(official["t_embedder.mlp.0.weight"].chunk(2, dim=1)[::-1], dim=1)
    official["pos_embed"], official["temp_embed"] = torch.zeros(1, 24, 384), torch.zeros(1, 4, 384)
    path = tmp_path / "ucf101.pt"
    torch.save({"model": {k: v - 1.0 for k, v in official.items()}, "ema": official}, path)
    return config, source, path


def test_official_checkpoint_loads_with_ema_and_its_protocol(tmp_path):
    """A checkpoint in the official layout is recognised, built from its weights (heads from the config.json
    beside it: a 4-layer model is no published size) with the EMA copy, and carries the StyleGAN-V protocol."""
    _, source, path = _official_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model": {"num_heads": 6}}))

    assert Latte.recognizes_checkpoint(path)
    model = Latte.from_checkpoint(path, autoencoder="pixels:1")
    assert (model.cfg.num_classes, model.cfg.learn_sigma, model.cfg.num_layers, model.cfg.steps) == (3, True, 4, 250)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.denoiser.state_dict()[key], value + 1.0)
    protocol = model.default_protocol()
    assert (protocol.fvd_preset, protocol.clips, protocol.predicted_frames, model.frame_size) == (
        "stylegan-v",
        2048,
        16,
        256,
    )
    with pytest.raises(UsageError, match="--ae"):
        Latte.from_checkpoint(path)


def test_official_weights_of_no_published_size_need_their_heads(tmp_path):
    """Heads are not in the weights: the old reader gave this 4-head Latte-S-width file the table's 6 heads
    without a word; now a size outside the table asks for model.num_heads, which a config.json gives."""
    config, source, path = _official_checkpoint(tmp_path, num_heads=4, head_dim=96)
    with pytest.raises(ConfigError, match=r"model\.num_heads in a config\.json") as error:
        Latte.from_checkpoint(path, autoencoder="pixels:1")
    assert "\n" not in str(error.value)

    (tmp_path / "config.json").write_text(json.dumps({"model": {"num_heads": 4}}))
    model = Latte.from_checkpoint(path, autoencoder="pixels:1").eval()
    assert (model.cfg.num_heads, model.cfg.head_dim) == (4, 96)
    x, t, labels = torch.randn(1, 4, 4, 8, 8), torch.tensor([500]), torch.tensor([1])
    shifted = LatteDiT(config).eval()
    shifted.load_state_dict({key: value + 1.0 for key, value in source.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(model.denoiser(x, t, labels), shifted(x, t, labels), atol=1e-5, rtol=1e-5)

    (tmp_path / "config.json").write_text(json.dumps({"model": {"num_heads": 4, "hidden_size": 768}}))
    with pytest.raises(ConfigError, match="hidden_size"):
        Latte.from_checkpoint(path, autoencoder="pixels:1")


def rearrange_back(linear_weight: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """The Linear (D, ph pw c) patch weight as the official Conv kernel (D, c, ph, pw)."""
    return linear_weight.reshape(linear_weight.shape[0], patch, patch, channels).permute(0, 3, 1, 2)


# --- trained frame conditioning (condition_frames) ------------------------------------------------------


class _RecordingDenoiser(torch.nn.Module):
    """Stands in for the DiT: remembers its input and predicts zero noise."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels, self.inputs = channels, []
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, labels=None, num_images=0):
        self.inputs.append(x.detach().clone())
        return torch.zeros(*x.shape[:2], self.channels, *x.shape[3:]) + self.weight


def test_frame_conditioned_training_gives_known_frames_clean_and_scores_only_the_others():
    model = _tiny_backend(condition_frames=2)
    assert model.denoiser.patch_embed.in_features == 2 * 2 * 13  # 12 latent channels + the mask
    model.denoiser = _RecordingDenoiser(12)
    latents = torch.randn(3, 4, 12, 8, 8)
    torch.manual_seed(5)
    loss = model.loss({"latents": latents})["loss"]
    torch.manual_seed(5)  # the loss's draws, in its order: steps, noise, known counts
    torch.randint(0, 1000, (3,))
    noise = torch.randn_like(latents)
    count = torch.randint(0, 3, (3,))
    seen = model.denoiser.inputs[0]  # (3, 4, 13, 8, 8)
    for i, k in enumerate(count.tolist()):
        torch.testing.assert_close(seen[i, :k, :12], latents[i, :k])
        assert (seen[i, :k, 12] == 1).all() and (seen[i, k:, 12] == 0).all()
    unknown = (torch.arange(4)[None] >= count[:, None]).float()[..., None, None, None]
    expected = (noise**2 * unknown).sum() / (unknown.sum() * 12 * 8 * 8)  # zero prediction: the noise itself
    torch.testing.assert_close(loss, expected)


def test_frame_conditioned_sampling_keeps_the_context_clean():
    model = _tiny_backend(condition_frames=2)
    recorder = _RecordingDenoiser(12)
    model.denoiser = recorder
    known = torch.randn(2, 2, 12, 8, 8)
    clip = model.sample_latents(known, 4, steps=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(clip[:, :2], known, atol=0, rtol=0)
    assert len(recorder.inputs) == 3
    for seen in recorder.inputs:
        torch.testing.assert_close(seen[:, :2, :12], known)  # clean at every step, not noised
        assert (seen[:, :2, 12] == 1).all() and (seen[:, 2:, 12] == 0).all()
    with pytest.raises(UsageError, match="up to 2 known frames"):
        model.sample_latents(torch.randn(2, 3, 12, 8, 8), 4)


def test_training_latents_are_drawn_from_a_cached_posterior():
    """With latents cached as mean and log-variance, every step draws z = mean + std * eps (over many
    draws: the stored mean and std); model.latent_posterior = "mean" keeps the mean."""
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(1, 4, 12, 4, 4, generator=generator)  # (B, F, c, h, w)
    logvar = torch.rand(1, 4, 12, 4, 4, generator=generator) * 4 - 3  # std from 0.22 to 1.65
    batch = {"latents": mean.expand(4000, -1, -1, -1, -1), "latent_logvar": logvar.expand(4000, -1, -1, -1, -1)}
    model = _tiny_backend()
    draws = model._training_latents(batch)
    std = torch.exp(0.5 * logvar[0])
    assert ((draws.mean(0) - mean[0]).abs() / std).max() < 0.1  # 4000 draws: standard error 0.016 std
    torch.testing.assert_close(draws.std(0), std, rtol=0.08, atol=0)
    assert not torch.equal(model._training_latents(batch)[0], draws[0])  # a fresh draw each step
    kept = _tiny_backend(latent_posterior="mean")._training_latents(batch)
    torch.testing.assert_close(kept, batch["latents"], atol=0, rtol=0)
    torch.testing.assert_close(model._training_latents({"latents": mean}), mean, atol=0, rtol=0)


def test_training_from_frames_draws_from_a_kl_autoencoders_posterior():
    from vpt.models.autoencoders.kl import KLVAE, KLVAEConfig

    torch.manual_seed(0)
    ae = KLVAE(
        KLVAEConfig(block_out_channels=[8, 8], layers_per_block=1, norm_num_groups=4, mid_block_add_attention=False)
    ).eval()
    frames = torch.rand(2, 4, 3, 16, 16) * 2 - 1  # (B, F, 3, H, W)
    with torch.no_grad():
        mean, logvar = ae.encode_posterior(frames)  # (2, 4, 4, 8, 8)
    sampled = Latte(LatteConfig(**TINY), autoencoder=ae)._training_latents({"video": frames})
    noise = (sampled - mean) / torch.exp(0.5 * logvar)  # the eps of z = mean + std * eps
    assert abs(noise.mean()) < 0.15 and abs(noise.std() - 1) < 0.1
    kept = Latte(LatteConfig(**TINY, latent_posterior="mean"), autoencoder=ae)._training_latents({"video": frames})
    torch.testing.assert_close(kept, mean, atol=0, rtol=0)


def test_vg_checkpoint_samples_through_a_preset(tmp_path, invoke, monkeypatch):
    """`vpt sample --checkpoint dit_ckpt.pth --release P` (or its alias --preset): the flat upstream state dict (the recorded tiny
    DiT) is built from the preset's config and generates; without a preset, or with one whose architecture
    it does not fit (the real vg-ucf config: Latte-B/2), the error is one line."""
    import json

    from vpt.models import latte as latte_module

    checkpoint = tmp_path / "dit_ckpt.pth"
    upstream = torch.load(fixture("latte", "ditv_tiny_state_dict.pt"))
    torch.save(upstream, checkpoint)
    preset = tmp_path / "vg_tiny.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "backend": "latte",
                "model": {**TINY, "sampler": "ddim", "steps": 2},
                "data": {"frames": 4, "image_size": 32},
                "eval": {"predicted_frames": 4, "fvd_preset": "stylegan-v"},
            }
        )
    )
    monkeypatch.setitem(latte_module.VG_PRESETS, "vg-tiny", str(preset))
    autoencoder = Path(__file__).parent / "fixtures" / "neuralsde" / "shapes_ae"  # kl-vae: 32x32 -> 4x8x8

    out = tmp_path / "generated.png"
    result = invoke(
        "sample",
        "--checkpoint",
        checkpoint,
        "--preset",
        "vg-tiny",
        "--ae",
        autoencoder,
        "--num-samples",
        2,
        "--device",
        "cpu",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert (record["backend"], record["context_frames"], record["frames"], record["image_size"]) == ("latte", 0, 4, 32)
    assert record["protocol"]["fvd_preset"] == "stylegan-v" and record["release"] == "vg-tiny"
    model = Latte.from_checkpoint(checkpoint, autoencoder=str(autoencoder), preset="vg-tiny")
    for key, value in convert_vg_state(upstream).items():
        torch.testing.assert_close(model.denoiser.state_dict()[key], value, atol=0, rtol=0)

    for extra, message in (
        ([], "names no architecture; pass --release vg-ucf or --release vg-mnist"),
        (["--release", "vg-ucf"], "does not fit the vg-ucf architecture (vg_ucf.yaml)"),
        (["--preset", "bair64"], "not a VideoGeneration-PyTorch release"),
    ):
        result = invoke("sample", "--checkpoint", checkpoint, "--ae", autoencoder, "--out", out, *extra)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


class _BayesDenoiser(torch.nn.Module):
    """The exact ε-predictor of a dataset of one clip per class: with class y it is (x_t - √ᾱ x0_y) / √(1-ᾱ);
    with the null class it predicts from the posterior mean of x0 over all clips (a softmax of their
    likelihoods). A trained denoiser tends to it, so it stands in for a fully trained Latte."""

    def __init__(self, clips: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.clips, self.alphas_cumprod = clips, alphas_cumprod  # (classes, F, c, h, w), (T,)

    def forward(self, x, t, labels, num_images=0):  # x (B, F, c, h, w)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        residual = x[:, None] - abar[:, None].sqrt() * self.clips[None]  # (B, classes, F, c, h, w)
        log_likelihood = -residual.flatten(2).pow(2).sum(-1) / (2 * (1 - abar.flatten()[:, None]))  # (B, classes)
        posterior = torch.softmax(log_likelihood, dim=1)
        is_null = labels >= len(self.clips)
        weights = torch.where(
            is_null[:, None],
            posterior,
            torch.nn.functional.one_hot(labels.clamp(max=len(self.clips) - 1), len(self.clips)).float(),
        )
        x0 = torch.einsum("bk,kfchw->bfchw", weights, self.clips)
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_captions_generate_their_motion_through_the_label_path(guidance_scale):
    """Direction accuracy of the whole label path without training: caption word -> class id -> the
    denoiser's label -> guidance against the null class -> DDIM -> decoded frames, scored as
    benchmarks/latte_classes.py scores a trained model (the shape's centroid, last frame minus first).
    With the exact denoiser of one "left" and one "right" clip, every one of 16 noise seeds must move the
    shape as asked in both clips of its pair; swapped class ids or a guidance sign error fail it."""
    from vpt.data.shapes import BACKGROUND, shape_centroid

    model = _tiny_backend(class_words=["left", "right"], steps=20)
    background = torch.tensor(BACKGROUND, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1
    video = background.expand(2, 4, 3, 16, 16).clone()  # (class, F, 3, 16, 16): "left" then "right"
    for frame in range(4):
        video[0, frame, :, 6:10, 10 - 2 * frame : 14 - 2 * frame] = 0.8  # from x = 10 to 4
        video[1, frame, :, 6:10, 2 + 2 * frame : 6 + 2 * frame] = 0.8  # from x = 2 to 8
    model.denoiser = _BayesDenoiser(model.encode(video), model._scheduler().alphas_cumprod)
    pairs = 0
    for seed in range(16):
        shifts = []
        for caption in ("the square moves left", "the square moves right"):
            clip = model.predict(
                torch.zeros(1, 0, 3, 16, 16),
                4,
                class_labels=caption,
                guidance_scale=guidance_scale,
                generator=torch.Generator().manual_seed(seed),
            )  # (1, 4, 3, 16, 16)
            centroids = shape_centroid(clip[0])  # (4, 2)
            shifts.append(centroids[-1, 0] - centroids[0, 0])
        pairs += shifts[0] < -4 and shifts[1] > 4
    assert pairs == 16
