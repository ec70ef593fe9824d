"""The `seer` backend surface on a toy pixel-space model: loss definition, trainable split, sampling with
classifier-free guidance, the upstream/train switches, text dropout, gradient checkpointing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vpt.config import validate
from vpt.errors import ConfigError, VptError
from vpt.models.registry import get_backend
from vpt.models.seer import Seer, SeerConfig
from vpt.models.seer.backend import FSTextSection, SamplerSection, TextSection, UNetSection


def toy_config(**overrides) -> SeerConfig:
    values = dict(
        vae="none",
        frames=3,
        context_frames=1,
        trainable="all",
        unet=UNetSection(block_out_channels=[32, 32, 64], layers_per_block=1, heads=2),
        fstext=FSTextSection(layers=1, heads=2, pos_frames=4),
        text=TextSection(hidden_size=32, layers=1, heads=2, max_length=10),
        sampler=SamplerSection(steps=3, guidance_scale=3.0),
    )
    values.update(overrides)
    return SeerConfig(**values)


def open_text_path(seer: Seer) -> Seer:
    """Random (not zero) output projections, as after training, so text and time reach the output."""
    torch.manual_seed(0)
    for name, param in seer.unet.named_parameters():
        if "proj_out" in name or "learnable_query" in name:
            torch.nn.init.normal_(param, std=0.2)
    torch.nn.init.normal_(seer.fstext.learnable_query, std=0.2)
    return seer


@pytest.fixture(scope="module")
def model() -> Seer:
    return open_text_path(Seer(toy_config())).eval()


def _batch(size: int = 2) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "video": torch.rand(size, 3, 3, 16, 16, generator=generator) * 2 - 1,
        "text": ["the red square moves left", "the blue circle moves right"][:size],
    }


def test_registered_and_takes_text():
    assert get_backend("seer") is Seer and Seer.takes_text


def test_loss_is_noise_mse_on_target_frames(model):
    batch = _batch()
    torch.manual_seed(5)
    loss = model.loss(batch)["loss"]
    # The same computation by hand, drawing the same random numbers in upstream's order and layout: the noise as
    # (B, C, F - R, H, W), then the timesteps.
    torch.manual_seed(5)
    target = batch["video"][:, 1:]
    noise = torch.randn(target.transpose(1, 2).shape).transpose(1, 2)
    t = torch.randint(0, 1000, (2,))
    alpha = model.train_noise.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    noisy = alpha.sqrt() * target + (1 - alpha).sqrt() * noise
    with torch.no_grad():
        context = model.fstext(model.clip_text(batch["text"]), 3)
        eps = model.unet(torch.cat([batch["video"][:, :1], noisy], 1), t, context, reference_frames=1)[:, 1:]
    assert loss.item() == pytest.approx(F.mse_loss(eps, noise).item(), rel=1e-5)


def test_upstream_trainable_split():
    temporal = Seer(toy_config(trainable="temporal"))
    names = {n for n, p in temporal.named_parameters() if p.requires_grad}
    assert all(".temporal_attentions." in n or n.startswith("fstext.") for n in names)
    assert not any("rotary" in n for n in names)
    temporal.train()
    temporal.loss(_batch())["loss"].backward()
    assert all(p.grad is None for n, p in temporal.named_parameters() if n not in names)
    assert all(p.grad is not None for n, p in temporal.named_parameters() if n in names)
    assert not temporal.text_encoder.training  # frozen parts stay in eval mode
    groups = temporal.param_groups()
    assert {id(p) for p in groups[0]["params"]} == {id(p) for n, p in temporal.named_parameters() if n in names}


def test_text_dropout_uses_the_null_branch():
    dropping = Seer(toy_config(cond_drop_prob=1.0)).eval()
    batch = _batch()
    torch.manual_seed(1)
    first = dropping.loss(batch)["loss"]
    torch.manual_seed(1)
    second = dropping.loss({**batch, "text": ["anything else", "at all"]})["loss"]
    assert first.item() == pytest.approx(second.item(), rel=1e-6)


def test_null_context_is_clip_of_empty_text_repeated(model):
    null = model.null_context(2, 3)
    clip = model.clip_text([""])
    assert null.shape == (2, 3, 10, 32)
    torch.testing.assert_close(
        null, clip[:, None].expand(2, 3, -1, -1), atol=1e-5, rtol=1e-5
    )  # batch of 2 vs 1: rounding only


def test_gradient_checkpointing_gives_the_same_gradients():
    plain, checkpointed = Seer(toy_config()), Seer(toy_config(gradient_checkpointing=True))
    for m in (plain, checkpointed):
        m.train()
        torch.manual_seed(3)
        m.loss(_batch())["loss"].backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_predict_shapes_determinism_and_prompts(model):
    context = _batch()["video"][:, :1]

    def run(prompt, **kw):
        return model.predict(context, 2, prompt=prompt, generator=torch.Generator().manual_seed(7), **kw)

    left = run(["moves left"] * 2)
    assert left.shape == (2, 2, 3, 16, 16) and left.min() >= -1 and left.max() <= 1
    assert torch.equal(left, run("moves left"))  # one prompt broadcasts to the batch
    assert not torch.allclose(left, run("moves right"))
    # Guidance 0 keeps only the unconditional branch: the prompt no longer matters.
    assert torch.allclose(run("moves left", guidance_scale=0.0), run("moves right", guidance_scale=0.0), atol=1e-6)


def test_predict_more_frames_than_a_window_continues_autoregressively(model, capsys):
    context = _batch()["video"][:1, :1]
    capsys.readouterr()
    one_window = model.predict(context, 2, prompt="x", generator=torch.Generator().manual_seed(1))
    assert "autoregressively" not in capsys.readouterr().err
    longer = model.predict(context, 5, prompt="x", generator=torch.Generator().manual_seed(1))
    assert "5 frames asked, one window predicts 2" in capsys.readouterr().err  # leaving the trained window is flagged
    assert longer.shape[1] == 5
    assert torch.allclose(longer[:, :2], one_window, atol=1e-6)


def test_sampler_switches_change_the_samples():
    context = _batch()["video"][:1, :1]
    outputs = []
    for sampler in (
        SamplerSection(steps=3),
        SamplerSection(steps=3, schedule="upstream"),
        SamplerSection(steps=3, reference_ff_skip=False),
    ):
        m = open_text_path(Seer(toy_config(sampler=sampler))).eval()
        outputs.append(m.predict(context, 2, prompt="x", generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[0], outputs[2])
    settings = Seer(toy_config(sampler=SamplerSection(steps=30))).sample_record()
    assert (settings["ddim_steps_requested"], settings["ddim_steps_run"]) == (30, 31)


def test_bad_inputs_are_clear_errors(model):
    with pytest.raises(VptError, match="no text"):
        model.loss({"video": _batch()["video"]})
    with pytest.raises(ConfigError, match="data.frames"):
        model.loss({"video": _batch()["video"][:, :2], "text": ["a", "b"]})
    with pytest.raises(VptError, match="20x20 latents do not fit"):
        model.predict(torch.zeros(1, 1, 3, 20, 20), 2, prompt="x")  # 20 -> 10 -> 5: no 4x4 windows at 10
    with pytest.raises(VptError, match="5 channels"):
        model.encode(torch.zeros(1, 3, 5, 16, 16))
    with pytest.raises(ConfigError, match="context_frames"):
        validate(SeerConfig, {"vae": "none", "frames": 3, "context_frames": 3}, source="test")
    with pytest.raises(ConfigError, match="needs model.pretrained"):
        Seer(SeerConfig())


def test_run_checkpoint_holds_everything_without_pretrained(model):
    """With random (not downloaded) frozen parts, the run's state dict must carry them too."""
    keys = set(model.state_dict())
    assert any(k.startswith("text_encoder.") for k in keys) and model.frozen_prefixes == ()
    clone = Seer(dataclasses.replace(toy_config(), init_seed=1))
    clone.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(
        clone.text_encoder.get_input_embeddings().weight, model.text_encoder.get_input_embeddings().weight
    )


