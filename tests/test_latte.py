"""Latte parity with the VideoGeneration-PyTorch fixtures (tests/fixtures/latte/README.md) and the
backend's sampling maths on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
import torch
from fixture_paths import fixture

from vpt.models.latte import (
    LATTE_SIZES,
    Latte,
    LatteConfig,
    LatteDiT,
    convert_vg_state,
    patch_position_table,
    timestep_features,
)
from vpt.errors import ConfigError, UsageError
from vpt.models.river import PixelAutoencoder

ATOL, RTOL = 1e-5, 1e-4
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "latte"
TINY = dict(latent_channels=4, num_frames=4, patch_size=2, num_layers=4, hidden_size=32, num_heads=2, head_dim=12,
            timestep_emb_dim=16)


def _tiny_dit() -> LatteDiT:
    model = LatteDiT(LatteConfig(**TINY))
    model.load_state_dict(convert_vg_state(torch.load(fixture("latte", "ditv_tiny_state_dict.pt"))))
    return model.eval()


def test_embeddings_match_upstream():
    io = torch.load(fixture("latte", "embeddings_io.pt"))
    inputs, outputs = io["inputs"], io["outputs"]
    torch.testing.assert_close(timestep_features(inputs["t"], inputs["temb_dim"]), outputs["timestep_embedding"],
                               atol=ATOL, rtol=RTOL)
    rows, cols = inputs["grid_size"]
    torch.testing.assert_close(patch_position_table(inputs["pos_emb_dim"], rows, cols), outputs["patch_pos_embedding"],
                               atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(timestep_features(inputs["frame_positions"], inputs["frame_emb_dim"]),
                               outputs["frame_embedding"], atol=ATOL, rtol=RTOL)


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


def _key_shapes(name: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in fixture("latte", name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        shapes[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return shapes


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
    upstream = _key_shapes(f"keys_vg_ditv_{dataset}.txt")
    converted = convert_vg_state({key: torch.empty(shape, device="meta") for key, shape in upstream.items()})
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    assert sum(torch.Size(s).numel() for s in expected.values()) == 129_534_736
    assert (cfg.eval.fvd_preset, cfg.eval.clips, cfg.eval.predicted_frames) == ("stylegan-v", 2048, 16)


def test_shapes_config_is_a_small_class_conditional_model():
    from vpt.commands.train import train_schema
    from vpt.config import validate

    path = CONFIGS / "shapes.yaml"
    cfg = validate(train_schema(Latte), yaml.safe_load(path.read_text()), source=str(path))
    assert cfg.model.num_classes == 5 and cfg.data.frames == cfg.model.num_frames
    assert sum(p.numel() for p in LatteDiT(cfg.model).parameters()) == 317_904


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
    torch.testing.assert_close(scheduler.add_noise(inputs["x0"], inputs["noise"], inputs["t"]), outputs["add_noise"],
                               atol=ATOL, rtol=RTOL)
    scheduler.set_timesteps(1000)
    step = scheduler.step(inputs["pred_noise"], 500, inputs["xt_single"], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(step.prev_sample, outputs["prev_t500"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(step.pred_original_sample.clamp(-1, 1), outputs["x0_t500"], atol=ATOL, rtol=RTOL)
    last = scheduler.step(inputs["pred_noise"], 0, inputs["xt_single"])
    torch.testing.assert_close(last.prev_sample, outputs["prev_t0"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(last.pred_original_sample.clamp(-1, 1), outputs["x0_t0"], atol=ATOL, rtol=RTOL)


# --- the backend's sampling on a tiny model (pixel "latents", random weights) -----------------------


def _tiny_backend(**overrides) -> Latte:
    cfg = LatteConfig(**{**TINY, "latent_channels": 12, "hidden_size": 32, "num_frames": 4, "sampler": "ddim",
                         "steps": 3, **overrides})
    model = Latte(cfg, autoencoder=PixelAutoencoder(2))  # frames (3, 16, 16) <-> latents (12, 8, 8)
    torch.manual_seed(0)
    for layer in [block.modulation for block in model.denoiser.blocks] + [model.denoiser.final.modulation,
                                                                          model.denoiser.final.linear]:
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
    runs = {label: model.predict(torch.zeros(1, 0, 3, 16, 16), 2, class_labels=label, guidance_scale=3.0,
                                 generator=torch.Generator().manual_seed(0)) for label in (0, 2, None)}
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


def test_classes_come_from_caption_words():
    model = _tiny_backend(class_words=["left", "right", "up", "down", "falls"], class_dropout=0.0)
    assert model.cfg.num_classes == 5
    captions = ["the red square moves up", "the blue circle falls", "the green triangle moves left"]
    labels = model._training_labels({"text": captions}, 3, torch.device("cpu"))
    assert labels.tolist() == [2, 4, 0]
    assert model._sampling_labels("down", 2, torch.device("cpu")).tolist() == [3, 3]
    with pytest.raises(ConfigError, match="names none"):
        model.class_of_caption("a shape that stays")


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
    x0, xt, eps = torch.rand(2, 3, 4, 5).double() * 2 - 1, torch.randn(2, 3, 4, 5).double(), torch.randn(2, 3, 4, 5).double()
    v = torch.rand(2, 3, 4, 5).double() * 2 - 1
    t = torch.tensor([400, 0])
    got = variance_vlb(abar, x0, xt, t, eps, v)

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
        clip = model.predict(torch.zeros(2, 0, 3, 16, 16), 4, sampler=sampler, class_labels=[0, 1], guidance_scale=4.0,
                             generator=torch.Generator().manual_seed(0))
        assert clip.shape == (2, 4, 3, 16, 16) and torch.isfinite(clip).all()
