"""Autoencoders reproduce the upstream fixtures, match the full-size key lists, and load from every
checkpoint container users have (taming Lightning .ckpt, RIVER .pth, bare state dicts, diffusers folders)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from fixture_paths import fixture
from safetensors.torch import load_file

from vpt.errors import VptError
from vpt.models.autoencoders import autoencoder_from_upstream_state, build_autoencoder, load_autoencoder

ATOL = 1e-5


def _ldmvq_arch() -> dict:
    ddconfig = yaml.safe_load((fixture("river", "ldmvq_tiny.config.yaml")).read_text())["ddconfig"]
    return {k: v for k, v in ddconfig.items() if k != "double_z"}


def _ldmvq():
    model = build_autoencoder("vqgan", _ldmvq_arch()).eval()
    model.load_state_dict(load_file(fixture("river", "ldmvq_tiny.weights.safetensors")))
    return model


def _ours_state() -> dict[str, torch.Tensor]:
    state = {}
    for i in range(5):
        state.update(load_file(fixture("river", f"ours_vqvae.weights-0{i}-of-05.safetensors")))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _latte_arch(name: str) -> dict:
    entry = yaml.safe_load((fixture("latte", "config_tiny.yaml")).read_text())[name]
    arch = {k: v for k, v in entry["autoencoder_params"].items() if k != "codebook_size"}
    return {**arch, "in_channels": entry["im_channels"]}


def _keys(path: Path, prefix: str = "") -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")[:2]
        if key.startswith(prefix):
            rows.append((key[len(prefix) :], tuple(int(s) for s in shape.strip("()[]").replace(",", " ").split())))
    return rows


def _model_keys(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


# --- parity ---------------------------------------------------------------------------------------


@torch.no_grad()
def test_ldmvq_tiny_matches_upstream():
    model = _ldmvq()
    assert [k for k, _ in _model_keys(model)] == [k for k, _ in _keys(fixture("river", "ldmvq_tiny.keys.txt"))]
    assert sum(p.numel() for p in model.parameters()) == 706_575
    images = torch.load(fixture("river", "ldmvq_tiny.inputs.pt"))["images"]
    expected = torch.load(fixture("river", "ldmvq_tiny.outputs.pt"))
    latents = model.encode_images(images)
    quantized = model.quantize(latents)
    torch.testing.assert_close(latents, expected["encode"], atol=ATOL, rtol=0)
    torch.testing.assert_close(quantized.quantized, expected["quantized"], atol=ATOL, rtol=0)
    assert torch.equal(quantized.indices, expected["codebook_indices"])
    torch.testing.assert_close(quantized.loss, expected["emb_loss"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.decode_images(latents), expected["decode"], atol=ATOL, rtol=0)
    # the video surface: (B, T, C, H, W) in, (B, T, c, h, w) out, same numbers
    video = images.view(1, 2, 3, 32, 32)
    torch.testing.assert_close(model.encode(video)[0], expected["encode"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.decode(model.encode(video))[0], expected["decode"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_river_vqvae_matches_upstream():
    model = build_autoencoder("river-vqvae", {}).eval()
    state = _ours_state()
    assert [k for k, _ in _model_keys(model)] == [k for k, _ in _keys(fixture("river", "ours_vqvae.keys.txt"))]
    model.load_state_dict(state)
    images = torch.load(fixture("river", "ours_vqvae.inputs.pt"))["images"]
    expected = torch.load(fixture("river", "ours_vqvae.outputs.pt"))
    latents = model.encode_images(images)
    quantized = model.vector_quantizer(latents)
    torch.testing.assert_close(latents, expected["latents"], atol=ATOL, rtol=0)
    torch.testing.assert_close(quantized.quantized, expected["quantized_latents"], atol=ATOL, rtol=0)
    assert torch.equal(quantized.indices, expected["codebook_indices"])
    torch.testing.assert_close(quantized.loss, expected["vq_loss"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.decode_images(latents), expected["decode_from_latents"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.decoder(quantized.quantized), expected["reconstructed_images"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["vae_tiny_gray", "vae_tiny_attn"])
@torch.no_grad()
def test_latte_vae_matches_upstream(name):
    model = build_autoencoder("latte-vae", _latte_arch(name)).eval()
    state = torch.load(fixture("latte", f"{name}_state_dict.pt"))
    assert list(model.state_dict()) == list(state)
    model.load_state_dict(state)
    io = torch.load(fixture("latte", f"{name}_io.pt"))
    inputs, expected = io["inputs"], io["outputs"]
    moments = model.moments(inputs["image"])
    torch.testing.assert_close(moments, expected["encoder_output"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(model.encode_images(inputs["image"]), expected["mean"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(model.decode_images(expected["mean"]), expected["decode_mean"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(model.decode_images(expected["sample"]), expected["decode_sample"], atol=ATOL, rtol=1e-4)


@torch.no_grad()
def test_latte_discriminator_matches_upstream():
    from vpt.models.autoencoders.discriminators import LatteDiscriminator

    disc = LatteDiscriminator(3, (8, 16, 32))
    state = torch.load(fixture("latte", "disc_tiny_state_dict.pt"))
    assert list(disc.state_dict()) == list(state)
    disc.load_state_dict(state)
    io = torch.load(fixture("latte", "disc_tiny_io.pt"))
    image = io["inputs"]["image"]
    torch.testing.assert_close(disc.eval()(image), io["outputs"]["logits_eval_mode"], atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(disc.train()(image), io["outputs"]["logits_train_mode"], atol=ATOL, rtol=1e-4)


# --- full-size architectures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys_file, kind, arch, prefix, params",
    [
        ("fullsize_keys_bair_64.txt", "vqgan", {"preset": "f8_small"}, "ae.", 63_777_455),
        ("fullsize_keys_bair_256.txt", "vqgan", {"preset": "f16"}, "ae.", 69_593_371),
        ("fullsize_keys_clevrer.txt", "river-vqvae", {}, "ae.backbone.", 7_329_703),
    ],
)
def test_full_size_river_autoencoders_match_key_lists(keys_file, kind, arch, prefix, params):
    with torch.device("meta"):
        model = build_autoencoder(kind, arch)
    assert _model_keys(model) == _keys(fixture("river", keys_file), prefix)
    assert sum(p.numel() for p in model.parameters()) == params


def test_f8_preset_size():
    with torch.device("meta"):
        model = build_autoencoder("vqgan", {"preset": "f8"})
    assert sum(p.numel() for p in model.parameters()) == 67_717_295


@pytest.mark.parametrize(
    "keys_file, preset, elements",
    [
        ("keys_vg_vae_mnist.txt", "vg-mnist", 1_107_941),
        ("keys_vg_vae_ucf.txt", "vg-ucf", 41_577_703),
    ],
)
def test_full_size_latte_vae_matches_key_lists(keys_file, preset, elements):
    with torch.device("meta"):
        model = build_autoencoder("latte-vae", {"preset": preset})
    assert _model_keys(model) == _keys(fixture("latte", keys_file))
    assert sum(v.numel() for v in model.state_dict().values()) == elements


# --- loading published containers -----------------------------------------------------------------


class _LightningCallbackStandIn:
    """A non-tensor object of the kind Lightning pickles into .ckpt files (weights_only refuses it)."""

    def __init__(self):
        self.monitor = "val/rec_loss"


@torch.no_grad()
def test_taming_lightning_ckpt_loads_with_loss_keys_ignored(tmp_path):
    reference = _ldmvq()
    state = dict(reference.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)  # taming keeps D and LPIPS under loss.*
    path = tmp_path / "vqvae.ckpt"
    torch.save({"state_dict": state, "callbacks": _LightningCallbackStandIn(), "global_step": 7}, path)
    model = load_autoencoder(path)
    assert model.type == "vqgan" and model.provenance["format"] == "lightning" and len(model.provenance["sha256"]) == 64
    assert model.config.ch_mult == [1, 2] and model.config.n_embed == 64
    images = torch.load(fixture("river", "ldmvq_tiny.inputs.pt"))["images"]
    torch.testing.assert_close(model.encode_images(images), reference.encode_images(images), atol=0, rtol=0)


def test_bare_vqgan_architecture_is_read_off_the_weights_and_checked_against_a_preset(tmp_path):
    reference = _ldmvq()
    path = tmp_path / "tiny.pth"
    torch.save(reference.state_dict(), path)
    model = load_autoencoder(path)
    # attention sits at level 1 upstream (resolution 16 of 32): the rebuilt model places it the same way
    assert len(model.encoder.down[1].attn) == 1 and len(model.encoder.down[0].attn) == 0
    assert len(model.decoder.up[1].attn) == 2 and len(model.decoder.up[0].attn) == 0
    with pytest.raises(VptError, match="do not match preset f8_small"):
        load_autoencoder(path, preset="f8_small")


@torch.no_grad()
def test_river_vqvae_pth_and_model_pth_load(tmp_path):
    state = _ours_state()
    pth = tmp_path / "vqvae.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": {}}, pth)
    model = load_autoencoder(pth)
    assert model.type == "river-vqvae" and model.provenance["format"] == "river"
    images = torch.load(fixture("river", "ours_vqvae.inputs.pt"))["images"]
    expected = torch.load(fixture("river", "ours_vqvae.outputs.pt"))
    torch.testing.assert_close(model.encode_images(images), expected["latents"], atol=ATOL, rtol=0)
    # RIVER's model.pth keeps the same weights under ae.backbone.* next to the regressor
    from_model = autoencoder_from_upstream_state(
        {"vector_field_regressor.x": torch.zeros(1), **{f"ae.backbone.{k}": v for k, v in state.items()}}
    )
    torch.testing.assert_close(from_model.encode_images(images), expected["latents"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_vg_vae_state_dict_loads_with_arch_for_what_shapes_cannot_tell(tmp_path):
    name = "vae_tiny_attn"
    path = tmp_path / "vae_autoencoder_ckpt.pth"
    torch.save(torch.load(fixture("latte", f"{name}_state_dict.pt")), path)
    model = load_autoencoder(path, arch={"norm_channels": 4, "num_heads": 2})
    assert model.config.down_sample == [True, False] and model.config.attn_down == [False, True]
    assert model.config.num_down_layers == 2 and model.config.mid_channels == [16, 16]
    io = torch.load(fixture("latte", f"{name}_io.pt"))
    torch.testing.assert_close(
        model.moments(io["inputs"]["image"]), io["outputs"]["encoder_output"], atol=ATOL, rtol=1e-4
    )


@torch.no_grad()
def test_diffusers_folder_loads_with_its_scaling_factor(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        scaling_factor=0.5,
    ).eval()
    vae.save_pretrained(tmp_path / "pipeline" / "vae")
    model = load_autoencoder(tmp_path / "pipeline")  # a pipeline folder: its vae/ is found
    assert model.type == "kl-vae" and model.latent_scale == 0.5 and model.provenance["format"] == "diffusers"
    video = torch.rand(1, 2, 3, 16, 16) * 2 - 1
    mean = vae.encode(video[0]).latent_dist.mean
    torch.testing.assert_close(model.encode(video)[0], mean * 0.5, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.decode(model.encode(video))[0], vae.decode(mean).sample, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "name, needle",
    [
        ("vqvae.ckpt", "cvg-unibe/river_bair_64"),
        ("vqvae.pth", "cvg-unibe/river_clevrer_128"),
        ("somewhere", "train-ae` run directory"),
    ],
)
def test_missing_weights_name_what_to_download(tmp_path, name, needle):
    with pytest.raises(VptError) as error:
        load_autoencoder(tmp_path / name)
    message = str(error.value)
    assert "\n" not in message and needle in message and str(tmp_path / name) in message


def test_unknown_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(VptError, match="not a known autoencoder checkpoint"):
        load_autoencoder(path)
