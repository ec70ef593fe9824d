"""Configs read off weights files: what the shapes determine comes from them, what they cannot (heads,
a lone denoiser's window) from the release, a config.json beside the weights or the autoencoder, and
an ambiguity is a one-line ConfigError naming the setting, never a silently wrong config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from fixture_paths import fixture

from vpt.errors import ConfigError, UsageError
from vpt.models.neuralsde import NeuralSDE, NeuralSDEConfig, config_from_state
from vpt.models.pvdm import PVDM
from vpt.models.uvit import convert_upstream_regressor

# vpt regressor names -> upstream's (the inverse of the converter's renames, "ln" heads)
_TO_UPSTREAM = [
    (r"^pos_embed\.row\.", "position_encoding.row_embed."),
    (r"^pos_embed\.col\.", "position_encoding.col_embed."),
    (r"^token_proj\.", "project_in.1."),
    (r"^distance_embed\.", "time_projection."),
    (r"^out_blocks\.(\d+)\.skip_proj\.", r"out_blocks.\1.0."),
    (r"^out_blocks\.(\d+)\.layer\.", r"out_blocks.\1.1."),
    (r"\.attn\.qkv\.weight$", ".self_attn.in_proj_weight"),
    (r"\.attn\.qkv\.bias$", ".self_attn.in_proj_bias"),
    (r"\.attn\.proj\.", ".self_attn.out_proj."),
    (r"\.fc1\.", ".linear1."),
    (r"\.fc2\.", ".linear2."),
    (r"^head\.proj\.", "project_out.0."),
    (r"^head\.norm\.", "project_out.2."),
    (r"^head\.conv\.", "project_out.4."),
]


def _upstream_file(
    tmp_path: Path, stage: str, channels: int, window: int, heads: int = 4, name: str = "model.pth"
) -> Path:
    """A NeuralSDE f or d network of `window` latents of `channels` channels, saved as upstream does."""
    torch.manual_seed(0)
    cfg = NeuralSDEConfig(
        stage=stage, latent_channels=channels, window=window, inner_dim=32, depth=1, mid_depth=1, heads=heads
    )
    net = NeuralSDE(cfg).net.state_dict()
    upstream = {}
    for key, value in net.items():
        for pattern, replacement in _TO_UPSTREAM:
            key = re.sub(pattern, replacement, key)
        upstream[key] = value
    assert convert_upstream_regressor(upstream).keys() == net.keys()  # the inverse is right
    path = tmp_path / name
    torch.save({"model": {f"vector_field_regressor.{k}": v for k, v in upstream.items()}}, path)
    return path


def test_window3_denoiser_takes_its_channels_from_the_autoencoder(tmp_path):
    """9 channels in and out: 3 latents of 3 channels with a 3-channel autoencoder (pixels:1), not 2 x 4."""
    path = _upstream_file(tmp_path, "d", channels=3, window=3)
    assert NeuralSDE.recognizes_checkpoint(path)
    model = NeuralSDE.from_checkpoint(path, autoencoder="pixels:1")
    assert (model.cfg.stage, model.cfg.latent_channels, model.cfg.window) == ("d", 3, 3)


def test_window3_denoiser_without_autoencoder_or_config_is_one_line(tmp_path):
    path = _upstream_file(tmp_path, "d", channels=3, window=3)
    with pytest.raises(UsageError, match="--ae"):  # no ae.* in the file either
        NeuralSDE.from_checkpoint(path)
    from vpt.models.neuralsde import convert_upstream_state
    from vpt.models.uvit import load_upstream_state

    net = convert_upstream_state(load_upstream_state(path))["net"]
    with pytest.raises(ConfigError, match=r"model\.window") as error:
        config_from_state(net)
    assert "\n" not in str(error.value)
    assert config_from_state(net, window=3)["latent_channels"] == 3
    assert config_from_state(net, latent_channels=3)["window"] == 3
    with pytest.raises(ConfigError, match="window"):
        config_from_state(net, latent_channels=3, window=4)


def test_config_json_beside_the_weights_names_what_they_cannot(tmp_path):
    path = _upstream_file(tmp_path, "d", channels=3, window=3)
    (tmp_path / "config.json").write_text(json.dumps({"model": {"window": 3, "heads": 2}}))
    model = NeuralSDE.from_checkpoint(path, autoencoder="pixels:1")
    assert (model.cfg.latent_channels, model.cfg.window, model.cfg.heads) == (3, 3, 2)
    (tmp_path / "config.json").write_text(json.dumps({"model": {"window": 4}}))  # 9 channels are no 4 latents
    with pytest.raises(ConfigError, match="window"):
        NeuralSDE.from_checkpoint(path, autoencoder="pixels:1")
    (tmp_path / "config.json").write_text(json.dumps({"model": {"window": 3, "inner_dim": 64}}))  # weights: 32
    with pytest.raises(ConfigError, match="inner_dim"):
        NeuralSDE.from_checkpoint(path, autoencoder="pixels:1")


def test_drift_of_another_window_and_heads(tmp_path):
    """An f network reads W c and emits c: both are in its shapes (window 5 of 2 channels here);
    its heads come from a config.json, else upstream's 8, and must divide the width."""
    path = _upstream_file(tmp_path, "f", channels=2, window=5, heads=4)
    assert NeuralSDE.recognizes_checkpoint(path)
    (tmp_path / "config.json").write_text(json.dumps({"heads": 4}))
    model = NeuralSDE.from_checkpoint(path, autoencoder="pixels:1")
    assert (model.cfg.stage, model.cfg.latent_channels, model.cfg.window, model.cfg.heads) == ("f", 2, 5, 4)
    (tmp_path / "config.json").write_text(json.dumps({"heads": 5}))
    with pytest.raises(ConfigError, match=r"model\.heads"):
        NeuralSDE.from_checkpoint(path, autoencoder="pixels:1")
    (tmp_path / "config.json").unlink()
    assert NeuralSDE.from_checkpoint(path, autoencoder="pixels:1").cfg.heads == 8


