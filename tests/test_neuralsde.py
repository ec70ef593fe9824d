"""NeuralSDE parity with upstream recordings (tests/fixtures/neuralsde/README.md) and its sampler maths."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from fixture_paths import fixture, key_shapes
from safetensors.torch import load_file

from vpt.errors import ConfigError, UsageError
from vpt.models.neuralsde import (
    NeuralSDE,
    NeuralSDEConfig,
    WindowSDE,
    config_from_state,
    convert_upstream_state,
)
from vpt.models.river import River, count_parameters
from vpt.models.uvit import convert_upstream_regressor

CONFIGS = Path(__file__).parents[1] / "configs" / "neuralsde"
ATOL = 1e-5
TINY = {"latent_channels": 4, "inner_dim": 64, "depth": 2, "mid_depth": 1, "heads": 8}


def _load(name: str):
    return torch.load(fixture("neuralsde", name), weights_only=False)


def _weights(net: str) -> dict[str, torch.Tensor]:
    return convert_upstream_regressor(load_file(fixture("neuralsde", f"{net}_tiny.weights.safetensors")))


def _autoencoder():
    from vpt.models.autoencoders import autoencoder_from_upstream_state

    return autoencoder_from_upstream_state(load_file(fixture("river", "ldmvq_tiny.weights.safetensors")))


def _tiny(stage: str, *, autoencoder=None, with_denoiser: bool = True) -> NeuralSDE:
    """A tiny model of `stage` with the fixture weights (a g model gets f_tiny and d_tiny frozen)."""
    if stage == "g":
        cfg = NeuralSDEConfig(stage="g", f_run="fixture", d_run="fixture" if with_denoiser else None, **TINY)
        model = NeuralSDE(
            cfg, autoencoder=autoencoder, frozen_weights={"drift": _weights("f"), "denoiser": _weights("d")}
        )
    else:
        model = NeuralSDE(NeuralSDEConfig(stage=stage, **TINY), autoencoder=autoencoder)
    model.net.load_state_dict(_weights(stage))
    return model.eval()


def test_fixtures_are_present():
    """Parity must not pass by skipping: every recording this file reads is in the repository."""
    for name in (
        "f_tiny.weights.safetensors",
        "d_tiny.weights.safetensors",
        "g_tiny.weights.safetensors",
        "vfr_tiny.inputs.pt",
        "sde_terms_tiny.outputs.pt",
        "train_forward_tiny.outputs.pt",
        "sampler_tiny.outputs.pt",
        "fullsize_keys_kth_g-01-nll.txt",
    ):
        assert (fixture("neuralsde", name)).is_file(), f"missing fixture {name}"
    assert (fixture("river", "ldmvq_tiny.weights.safetensors")).is_file()


@pytest.mark.parametrize(
    "stage, key, params", [("f", "f_output", 323_844), ("d", "d_output", 330_768), ("g", "g_raw_output", 323_844)]
)
def test_networks_match_upstream(stage, key, params):
    model = _tiny(stage)
    state = _load("vfr_tiny.inputs.pt")["input_latents"]
    with torch.no_grad():
        output = model.net(state)
    assert count_parameters(model.net) == params
    torch.testing.assert_close(output, _load("vfr_tiny.outputs.pt")[key], atol=ATOL, rtol=0)


@pytest.mark.parametrize("networks", ["f_d_g", "f_only"])
def test_sde_terms_match_upstream(networks):
    inputs, expected = _load("sde_terms_tiny.inputs.pt"), _load("sde_terms_tiny.outputs.pt")
    window = inputs["latent_history"][:, -4:]
    full = networks == "f_d_g"
    g = _tiny("g")
    sde = WindowSDE(
        window[:, 1:] - window[:, :-1],
        drift=g.drift,
        denoiser=g.denoiser if full else None,
        diffusion=g.net if full else None,
        denoiser_weight=1.0,
        logit_range=[-9.0, 1.0],
    )
    t = torch.tensor(inputs["t"])
    torch.testing.assert_close(sde.f(t, inputs["state_flat"]), expected[f"drift_{networks}"], atol=ATOL, rtol=0)
    torch.testing.assert_close(sde.g(t, inputs["state_flat"]), expected[f"diffusion_{networks}"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("run_name, stage", [("f_nll", "f"), ("d", "d"), ("g", "g")])
def test_training_forward_matches_upstream(run_name, stage):
    """Same draws in the same order from the global generator, same targets, same losses."""
    recorded = _load("train_forward_tiny.outputs.pt")
    run = recorded["runs"][run_name]
    batch = {"video": _load("train_forward_tiny.inputs.pt")["observations"]}
    model = _tiny(stage, autoencoder=_autoencoder())

    torch.manual_seed(recorded["torch_seed"])
    torch.testing.assert_close(torch.randint(4, 7, (2,)), run["target_frame_indices"])
    torch.testing.assert_close(torch.rand(2, 1, 1, 1), run["timestamps"])

    torch.manual_seed(recorded["torch_seed"])
    start, end, noisy, noise = model._training_state(batch)
    torch.testing.assert_close(noise, 0.1 * run["standard_normal_noise"], atol=1e-7, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.net(noisy), run["reconstructed_vectors"], atol=ATOL, rtol=0)
        velocity = (end - (1 - 1e-7) * start)[:, -4:]
        target = {"f": velocity, "d": -noise, "g": (velocity - model.drift(noisy) if stage == "g" else 0) ** 2}[stage]
    # g's target is a squared residual of size ~1-4: float32 rounding of the velocity shows up relatively
    torch.testing.assert_close(target, run["target_vectors"], atol=ATOL, rtol=1e-5)

    torch.manual_seed(recorded["torch_seed"])
    with torch.no_grad():
        losses = model.loss(batch)
    torch.testing.assert_close(losses["loss"], run["optimized_loss"], atol=ATOL, rtol=0)
    torch.testing.assert_close(losses["mse"], run["logged_flow_matching_loss"], atol=ATOL, rtol=0)


def test_f_mse_variant_is_the_plain_mse():
    batch = {"video": _load("train_forward_tiny.inputs.pt")["observations"]}
    model = _tiny("f", autoencoder=_autoencoder())
    model.cfg.drift_loss = "mse"
    torch.manual_seed(0)
    with torch.no_grad():
        losses = model.loss(batch)
    expected = _load("train_forward_tiny.outputs.pt")["runs"]["f_nll"]["logged_flow_matching_loss"]
    torch.testing.assert_close(losses["loss"], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("run_name, stage", [("f_nll", "f"), ("g", "g")])
def test_adaptive_sampler_matches_upstream(run_name, stage):
    """torchsde's step-doubling solver on the recorded Brownian seeds: same latents, same evaluations."""
    pytest.importorskip("torchsde", reason="the adaptive sampler is the optional `sde` extra")
    recorded = _load("sampler_tiny.outputs.pt")
    run = recorded["runs"][run_name]
    model = _tiny(stage, autoencoder=_autoencoder())
    observations = _load("sampler_tiny.inputs.pt")["observations"]
    context = model.encode(observations)
    torch.testing.assert_close(context, recorded["context_latents"], atol=ATOL, rtol=0)

    latents = model.rollout(
        recorded["context_latents"], 2, sampler="adaptive", entropies=run["brownian_entropy_per_frame"]
    )
    torch.testing.assert_close(latents, run["latents_before_decode"][:, 4:], atol=ATOL, rtol=0)
    assert model.sampling_stats["drift_evaluations_per_frame"] == run["drift_evaluations_total"] / 2
    # vpt clamps decoded frames to [-1, 1]; upstream hands the decoder output back as it is
    torch.testing.assert_close(model.decode(latents), run["output"][:, 4:].clamp(-1, 1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dataset", ["kth", "clevrer"])
@pytest.mark.parametrize("stage, upstream_name", [("f", "f-01-nll"), ("d", "d-01"), ("g", "g-01-nll")])
def test_fullsize_key_lists_convert_onto_published_configs(dataset, stage, upstream_name):
    """Every network key of an upstream run's state dict (DDP-prefixed here) lands on a parameter of the
    same shape in the model our published config builds, and the sizes read off the weights are ours."""
    upstream = key_shapes("neuralsde", f"fullsize_keys_{dataset}_{upstream_name}.txt")
    fake = {f"module.{k}": torch.empty(shape, device="meta") for k, shape in upstream.items()}
    parts = convert_upstream_state(fake)
    network_keys = [k for k in upstream if not k.startswith("ae.")]
    assert sum(len(p) for p in parts.values()) == len(network_keys)

    published = yaml.safe_load((CONFIGS / f"{dataset}_{stage}.yaml").read_text())["model"]
    cfg = NeuralSDEConfig(**{k: v for k, v in published.items() if k != "autoencoder"})
    # a lone denoiser's c is its autoencoder's (here the published config's)
    read_off = config_from_state(parts["net"], **({"latent_channels": cfg.latent_channels} if stage == "d" else {}))
    assert read_off.pop("stage") == ("d" if stage == "d" else "f")
    assert read_off == {k: getattr(cfg, k) for k in read_off}
    with torch.device("meta"):
        model = NeuralSDE(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "frozen_loaded"}
    theirs = {f"{part}.{k}": tuple(v.shape) for part, state in parts.items() for k, v in state.items()}
    assert ours == theirs
    assert count_parameters(model.net) == (98_170_896 if stage == "d" else 98_087_940)


# --- sampling maths ------------------------------------------------------------------------------------


class _Constant(torch.nn.Module):
    """A stand-in network with a known output: `value` on every element of `channels` channels."""

    def __init__(self, value: float, channels: int = 4):
        super().__init__()
        self.value, self.channels = value, channels

    def forward(self, state):
        return torch.full((state.shape[0], self.channels, *state.shape[2:]), self.value)


def _pixel_model(stage: str = "f", **overrides) -> NeuralSDE:
    cfg = {**TINY, "stage": stage, "autoencoder": "pixels", "latent_channels": 3, **overrides}
    return NeuralSDE(NeuralSDEConfig(**cfg)).eval()


@pytest.mark.parametrize("sampler", ["euler", "adaptive"])
def test_upsampled_frames_lie_between_their_neighbours(sampler):
    """With a known linear drift, the U in-between frames walk from one frame to the next."""
    if sampler == "adaptive":
        pytest.importorskip("torchsde")
    model = _pixel_model()
    model.net = _Constant(0.1, channels=3)
    context = torch.zeros(2, 4, 3, 4, 4) - 0.5
    frames = model.predict(context, 3, sampler=sampler, steps=2, upsample=4, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (2, 12, 3, 4, 4)
    expected = -0.5 + 0.1 * torch.arange(1, 13) / 4  # velocity 0.1 per frame, 4 states per frame
    torch.testing.assert_close(frames[0, :, 0, 0, 0], expected, atol=1e-6, rtol=0)
    assert model.sampling_stats["upsample"] == 4


def test_euler_maruyama_noise_has_the_diffusion_variance():
    """Constant drift c and diffusion σ: one frame is z + c + σ W(1), whatever the number of steps."""
    model = _pixel_model("g", f_run="stand-in")
    model.drift, model.net = _Constant(0.2, channels=3), _Constant(0.3, channels=3)
    model.frozen_loaded.fill_(True)
    sigma = math.exp((math.tanh(0.3) + 1) * 0.5 * 10 - 9)  # log_std over the range [-9, 1]
    context = torch.zeros(1, 4, 3, 32, 32)
    latents = model.rollout(context, 1, steps=5, generator=torch.Generator().manual_seed(0))
    increment = latents[0, 0].flatten()  # 3072 draws of W(1) scaled by σ, shifted by c
    assert increment.mean().item() == pytest.approx(0.2, abs=4 * sigma / 3072**0.5)
    assert increment.std().item() == pytest.approx(sigma, rel=0.06)
    assert model.sampling_stats["drift_evaluations_per_frame"] == 5


def test_sampling_is_seeded_by_the_generator():
    g = _tiny("g")
    context = _load("sampler_tiny.outputs.pt")["context_latents"]
    first, again, other = (
        g.rollout(context, 1, steps=2, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)
    )
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert (first - other).abs().max() > 1e-4
    drift_only = g.rollout(context, 1, steps=2, diffusion=False, denoiser_weight=0.0)
    torch.testing.assert_close(drift_only, _tiny("f").rollout(context, 1, steps=2), atol=0, rtol=0)


def test_short_context_and_denoiser_only_models_sample():
    """Upstream fails for fewer than 4 context frames and for a denoiser-only model; both work here."""
    model = _pixel_model("d")
    frames = model.predict(torch.zeros(1, 1, 3, 8, 8), 2, steps=2, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (1, 2, 3, 8, 8) and torch.isfinite(frames).all()


def test_stage_g_needs_a_finished_drift(tmp_path):
    with pytest.raises(ValueError, match="train stage f first"):
        NeuralSDEConfig(stage="g")
    model = NeuralSDE(NeuralSDEConfig(stage="g", f_run=str(tmp_path / "f"), autoencoder="pixels", **TINY))
    with pytest.raises(UsageError, match=r"no finished checkpoint; train the drift first: vpt train neuralsde"):
        model.loss({"video": torch.zeros(1, 5, 3, 8, 8)})
    with pytest.raises(ConfigError, match="more than model.window=4 frames"):
        _pixel_model().loss({"video": torch.zeros(1, 4, 3, 8, 8)})


def test_adaptive_sampler_without_torchsde_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchsde(name, *args, **kwargs):
        if name == "torchsde":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchsde)
    with pytest.raises(UsageError, match="pip install torchsde"):
        _pixel_model().predict(torch.zeros(1, 4, 3, 8, 8), 1, sampler="adaptive")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_configs_load(path):
    """Every shipped config passes the `vpt train neuralsde` schema; stage g names its f (and d) run."""
    from vpt.commands.train import train_schema
    from vpt.config import load_config

    cfg = load_config(train_schema(NeuralSDE), path, [])
    assert cfg.model.stage == path.stem.rsplit("_", 1)[1]
    assert (cfg.model.f_run is not None) == (cfg.model.stage == "g")
    assert cfg.data.frames > cfg.model.window


def test_sample_and_eval_commands_on_a_run(tmp_path, invoke):
    """`vpt sample --run` on a NeuralSDE run: U x the predicted frames at U x the frame rate, and the
    `.json` records the upsampling factor and the drift evaluations per frame; `vpt eval-fvd --run` uses
    the run's evaluation protocol."""
    import json

    from data_helpers import shapes_h5

    data = shapes_h5(tmp_path, num_videos=10, frames=6, size=16)
    (tmp_path / "f.yaml").write_text(
        "backend: neuralsde\nmodel: {stage: f, autoencoder: 'pixels:4', latent_channels: 48, inner_dim: 32, depth: 1,"
        " mid_depth: 1, heads: 4}\ndata: {frames: 6}\ntrain: {max_steps: 2, batch_size: 2}\n"
    )
    assert (
        invoke("train", "neuralsde", "--config", tmp_path / "f.yaml", "--data", data, "--run", tmp_path / "f").exit_code
        == 0
    )
    out = tmp_path / "prediction.mp4"
    result = invoke(
        "sample",
        "--run",
        tmp_path / "f",
        "--data",
        data,
        "--frames",
        2,
        "--steps",
        3,
        "--option",
        "upsample=4",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_name(out.name + ".json").read_text())
    assert record["upsample"] == 4 and record["fps"] == 16.0
    assert record["sampler"]["drift_evaluations_per_frame"] == 3

    from vpt.data.video import read_video

    assert len(read_video(out)) == (4 + 2) * 4  # 4 context frames shown 4 times each, 2 x 4 predicted

    # eval-fvd --run follows the run's protocol: model.context_frames in, the rest of data.frames out
    metrics = tmp_path / "metrics.json"
    result = invoke("eval-fvd", "--run", tmp_path / "f", "--data", data, "--no-fvd", "--out", metrics)
    assert result.exit_code == 0, result.output
    protocol = json.loads(metrics.read_text())["protocol"]
    assert (protocol["context_frames"], protocol["predicted_frames"]) == (4, 2)


def test_upstream_g_checkpoint_with_ddp_prefix_loads_and_samples(tmp_path):
    """An upstream-layout g checkpoint (`module.`-prefixed, as DDP saves it; upstream itself would load
    nothing from it) is recognised, carries its frozen f and d, and reproduces the recorded rollout."""
    pytest.importorskip("torchsde")
    state = {
        f"vector_field_regressor.{k}": v
        for k, v in load_file(fixture("neuralsde", "g_tiny.weights.safetensors")).items()
    }
    for prefix, net in (("f.", "f"), ("d.", "d")):
        state.update(
            {
                f"{prefix}vector_field_regressor.{k}": v
                for k, v in load_file(fixture("neuralsde", f"{net}_tiny.weights.safetensors")).items()
            }
        )
    state.update({f"ae.{k}": v for k, v in load_file(fixture("river", "ldmvq_tiny.weights.safetensors")).items()})
    path = tmp_path / "final_step_300000.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "global_step": 300000}, path)

    assert NeuralSDE.recognizes_checkpoint(path) and not River.recognizes_checkpoint(path)
    river_like = {
        **state,
        "vector_field_regressor.project_in.1.weight": state["vector_field_regressor.project_in.1.weight"][:, :12],
    }
    torch.save({"model": river_like}, tmp_path / "river.pth")
    assert River.recognizes_checkpoint(tmp_path / "river.pth") and not NeuralSDE.recognizes_checkpoint(
        tmp_path / "river.pth"
    )
    model = NeuralSDE.from_checkpoint(path)
    assert model.cfg.stage == "g" and model.denoiser is not None
    recorded = _load("sampler_tiny.outputs.pt")
    run = recorded["runs"]["g"]
    latents = model.rollout(
        recorded["context_latents"], 2, sampler="adaptive", entropies=run["brownian_entropy_per_frame"]
    )
    torch.testing.assert_close(latents, run["latents_before_decode"][:, 4:], atol=ATOL, rtol=0)


def test_only_used_parameters_train():
    """The unused distance MLP (kept for upstream's state-dict layout) and a g run's frozen f and d get
    no optimiser slot: unused trainable parameters would stall DDP."""
    model = _tiny("g")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("net.") and ".distance_embed." not in name for name in trainable)
    batch = {"latents": torch.randn(2, 6, 4, 16, 16)}
    model.train().loss(batch)["loss"].backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if p.requires_grad)


# --- sampler at the published settings, window 3 (tests/fixtures/neuralsde/README.md) ---------------------

PUBLISHED_TINY = dict(latent_channels=3, window=3, inner_dim=32, depth=1, mid_depth=1, heads=8, out_norm="bn")


def _published_tiny(stage: str) -> NeuralSDE:
    """The window-3 networks of sampler_published.*: a g model carries f and d frozen; an f model is f."""
    weights = {
        net: convert_upstream_regressor(load_file(fixture("neuralsde", f"sampler_published.{net}.weights.safetensors")))
        for net in "fdg"
    }
    if stage == "g":
        cfg = NeuralSDEConfig(stage="g", f_run="fixture", d_run="fixture", **PUBLISHED_TINY)
        model = NeuralSDE(cfg, frozen_weights={"drift": weights["f"], "denoiser": weights["d"]})
    else:
        model = NeuralSDE(NeuralSDEConfig(stage="f", **PUBLISHED_TINY))
    model.net.load_state_dict(weights[stage])
    return model.eval()


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).norm() / theirs.norm()).item()


