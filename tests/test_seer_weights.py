"""Seer weights: a tiny SD-layout folder (written here with save_pretrained), FSText init files, released
checkpoint folders; every wrong path or key set is a VptError, never a random model."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from vpt.commands.save_latents import encode_dataset
from vpt.commands.train import TrainingData
from vpt.data.datasets import ClipDataset, DataConfig, frames_to_tensor
from vpt.data.h5 import ShardWriter
from vpt.errors import VptError
from vpt.models.seer import Seer, SeerConfig
from vpt.models.seer.backend import FSTextSection, SamplerSection
from vpt.models.seer.fstext import FSText
from vpt.models.seer.text import builtin_tokenizer
from vpt.models.seer.unet import SeerUNet, UNetSize
from vpt.models.seer.weights import load_fstext_init, released_clip_layout


def write_tiny_sd(root: Path) -> Path:
    """A Stable Diffusion v1.x folder in diffusers layout at toy size (random weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = builtin_tokenizer(12)
    tokenizer.save_pretrained(root / "tokenizer")
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=12,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).save_pretrained(root / "text_encoder")
    AutoencoderKL(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
    ).save_pretrained(root / "vae")
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        attention_head_dim=2,
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2,
    )
    for param in unet.parameters():  # SD's zero-initialised outputs would hide mistakes
        torch.nn.init.normal_(param, std=0.05)
    unet.save_pretrained(root / "unet")
    return root


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return write_tiny_sd(tmp_path_factory.mktemp("sd15"))


def _config(sd_dir: Path, **overrides) -> SeerConfig:
    values = dict(
        pretrained=str(sd_dir),
        frames=3,
        context_frames=1,
        fstext=FSTextSection(layers=1, heads=2, pos_frames=4),
        sampler=SamplerSection(steps=2),
    )
    values.update(overrides)
    return SeerConfig(**values)


@pytest.fixture(scope="module")
def seer(sd_dir) -> Seer:
    return Seer(_config(sd_dir))


def test_pretrained_folder_inflates_sd_unet(sd_dir, seer):
    from diffusers import UNet2DConditionModel

    sd_unet = UNet2DConditionModel.from_pretrained(str(sd_dir / "unet")).eval()
    ours = seer.unet.state_dict()
    for key, value in sd_unet.state_dict().items():
        assert torch.equal(ours[key], value), key
    # With one frame the clip GroupNorm is per-frame and the zero-initialised SAWT blocks are identities,
    # so the inflated UNet must reproduce diffusers' SD UNet exactly.
    x, text = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 32)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        expected = sd_unet(x, t, text).sample
        out = seer.unet(x[:, None], t, text[:, None])[:, 0]
    assert (out - expected).abs().max() < 1e-5


def test_pretrained_parts_are_frozen_and_left_out_of_checkpoints(seer):
    trainable = {n for n, p in seer.named_parameters() if p.requires_grad}
    assert trainable and all(".temporal_attentions." in n or n.startswith("fstext.") for n in trainable)
    assert any(n.startswith("fstext.") for n in trainable)
    saved = set(seer.state_dict())
    assert not any(k.startswith(("vae.", "text_encoder.")) for k in saved)
    assert {k for k in saved if k.startswith("unet.")} == {
        k for k in seer.state_dict(keep_all=True) if k.startswith("unet.") and ".temporal_attentions." in k
    }
    # A checkpoint of the trained part loads back strictly (frozen keys come from `pretrained`).
    seer.load_state_dict(seer.state_dict(), strict=True)
    with pytest.raises(RuntimeError):
        seer.load_state_dict({k: v for k, v in seer.state_dict().items() if "fstext" not in k}, strict=True)