@pytest.mark.parametrize(
    "name, frames, context", [("tiny", 8, 1), ("sthv2", 12, 2), ("bridge", 16, 1), ("epic", 16, 1)]
)
def test_shipped_configs_validate(name, frames, context):
    from pathlib import Path

    from vpt.commands.train import train_schema
    from vpt.config import load_config

    cfg = load_config(train_schema(Seer), Path(__file__).resolve().parents[1] / "configs" / "seer" / f"{name}.yaml")
    assert (cfg.backend, cfg.model.frames, cfg.model.context_frames, cfg.data.frames) == (
        "seer",
        frames,
        context,
        frames,
    )
    if name != "tiny":  # the paper's recipe: SD v1.5 frozen, SAWT + FSText trained, 256 px centre crops
        assert (cfg.model.trainable, cfg.model.vae, cfg.data.image_size, cfg.data.resize) == (
            "temporal",
            "pretrained",
            256,
            "crop",
        )
        assert (cfg.train.lr, cfg.train.warmup_steps, cfg.train.grad_clip) == (1.024e-4, 10000, 0.3)


def test_v_prediction_and_centred_pixels():
    """Options of the tiny config: v targets (sqrt(a) eps - sqrt(1 - a) x0) and pixel latents (x - shift) * scale."""
    model = open_text_path(Seer(toy_config(prediction_type="v_prediction", latent_shift=-0.5, latent_scale=2.0))).eval()
    batch = _batch()
    latents = model.encode(batch["video"])
    assert torch.allclose(latents, (batch["video"] + 0.5) * 2.0)
    assert torch.allclose(model.decode(latents), batch["video"], atol=1e-6)
    torch.manual_seed(5)
    loss = model.loss(batch)["loss"]
    torch.manual_seed(5)
    target = latents[:, 1:]
    noise = torch.randn(target.transpose(1, 2).shape).transpose(1, 2)  # upstream's layout and order
    t = torch.randint(0, 1000, (2,))
    alpha = model.train_noise.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    noisy = alpha.sqrt() * target + (1 - alpha).sqrt() * noise
    with torch.no_grad():
        context = model.fstext(model.clip_text(batch["text"]), 3)
        v = model.unet(torch.cat([latents[:, :1], noisy], 1), t, context, reference_frames=1)[:, 1:]
    velocity = alpha.sqrt() * noise - (1 - alpha).sqrt() * target
    assert loss.item() == pytest.approx(F.mse_loss(v, velocity).item(), rel=1e-5)
    out = model.predict(batch["video"][:, :1], 2, prompt="x", generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 2, 3, 16, 16) and torch.isfinite(out).all()


def test_text_loss_is_fstext_initialisation_objective():
    model = Seer(toy_config(text_loss=True, cond_drop_prob=0.5)).eval()
    batch = _batch()
    torch.manual_seed(2)
    losses = model.loss(batch)
    with torch.no_grad():
        clip = model.clip_text(batch["text"])
        expected = F.mse_loss(model.fstext(clip, 3).mean(1), clip)  # before text dropout replaces any row
    assert losses["text_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((losses["mse"] + losses["text_loss"]).item(), rel=1e-6)