@pytest.mark.parametrize("stage", ["g", "f"])
def test_adaptive_sampler_matches_upstream_generate_frames(stage):
    """Upstream's only sampler (torchsde adaptive step doubling, atol 1e-2, rtol 1e-10, dt 1, dt_min 1e-10,
    the values of configs/neuralsde/*) against upstream `generate_frames`, with its per-frame Brownian seeds."""
    recorded = load_file(fixture("neuralsde", "sampler_published.safetensors"))
    run = "adaptive_g" if stage == "g" else "adaptive_f_nll"
    model = _published_tiny(stage)
    latents = model.rollout(
        recorded["context_latents"], 3, sampler="adaptive", entropies=recorded[f"{run}.entropies"].tolist()
    )
    difference = _relative(latents, recorded[f"{run}.predicted"])
    assert difference <= 1e-5, difference


def test_euler_maruyama_matches_torchsde_euler_on_upstream_terms():
    """vpt's fixed-step sampler (10 steps per frame) against torchsde's Euler on upstream's SDE terms, with
    the Brownian increments ε √h made from the noise vpt draws (recorded, and checked to be the same draws)."""
    recorded = load_file(fixture("neuralsde", "sampler_published.safetensors"))
    seed = int(recorded["euler_g.seed"])
    noise = recorded["euler_g.noise"]  # (frames, steps, B, D)
    generator = torch.Generator().manual_seed(seed)
    torch.testing.assert_close(torch.randn(noise.shape[2:], generator=generator), noise[0, 0], atol=0, rtol=0)

    latents = _published_tiny("g").rollout(
        recorded["context_latents"], 3, sampler="euler", steps=10, generator=torch.Generator().manual_seed(seed)
    )
    difference = _relative(latents, recorded["euler_g.predicted"])
    assert difference <= 1e-5, difference