def test_vae_and_clip_come_from_the_folder(sd_dir, seer):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(sd_dir / "vae"))
    assert torch.equal(seer.vae.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    assert seer.latent_scale == pytest.approx(vae.config.scaling_factor)
    clip = seer.clip_text(["the red square moves left", ""])
    assert clip.shape == (2, 12, 32)
    assert not torch.allclose(clip[0], clip[1])


@pytest.mark.parametrize(
    "broken, message",
    [
        ("missing", "Stable Diffusion folder not found"),
        ("no_vae", "missing vae/"),
    ],
)
def test_bad_pretrained_paths_are_errors(tmp_path, sd_dir, broken, message):
    import shutil

    path = tmp_path / "sd"
    if broken == "no_vae":
        shutil.copytree(sd_dir, path)
        shutil.rmtree(path / "vae")
    with pytest.raises(VptError, match=message):
        Seer(_config(path))


def test_unet_weights_with_missing_keys_are_an_error(tmp_path, sd_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    path = tmp_path / "sd"
    shutil.copytree(sd_dir, path)
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("conv_in.weight")
    save_file(state, str(weights))
    with pytest.raises(VptError, match="1 missing .*conv_in.weight"):
        Seer(_config(path))


def test_non_sd_unet_config_is_an_error(tmp_path, sd_dir):
    import json
    import shutil

    path = tmp_path / "sd"
    shutil.copytree(sd_dir, path)
    config = json.loads((path / "unet" / "config.json").read_text())
    config["use_linear_projection"] = True  # SD 2.x
    (path / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(VptError, match="use_linear_projection"):
        Seer(_config(path))


def _tiny_fstext(heads: int = 2, layers: int = 1, pos_frames: int = 4) -> FSText:
    torch.manual_seed(1)
    fstext = FSText(dim=32, heads=heads, layers=layers, pos_frames=pos_frames, context_dim=32)
    for param in fstext.parameters():
        torch.nn.init.normal_(param, std=0.1)
    return fstext


def test_fstext_init_loads_strictly(tmp_path, sd_dir):
    source = _tiny_fstext()
    path = tmp_path / "pytorch_model.bin"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)  # a DDP save
    model = Seer(_config(sd_dir, fstext_init=str(path)))
    for key, value in source.state_dict().items():
        assert torch.equal(model.fstext.state_dict()[key], value)

    partial = {k: v for k, v in source.state_dict().items() if k != "learnable_query"}
    torch.save(partial, path)
    with pytest.raises(VptError, match="missing .*learnable_query"):
        load_fstext_init(FSText(dim=32, heads=2, layers=1, pos_frames=4, context_dim=32), path)
    target = FSText(dim=32, heads=2, layers=1, pos_frames=4, context_dim=32)
    load_fstext_init(target, path, allow_partial=True)
    assert torch.equal(target.pos_embed, source.pos_embed)
    with pytest.raises(VptError, match="weights file not found"):
        load_fstext_init(target, tmp_path / "nope.bin")


def test_fstext_init_allow_partial_loads_as_upstreams_non_strict_load(tmp_path, sd_dir, seer):
    """model.fstext_init_allow_partial: the file loads as upstream's train.py loads it (load_state_dict with
    strict=False): a weight the file lacks keeps its initial value, a key FSText lacks is ignored."""
    absent = "trf_blocks.0.transformer_blocks.0.attn1.to_q.weight"  # randomly initialised, so "kept" shows
    state = {k: v for k, v in _tiny_fstext().state_dict().items() if k != absent} | {"unused.weight": torch.ones(2)}
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    with pytest.raises(VptError, match="1 missing .*to_q.weight.*1 unexpected .*unused.weight"):
        Seer(_config(sd_dir, fstext_init=str(path)))  # strict by default

    model = Seer(_config(sd_dir, fstext_init=str(path), fstext_init_allow_partial=True))
    upstream = copy.deepcopy(seer.fstext)  # the same initial weights: no fstext_init, same init_seed
    upstream.load_state_dict(state, strict=False)
    assert not torch.equal(upstream.state_dict()[absent], _tiny_fstext().state_dict()[absent])
    for key, value in upstream.state_dict().items():
        assert torch.equal(model.fstext.state_dict()[key], value), key


def test_training_latents_are_posterior_samples_drawn_in_upstreams_order(seer):
    """vae_latent: sample (the default) encodes as upstream's train.py: latents = (mean + std * eps) times the
    VAE's scaling factor, the predicted frames' eps drawn before the reference frames' (two encode calls)."""
    frames = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (B, F, 3, H, W)
    with torch.no_grad():
        posterior = seer.vae.encode(frames.flatten(0, 1)).latent_dist
    mean, std = posterior.mean.unflatten(0, (2, 3)), posterior.std.unflatten(0, (2, 3))  # (B, F, 4, 16, 16)
    torch.manual_seed(7)
    target_eps = torch.randn(2 * 2, 4, 16, 16).unflatten(0, (2, 2))  # upstream's first draw: the frames to predict
    reference_eps = torch.randn(2 * 1, 4, 16, 16).unflatten(0, (2, 1))

    torch.manual_seed(7)
    reference, target = seer._training_latents(frames)

    scale = seer.vae.config.scaling_factor
    torch.testing.assert_close(target, (mean[:, 1:] + std[:, 1:] * target_eps) * scale)
    torch.testing.assert_close(reference, (mean[:, :1] + std[:, :1] * reference_eps) * scale)


def test_cached_latents_train_on_the_posterior_samples_the_frames_give(tmp_path, sd_dir, seer):
    """`vpt save-latents` of Seer's SD VAE keeps each frame's posterior; training on those latents with vae_latent:
    sample draws mean + std * eps with the same eps, in the same order, as training on the frames; `mode` takes the
    mean."""
    video = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # (F, H, W, 3)
    with ShardWriter(tmp_path / "frames" / "train" / "shard_0001.hdf5") as shard:
        shard.add(video, text="close book")
    encode_dataset(sd_dir, tmp_path / "frames", tmp_path / "latents")
    cached = TrainingData(ClipDataset(DataConfig(path=str(tmp_path / "latents"), frames=3)))
    batch = default_collate([cached[0]])  # {"latents": mean, "latent_logvar", "text", "index"}
    from_frames = {"video": frames_to_tensor(video)[None], "text": ["close book"]}  # (1, F, 3, H, W)

    for seed in (7, 8):
        torch.manual_seed(seed)
        reference, target = seer._training_latents(from_frames["video"])
        torch.manual_seed(seed)
        cached_reference, cached_target = seer._training_latents(batch["latents"], batch["latent_logvar"])
        torch.testing.assert_close(cached_target, target, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cached_reference, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cached_target, batch["latents"][:, 1:], atol=1e-3)  # a sample, not the mean
    torch.manual_seed(0)
    loss_from_frames = seer.loss(from_frames)["loss"]
    torch.manual_seed(0)
    assert seer.loss(batch)["loss"].item() == pytest.approx(loss_from_frames.item(), rel=1e-4)

    mode = Seer(_config(sd_dir, vae_latent="mode"))
    reference, target = mode._training_latents(batch["latents"], batch["latent_logvar"])
    assert torch.equal(torch.cat([reference, target], dim=1), batch["latents"])


def _write_release(folder: Path, unet: SeerUNet, fstext: FSText) -> Path:
    folder.mkdir(parents=True)
    torch.save(unet.state_dict(), folder / "pytorch_model.bin")
    torch.save(fstext.state_dict(), folder / "pytorch_model_1.bin")
    return folder


def test_released_checkpoint_loads_for_sampling(tmp_path, sd_dir):
    torch.manual_seed(2)
    unet = SeerUNet(UNetSize.from_diffusers_config(sd_dir / "unet" / "config.json"))
    for param in unet.parameters():
        torch.nn.init.normal_(param, std=0.05)
    fstext = _tiny_fstext(heads=8, layers=8, pos_frames=16)  # the released FSText shape (at width 32)
    release = _write_release(tmp_path / "sthv2_seer" / "learned_sdunet-steps-200000", unet, fstext)
    assert Seer.recognizes_checkpoint(release.parent) and not Seer.recognizes_checkpoint(tmp_path)
    assert released_clip_layout(release) == (2, 12)
    with pytest.raises(VptError, match="--ae"):
        Seer.from_checkpoint(release.parent)
    model = Seer.from_checkpoint(release.parent, autoencoder=sd_dir)
    for key, value in unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[key], value), key
    assert torch.equal(model.fstext.pos_embed, fstext.pos_embed)
    cfg = model.cfg
    assert (cfg.frames, cfg.context_frames) == (12, 2)
    assert (cfg.sampler.schedule, cfg.sampler.reference_ff_skip) == ("upstream", False)  # the released sampler


def test_released_checkpoint_with_foreign_keys_is_an_error(tmp_path, sd_dir):
    unet = SeerUNet(UNetSize.from_diffusers_config(sd_dir / "unet" / "config.json"))
    state = unet.state_dict()
    state["extra.weight"] = torch.zeros(1)
    folder = _write_release(tmp_path / "bridge_seer" / "step", unet, _tiny_fstext())
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(VptError, match="unexpected .*extra.weight"):
        Seer(_config(sd_dir, seer_checkpoint=str(folder)))
    with pytest.raises(VptError, match="not found"):
        Seer(_config(sd_dir, seer_checkpoint=str(tmp_path / "missing")))


def test_frames_are_encoded_by_the_vae_and_latents_pass_through(sd_dir):
    model = Seer(_config(sd_dir, vae_latent="mode")).eval()
    frames = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    latents = model.encode(frames)
    with torch.no_grad():
        expected = model.vae.encode(frames.flatten(0, 1)).latent_dist.mode() * model.vae.config.scaling_factor
    assert latents.shape == (2, 3, 4, 16, 16)
    assert torch.allclose(latents.flatten(0, 1), expected, atol=1e-6)
    assert model.encode(latents) is latents  # save-latents output is already model-ready
    torch.manual_seed(0)
    from_frames = model.loss({"video": frames, "text": ["a", "b"]})["loss"]
    torch.manual_seed(0)
    from_latents = model.loss({"latents": latents, "text": ["a", "b"]})["loss"]
    assert from_frames.item() == pytest.approx(from_latents.item(), rel=1e-5)
    decoded = model.decode(latents[:, :1])
    assert decoded.shape == (2, 1, 3, 32, 32) and decoded.abs().max() <= 1


def test_vpt_sample_with_a_released_checkpoint(tmp_path, capsys, sd_dir):
    import json

    from PIL import Image

    from vpt.cli import main

    unet = SeerUNet(UNetSize.from_diffusers_config(sd_dir / "unet" / "config.json"))
    release = _write_release(
        tmp_path / "bridge_seer" / "learned_sdunet-steps-80000", unet, _tiny_fstext(heads=8, layers=8, pos_frames=16)
    )
    image = tmp_path / "book.png"
    Image.new("RGBA", (50, 40), (10, 200, 30, 255)).save(image)  # RGBA and not square (upstream needed RGB)
    out = tmp_path / "pred.png"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "sample",
                "--checkpoint",
                str(release.parent),
                "--ae",
                str(sd_dir),
                "--image",
                str(image),
                "--prompt",
                "close book",
                "--size",
                "32",
                "--steps",
                "1",
                "--frames",
                "3",
                "--out",
                str(out),
            ]
        )
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    record = json.loads(out.with_name("pred.png.json").read_text())
    assert record["backend"] == "seer" and record["frames"] == 3 and record["prompt"] == "close book"
    with Image.open(out) as strip:
        assert strip.size[0] >= 4 * 32  # the context image + 3 predicted frames side by side
