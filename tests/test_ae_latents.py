"""`vpt save-latents`: same indexing as the frames, identity in the attributes, decode(stored) equals the
autoencoder's own reconstruction, resume after an interruption, refusal to mix autoencoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from data_helpers import shapes_h5
from fixture_paths import fixture
from safetensors.torch import load_file

from vpt.commands.save_latents import encode_dataset
from vpt.data import latents as save_latents_module
from vpt.data.datasets import frames_to_tensor
from vpt.data.h5 import VideoH5
from vpt.errors import VptError
from vpt.models.autoencoders import load_autoencoder


@pytest.fixture(scope="module")
def frames_h5(tmp_path_factory) -> Path:
    """`vpt make-data shapes` output converted to HDF5: 10 videos of 4 frames, 32x32."""
    return shapes_h5(tmp_path_factory.mktemp("shapes"), num_videos=10, frames=4, seed=3)


def _latents(out: Path, split: str) -> list[np.ndarray]:
    source = VideoH5(out / split)
    return [source.read(i) for i in range(len(source))]


def test_latents_mirror_the_frames_and_decode_to_the_reconstruction(frames_h5, vqvae_ckpt, tmp_path):
    out = tmp_path / "latents"
    summary = encode_dataset(vqvae_ckpt, frames_h5, out, batch_frames=64)
    assert summary["splits"] == ["test", "train", "val"] and summary["encoded_videos"] == 10
    assert summary["latent_shape"] == (4, 16, 16)
    ae = load_autoencoder(vqvae_ckpt)
    for split in ("train", "val", "test"):
        frames, latents = VideoH5(frames_h5 / split), VideoH5(out / split)
        assert [p.name for p in latents.shard_paths] == [p.name for p in frames.shard_paths]
        assert len(latents) == len(frames) and latents.kind == "latents"
        assert list(latents.lengths) == list(frames.lengths)
        assert [latents.name(i) for i in range(len(frames))] == [frames.name(i) for i in range(len(frames))]
        assert latents.attrs["autoencoder_path"] == str(vqvae_ckpt.resolve())
        assert latents.attrs["autoencoder_type"] == "vqgan" and float(latents.attrs["latent_scale"]) == 1.0
        assert json.loads(latents.attrs["autoencoder"])["arch"]["ch_mult"] == [1, 2]
        assert latents.attrs["autoencoder_sha256"] == ae.provenance["sha256"]
    # decode(stored latents) is exactly what the autoencoder reconstructs from the frames
    source = VideoH5(frames_h5 / "val")
    with torch.no_grad():
        video = frames_to_tensor(source.read(0))[None]  # (1, T, 3, H, W)
        stored = torch.from_numpy(VideoH5(out / "val").read(0))[None]
        torch.testing.assert_close(stored, ae.encode(video), atol=1e-5, rtol=0)
        torch.testing.assert_close(ae.decode(stored), ae.reconstruct(video), atol=1e-5, rtol=0)
    assert not (out / save_latents_module.PARTIAL).exists() or not any(
        (out / save_latents_module.PARTIAL).rglob("*.npy")
    )


def test_packing_videos_into_batches_does_not_change_latents(frames_h5, vqvae_ckpt, tmp_path):
    encode_dataset(vqvae_ckpt, frames_h5 / "train", tmp_path / "big", batch_frames=64)
    encode_dataset(vqvae_ckpt, frames_h5 / "train", tmp_path / "small", batch_frames=3)  # videos split across calls
    for a, b in zip(_latents(tmp_path, "big"), _latents(tmp_path, "small")):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_interrupted_run_resumes_without_redoing_finished_videos(frames_h5, vqvae_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "latents"
    real_save = save_latents_module._save_npy
    calls = {"n": 0}

    def interrupted(path, array):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        real_save(path, array)

    monkeypatch.setattr(save_latents_module, "_save_npy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(vqvae_ckpt, frames_h5, out, batch_frames=2)
    monkeypatch.setattr(save_latents_module, "_save_npy", real_save)
    # the first split (test: 1 video) finished; train was cut after 2 videos: no half-written shard
    assert (out / "test" / "shard_0001.hdf5").is_file()
    assert not (out / "train").exists() or not list((out / "train").glob("*.hdf5"))
    assert len(list((out / save_latents_module.PARTIAL).rglob("*.npy"))) == 2

    summary = encode_dataset(vqvae_ckpt, frames_h5, out, batch_frames=2)
    assert summary["encoded_videos"] == 10 - 3
    ae = load_autoencoder(vqvae_ckpt)
    for split in ("train", "val", "test"):
        frames = VideoH5(frames_h5 / split)
        for index, stored in enumerate(_latents(out, split)):
            with torch.no_grad():
                expected = ae.encode(frames_to_tensor(frames.read(index))[None])[0]
            np.testing.assert_allclose(stored, expected.numpy(), atol=1e-5)
    assert encode_dataset(vqvae_ckpt, frames_h5, out)["encoded_videos"] == 0  # nothing left to do


def test_existing_output_of_another_autoencoder_or_setting_is_refused(frames_h5, vqvae_ckpt, tmp_path):
    out = tmp_path / "latents"
    encode_dataset(vqvae_ckpt, frames_h5 / "val", out)
    with pytest.raises(VptError, match="different dtype"):
        encode_dataset(vqvae_ckpt, frames_h5 / "val", out, dtype="float16")
    other = tmp_path / "other.ckpt"
    state = load_file(fixture("river", "ldmvq_tiny.weights.safetensors"))
    state["quant_conv.bias"] = state["quant_conv.bias"] + 1
    torch.save({"state_dict": state}, other)
    with pytest.raises(VptError, match="different autoencoder_sha256"):
        encode_dataset(other, frames_h5 / "val", out)


def test_cli_writes_float16_latents_and_rejects_bad_options(frames_h5, vqvae_ckpt, tmp_path, invoke):
    out = tmp_path / "latents"
    code, output = invoke(
        "save-latents",
        "--ae",
        vqvae_ckpt,
        "--data",
        frames_h5 / "val",
        "--out",
        out,
        "--dtype",
        "float16",
        "--workers",
        "0",
    )
    assert code == 0, output
    assert VideoH5(out).read(0).dtype == np.float16
    assert yaml.safe_load((out / "latents.json").read_text())["dtype"] == "float16"
    code, output = invoke(
        "save-latents", "--ae", vqvae_ckpt, "--data", frames_h5, "--out", tmp_path / "x", "--dtype", "int8"
    )
    assert code == 2 and "--dtype" in output and "float16" in output  # typer lists the choices
    code, output = invoke("save-latents", "--ae", tmp_path / "vqvae.pth", "--data", frames_h5, "--out", tmp_path / "y")
    assert code == 1 and "cvg-unibe/river_clevrer_128" in output and "Traceback" not in output


KL_AE = Path(__file__).parent / "fixtures" / "neuralsde" / "shapes_ae"  # a tiny kl-vae run: 32x32 -> 4x8x8


def test_kl_latents_keep_the_posterior_and_clips_carry_it(frames_h5, tmp_path):
    """A KL autoencoder's latents are stored as posterior mean || log-variance; clips hand out the mean
    as the clip and the log-variance beside it (under "latents" / "latent_logvar" for training)."""
    from vpt.commands.train import TrainingData
    from vpt.data.datasets import ClipDataset, DataConfig
    from vpt.training.sampler import SampleKey

    out = tmp_path / "latents"
    summary = encode_dataset(KL_AE, frames_h5 / "val", out)
    assert summary["posterior"] and summary["latent_shape"] == (4, 8, 8)
    latents = VideoH5(out)
    assert latents.attrs["latent_posterior"] and json.loads((out / "latents.json").read_text())["posterior"]
    ae = load_autoencoder(KL_AE)
    with torch.no_grad():
        video = frames_to_tensor(VideoH5(frames_h5 / "val").read(0))[None]  # (1, T, 3, 32, 32)
        mean, logvar = ae.encode_posterior(video)
        torch.testing.assert_close(mean, ae.encode(video), atol=0, rtol=0)
    stored = torch.from_numpy(latents.read(0))  # (T, 8, 8, 8)
    torch.testing.assert_close(stored, torch.cat([mean, logvar], dim=2)[0], atol=1e-5, rtol=0)

    clips = TrainingData(ClipDataset(DataConfig(path=str(out), frames=4)))
    item = clips[SampleKey(0, 7)]
    torch.testing.assert_close(item["latents"], stored[:, :4])
    torch.testing.assert_close(item["latent_logvar"], stored[:, 4:])
    with pytest.raises(VptError, match="different posterior"):  # mean-only latents of older versions are not mixed in
        manifest = json.loads((out / "latents.json").read_text())
        (out / "latents.json").write_text(json.dumps({**manifest, "posterior": False}))
        encode_dataset(KL_AE, frames_h5 / "val", out)


def test_posterior_of_a_scaled_kl_vae_scales_its_standard_deviation():
    """Model-ready latents are (z - shift) * scale, so the posterior std is scale * the VAE's std."""
    from vpt.models.autoencoders.kl import KLVAE, KLVAEConfig

    torch.manual_seed(0)
    ae = KLVAE(
        KLVAEConfig(
            block_out_channels=[8, 8],
            layers_per_block=1,
            norm_num_groups=4,
            mid_block_add_attention=False,
            scaling_factor=0.5,
            shift_factor=0.1,
        )
    ).eval()
    video = torch.rand(2, 3, 3, 16, 16) * 2 - 1  # (B, T, C, H, W)
    with torch.no_grad():
        mean, logvar = ae.encode_posterior(video)  # (2, 3, 4, 8, 8) each
        posterior = ae.vae.encode(video.flatten(0, 1)).latent_dist
    torch.testing.assert_close(mean, ae.encode(video), atol=0, rtol=0)
    torch.testing.assert_close(mean.flatten(0, 1), (posterior.mean - 0.1) * 0.5)
    torch.testing.assert_close(torch.exp(0.5 * logvar).flatten(0, 1), 0.5 * posterior.std)