# --- PVDM ------------------------------------------------------------------------------------------


@pytest.fixture()
def tiny_ae_release(tmp_path) -> Path:
    path = tmp_path / "ae" / "model_last.pth"
    path.parent.mkdir()
    torch.save(
        {
            **torch.load(fixture("pvdm", "ae_tiny_state_dict_part1.pt")),
            **torch.load(fixture("pvdm", "ae_tiny_state_dict_part2.pt")),
        },
        path,
    )
    return path


def _tiny_unet(tmp_path: Path) -> Path:
    """The tiny upstream UNet (4 heads; widths unlike the release) as a release-style file."""
    path = tmp_path / "ema_model_uncond.pth"
    torch.save(
        {f"module.{k}": v for k, v in torch.load(fixture("pvdm", "unet_tiny_uncond_state_dict.pt")).items()}, path
    )
    return path


def test_pvdm_unet_of_another_size_needs_its_heads(tmp_path, tiny_ae_release):
    """The old reader gave this 4-head UNet 8 heads without a word; now it asks for model.num_heads."""
    path = _tiny_unet(tmp_path)
    with pytest.raises(ConfigError, match=r"model\.num_heads") as error:
        PVDM.from_checkpoint(path, autoencoder=tiny_ae_release, preset="sky")
    assert "\n" not in str(error.value)
    (tmp_path / "config.json").write_text(json.dumps({"model": {"num_heads": 4}}))
    model = PVDM.from_checkpoint(path, autoencoder=tiny_ae_release, preset="sky")
    assert (model.cfg.num_heads, model.cfg.model_channels, model.cfg.steps) == (4, 32, 400)
    (tmp_path / "config.json").write_text(json.dumps({"model": {"num_heads": 4, "model_channels": 64}}))
    with pytest.raises(ConfigError, match="model_channels"):
        PVDM.from_checkpoint(path, autoencoder=tiny_ae_release, preset="sky")
