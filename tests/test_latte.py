"""Latte parity with the VideoGeneration-PyTorch fixtures (tests/fixtures/latte/README.md) and the
backend's sampling maths on a tiny model."""

from __future__ import annotations

import pytest
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
from vpt.models.river import PixelAutoencoder

ATOL, RTOL = 1e-5, 1e-4
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


@pytest.mark.parametrize("name", ["keys_vg_ditv_mnist.txt", "keys_vg_ditv_ucf.txt"])
def test_released_vg_keys_convert_onto_latte_b2(name):
    # the released configs: 12 layers, 768 wide, 12 x 64 heads, patch 2, 256-wide time features = Latte-B/2
    with torch.device("meta"):
        model = LatteDiT(LatteConfig(size="B/2"))
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    converted = convert_vg_state({key: torch.empty(shape, device="meta") for key, shape in _key_shapes(name).items()})
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected
    assert sum(torch.Size(s).numel() for s in expected.values()) == 129_534_736


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
