"""MOSO's three-stream VQ-VAE (`autoencoder.type: moso`): parity with upstream's code, its full-size key
list, token grids, the shared EMA codebook against its closed form, the interface the RSVP-M diffusion
model uses, upstream's checkpoint container, its loss recipe, and train-ae -> save-latents on the
built-in data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from fixture_paths import fixture, key_shapes

from vpt.errors import ConfigError, VptError
from vpt.models.autoencoders import autoencoder_from_upstream_state, build_autoencoder, load_autoencoder
from vpt.models.autoencoders.moso import MosoAutoencoder, MosoConfig, second_difference
from vpt.models.autoencoders.objective import LossConfig
from vpt.models.autoencoders.quantize import EMAVectorQuantizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ae"
TINY = dict(
    resolution=32,
    frames=8,
    num_hiddens=16,
    num_residual_layers=1,
    num_residual_hiddens=8,
    embedding_dim=8,
    num_embeddings=32,
    ds_background=2,
    ds_identity=3,
    ds_motion=4,
    ds_content=2,
    num_heads=2,
    head_dim=8,
    time_head=4,
)


def _tiny(**overrides) -> MosoAutoencoder:
    torch.manual_seed(0)
    model = MosoAutoencoder(MosoConfig(**{**TINY, **overrides}))
    model._vq_ema.embeddings.normal_()  # spread codes, so different features pick different tokens
    return model.eval()


def _clips(n: int = 2, frames: int = 8, size: int = 32) -> torch.Tensor:
    return torch.rand(n, frames, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


# --- parity with upstream ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream():
    """The tiny upstream model (weights read through the bare-state-dict loader) and its recorded io."""
    state = torch.load(fixture("moso", "moso_tiny_state_dict.pt"), weights_only=True)
    model = autoencoder_from_upstream_state(state, arch={"resolution": 32})  # the weights do not tell the frame size
    return model, torch.load(fixture("moso", "moso_tiny_io.pt"), weights_only=True)


def test_tiny_architecture_is_read_off_the_upstream_weights(upstream):
    model, _ = upstream
    recorded = yaml.safe_load(fixture("moso", "config_tiny.yaml").read_text())["moso_tiny"]
    config = model.config
    assert (
        config.num_hiddens,
        config.num_residual_layers,
        config.num_residual_hiddens,
        config.embedding_dim,
        config.num_embeddings,
        config.frames,
    ) == (
        recorded["num_hiddens"],
        recorded["num_residual_layers"],
        recorded["num_residual_hiddens"],
        recorded["embedding_dim"],
        recorded["num_embeddings"],
        recorded["num_frames"],
    )
    assert (config.ds_background, config.ds_identity, config.ds_motion, config.ds_content) == (
        recorded["ds_background"],
        recorded["ds_identity"],
        recorded["ds_motion"],
        recorded["ds_content"],
    )
    assert (config.num_heads, config.head_dim) == (recorded["num_head"], 64)


def test_tiny_matches_upstream(upstream):
    model, io = upstream
    inputs, expected = io["inputs"], io["outputs"]
    clips = inputs["frames"] * 2 - 1  # vpt's [-1, 1]
    torch.testing.assert_close(second_difference(inputs["frames"]), inputs["motion_input"])
    with torch.no_grad():
        features = model._features(clips)
        tokens = model._clip_tokens(clips)
        for name in ("scene", "object", "motion"):
            torch.testing.assert_close(features[name], expected[f"features_{name}"], atol=1e-5, rtol=1e-4)
            assert torch.equal(tokens[name], expected[f"tokens_{name}"])
        torch.testing.assert_close(model.decode_tokens(tokens), 2 * expected["decode_tokens"] - 1, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(
            model.diffusion_input(tokens["motion"]), expected["diffusion_x"], atol=1e-6, rtol=1e-5
        )
        torch.testing.assert_close(
            model.context(tokens["scene"], tokens["object"]), expected["context"], atol=1e-6, rtol=1e-5
        )
        video = model.decode_diffusion(inputs["z"], tokens["scene"], tokens["object"])  # (B, C, T, H, W)
        torch.testing.assert_close(video.transpose(1, 2), 2 * expected["decode_sample"] - 1, atol=1e-5, rtol=1e-4)


def test_codebook_training_calls_match_upstream(upstream):
    model, io = upstream
    expected = io["outputs"]
    quantizer = EMAVectorQuantizer(
        model.config.num_embeddings, model.config.embedding_dim, commitment_cost=0.25, decay=0.99
    )
    quantizer.load_state_dict(model._vq_ema.state_dict())
    quantizer.train()
    losses = [quantizer(expected[f"features_{name}"]).loss for name in ("scene", "object", "motion")]
    torch.testing.assert_close(torch.stack(losses), expected["commitment_losses"])
    torch.testing.assert_close(quantizer.embeddings, expected["codebook_after_training_calls"], atol=1e-5, rtol=1e-5)


def test_published_config_has_the_upstream_key_list():
    from vpt.models.autoencoders.moso_objective import MosoObjective

    released = key_shapes("moso", "keys_moso_vqvae_ucf.txt")
    config = yaml.safe_load((CONFIGS / "moso_ucf101.yaml").read_text())
    with torch.device("meta"):
        model = build_autoencoder("moso", config["autoencoder"]["arch"])
        objective = MosoObjective(model, LossConfig(**config["loss"]))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours |= {f"_discriminator.{k}": tuple(v.shape) for k, v in objective.discriminator.state_dict().items()}
    assert ours == released


# --- sizes -------------------------------------------------------------------------------------------


def test_published_config_has_the_published_token_grids_and_parameter_count():
    arch = yaml.safe_load((CONFIGS / "moso_ucf101.yaml").read_text())["autoencoder"]["arch"]
    with torch.device("meta"):
        model = build_autoencoder("moso", arch)
    assert model.token_grids() == {"scene": (32, 32), "object": (16, 16), "motion": (16, 8, 8)}
    assert model.latent_dims(256, 256) == (1, 32 * 32 + 16 * 16 + 16 * 8 * 8)
    assert model.frames_per_latent == 16
    # the same count as upstream's MoCoVQVAE_wCD_shareCB built from test_UCF.yaml, discriminator excluded
    assert sum(p.numel() for p in model.parameters()) == 54_269_571
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["_vq_ema.embeddings"] == (256, 16384)  # (code_dim, codes), upstream's orientation
    assert shapes["_encoder_bg._suf_layer.0.weight"] == (256, 16 * 256, 3, 3)  # 16 frames stacked on channels
    assert shapes["_suf_vq_mo.weight"] == (256, 256, 1, 1)
    assert not any(k.startswith("_decoder.merge._mo_ds_") for k in shapes)  # motion sits two scales below content


@pytest.mark.parametrize(
    "resolution, ds, expected",
    [
        (32, (2, 3, 4, 2), {"scene": (8, 8), "object": (4, 4), "motion": (8, 2, 2)}),
        (64, (2, 3, 3, 2), {"scene": (16, 16), "object": (8, 8), "motion": (8, 8, 8)}),
        (32, (1, 2, 1, 1), {"scene": (16, 16), "object": (8, 8), "motion": (8, 16, 16)}),
    ],
)
def test_small_sizes_derive_their_grids_and_the_encoder_produces_them(resolution, ds, expected):
    background, identity, motion, content = ds
    model = _tiny(
        resolution=resolution, ds_background=background, ds_identity=identity, ds_motion=motion, ds_content=content
    )
    assert model.token_grids() == expected
    video = _clips(size=resolution).transpose(1, 2)  # (B, C, T, H, W)
    with torch.no_grad():
        tokens = model.tokens(video)
        frames = model.decode_tokens(tokens)
    assert {name: tuple(t.shape[1:]) for name, t in tokens.items()} == expected
    assert all(t.dtype == torch.int64 for t in tokens.values())
    assert frames.shape == (2, 8, 3, resolution, resolution)


@pytest.mark.parametrize(
    "arch, needle",
    [
        ({"resolution": 36}, "resolution 36 is not divisible by 16"),
        (
            {"resolution": 48, "ds_motion": 5, "ds_content": 3, "ds_background": 3, "ds_identity": 4},
            "not divisible by 32",
        ),
        ({"frames": 6}, "frames 6 is not divisible by time_head 4"),
        ({"ds_content": 3}, "ds_content 3 must not exceed"),
        ({"ds_motion": 5}, "ds_motion must be ds_content to ds_content + 2"),
    ],
)
def test_bad_sizes_are_one_line_config_errors(arch, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as info:
        build_autoencoder("moso", {**TINY, **arch})
    assert "\n" not in str(info.value)


# --- the shared EMA codebook -------------------------------------------------------------------------


def test_ema_codebook_follows_its_closed_form_over_two_updates():
    decay, eps = 0.9, 1e-5
    quantizer = EMAVectorQuantizer(3, 2, commitment_cost=0.25, decay=decay, epsilon=eps).train()
    start = torch.tensor([[0.0, 10.0, -10.0], [0.0, 10.0, -10.0]])  # (code_dim, codes)
    quantizer.embeddings.copy_(start)
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])  # two vectors near code 0, one near code 1
    second = torch.tensor([[11.0, 11.0], [12.0, 10.0]])  # both near code 1

    def call(vectors):
        return quantizer(vectors.t()[None, :, :, None])  # (1, D, M, 1)

    assert call(first).indices.flatten().tolist() == [0, 0, 1]
    # update 1 (c = 1): debiased averages equal this step's sums and counts
    counts1, sums1 = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([[1.0, 9.0, 0.0], [1.0, 9.0, 0.0]])
    smooth1 = (counts1 + eps) / (3 + 3 * eps) * 3
    torch.testing.assert_close(quantizer.embeddings, sums1 / smooth1)

    assert call(second).indices.flatten().tolist() == [1, 1]
    counts2, sums2 = torch.tensor([0.0, 2.0, 0.0]), torch.tensor([[0.0, 23.0, 0.0], [0.0, 21.0, 0.0]])
    bias = 1 - decay**2  # c = 2
    sizes = ((1 - decay) * decay * counts1 + (1 - decay) * counts2) / bias
    sums = ((1 - decay) * decay * sums1 + (1 - decay) * sums2) / bias
    smooth2 = (sizes + eps) / (sizes.sum() + 3 * eps) * sizes.sum()
    torch.testing.assert_close(quantizer.embeddings, sums / smooth2)
    assert quantizer._embeddings_cnt.tolist() == [2, 3, 0]
    assert quantizer.ema_dw._counter.item() == quantizer.ema_cluster_size._counter.item() == 2


def test_eval_mode_leaves_the_codebook_alone():
    quantizer = EMAVectorQuantizer(4, 2).eval()
    before = quantizer.embeddings.clone()
    quantizer(torch.randn(1, 2, 3, 3))
    assert torch.equal(quantizer.embeddings, before) and quantizer._embeddings_cnt.sum() == 0


def test_straight_through_gradient_and_commitment_loss():
    quantizer = EMAVectorQuantizer(5, 3, commitment_cost=0.25).eval()
    quantizer.embeddings.normal_()
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    out = quantizer(z)
    codes = quantizer.lookup(out.indices)
    torch.testing.assert_close(out.quantized, codes)  # forward: the codes
    upstream_grad = torch.randn_like(z)
    (grad,) = torch.autograd.grad((out.quantized * upstream_grad).sum(), z)
    torch.testing.assert_close(grad, upstream_grad)  # backward: identity
    torch.testing.assert_close(out.loss, 0.25 * ((codes - z) ** 2).mean())
    (grad,) = torch.autograd.grad(out.loss, z)
    torch.testing.assert_close(grad, 0.5 * (z - codes) / z.numel())  # commitment pulls z only, not the codes


def test_training_quantises_the_three_streams_with_one_codebook_in_turn():
    model = _tiny().train()
    calls = []
    model._vq_ema.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    out = model.forward_train(_clips())
    assert calls == [(2, 8, 8, 8), (2, 8, 4, 4), (16, 8, 2, 2)]  # scene, object, motion (per frame)
    assert model._vq_ema.ema_dw._counter.item() == 3
    assert out.reconstruction.shape == (2, 8, 3, 32, 32) and set(out.regularizers) == {"codebook"}


# --- inputs --------------------------------------------------------------------------------------------


def test_motion_input_is_the_second_difference_with_repeated_ends():
    frames = torch.arange(5.0)[None, :, None, None, None] ** 2  # x_t = t^2: second difference 2 inside
    diff = second_difference(frames).flatten()
    assert diff.tolist() == [-1.0, -2.0, -2.0, -2.0, 7.0]  # ends: 2 x0 - x0 - x1 and 2 x4 - x3 - x4


def test_motion_context_neighbours_reads_the_real_frames_around_the_clip(upstream):
    _, io = upstream
    recorded = io["inputs"]  # upstream's motion input; its inner frames have both real neighbours
    torch.testing.assert_close(
        second_difference(recorded["frames"], outer_frames=True), recorded["motion_input"][:, 1:-1]
    )
    windows = _clips(frames=10)  # 8 encoded frames and one on each side, in [-1, 1]
    frames = (windows + 1) / 2
    by_hand = torch.stack([2 * frames[:, t] - frames[:, t - 1] - frames[:, t + 1] for t in range(1, 9)], dim=1)
    model = _tiny(motion_context="neighbours")
    scene, obj, motion = model._stream_inputs(windows)
    torch.testing.assert_close(motion, by_hand, atol=1e-6, rtol=0)
    assert torch.equal(scene, frames[:, 1:9]) and torch.equal(obj, frames[:, 1:9])
    # the default repeats the clip's own end frames instead: the same inside, a first difference at the ends
    _, _, repeated = _tiny()._stream_inputs(windows[:, 1:9])
    torch.testing.assert_close(repeated[:, 1:-1], by_hand[:, 1:-1], atol=1e-6, rtol=0)
    torch.testing.assert_close(repeated[:, 0], frames[:, 1] - frames[:, 2], atol=1e-6, rtol=0)
    assert not torch.allclose(repeated[:, 0], by_hand[:, 0])
    # the outer frames reach the motion tokens only
    moved = windows.clone()
    moved[:, [0, -1]] = -moved[:, [0, -1]]
    with torch.no_grad():
        before, after = model._features(windows), model._features(moved)
    assert torch.equal(before["scene"], after["scene"]) and torch.equal(before["object"], after["object"])
    assert not torch.allclose(before["motion"], after["motion"])


def test_neighbour_clips_overlap_in_encode_and_save_latents():
    from vpt.data.latents import _encode_videos

    model = _tiny(motion_context="neighbours")
    video = _clips(n=1, frames=2 * 8 + 2 + 3)[0]  # two clips, their outer frames and 3 frames too few for a third
    with torch.no_grad():
        latents = model.encode(video[None, :18])  # (1, 2, 1, L)
        windows = torch.cat([model.encode_clips(video[None, start : start + 10]) for start in (0, 8)])
    assert latents.shape[1] == 2 and torch.equal(latents[0], windows)
    for batch_frames in (8, 64):  # one clip per encoder call, or the whole video at once
        ((index, stored),) = list(_encode_videos(model, iter([(0, video)]), batch_frames, torch.device("cpu")))
        assert torch.equal(torch.from_numpy(stored), latents[0])
    assert model.decode(latents).shape[1] == 16  # frames 1 ... 16: the encoded ones
    with pytest.raises(VptError, match=r"clips of 8 frames and 1 more on each side \(n x 8 \+ 2\); got 16"):
        model.encode(video[None, :16])
    with pytest.raises(VptError, match="and the frame before and after it"):
        model.tokens(video[None, :8].transpose(1, 2))


def test_split_inputs_partition_the_frames_only_in_training():
    model = _tiny().train()
    clips = _clips()
    model.split_inputs = True
    scene, obj, motion = model._stream_inputs(clips)
    frames = (clips + 1) / 2
    torch.testing.assert_close(scene + obj, frames)
    change = motion.abs().amax(dim=2, keepdim=True).expand_as(frames)
    moving = (change >= 0.1) & (change <= 0.9)
    assert torch.equal(obj[~moving], torch.zeros_like(obj[~moving])) and torch.equal(obj[moving], frames[moving])
    model.eval()
    scene, obj, _ = model._stream_inputs(clips)
    assert torch.equal(scene, frames) and torch.equal(obj, frames)


# --- what RSVP-M's diffusion model sees ----------------------------------------------------------------


def test_diffusion_interface_shapes_and_decoding():
    model = _tiny()
    with torch.no_grad():
        tokens = model.tokens(_clips().transpose(1, 2))
        x = model.diffusion_input(tokens["motion"])
        context = model.context(tokens["scene"], tokens["object"])
        video = model.decode_diffusion(x, tokens["scene"], tokens["object"])
        assert x.shape == (2, 16, 8, 2, 2)  # (B, num_hiddens, T, Hm, Wm)
        assert context.shape == (2, 8 * 8 + 4 * 4, 16)
        assert video.shape == (2, 3, 8, 32, 32)  # (B, C, T, H, W)
        torch.testing.assert_close(video.transpose(1, 2), model.decode_tokens(tokens))
        # the context is the scene map then the object map, row-major, through their suffix convs
        scene = model._suf_vq_bg(model._vq_ema.lookup(tokens["scene"]))
        torch.testing.assert_close(context[:, 9], scene[:, :, 1, 1])
        obj = model._suf_vq_id(model._vq_ema.lookup(tokens["object"]))
        torch.testing.assert_close(context[:, 64 + 4 + 2], obj[:, :, 1, 2])
        # x is continuous: a perturbed sample decodes to other frames (no snapping back to the codes)
        assert not torch.allclose(model.decode_diffusion(x + 0.5, tokens["scene"], tokens["object"]), video)


def test_latent_cache_round_trip():
    model = _tiny()
    clips = _clips()
    with torch.no_grad():
        latents = model.encode_clips(clips)
        tokens = model._clip_tokens(clips)
        assert (
            latents.shape == (2, *model.latent_dims(32, 32)) == (2, 1, 64 + 16 + 8 * 4)
            and latents.dtype == torch.float32
        )
        assert torch.equal(latents, latents.round())
        split = model.split_latent(latents)
        assert all(torch.equal(split[name], tokens[name]) for name in tokens)
        torch.testing.assert_close(model.decode_clips(latents), model.decode_tokens(tokens), atol=0, rtol=0)
        video = clips.reshape(1, 16, 3, 32, 32)  # two clips of one video
        torch.testing.assert_close(model.decode(model.encode(video)), model.reconstruct(video))


def test_upstream_checkpoint_container_loads(tmp_path):
    model = _tiny(num_heads=1, head_dim=64)  # upstream's attention always has 64 dimensions per head
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module._discriminator.main.0.weight"] = torch.zeros(8, 24, 4, 4)  # skipped: not the autoencoder
    state["module.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    path = tmp_path / "MoCoVQVAE_wCD_shareCB_iter5.pth"
    torch.save({"state": state, "steps": 5}, path)
    loaded = load_autoencoder(path, arch={"resolution": 32})  # the weights do not tell the frame size
    assert loaded.type == "moso" and loaded.provenance["format"] == "moso"
    assert loaded.config == model.config
    clips = _clips()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_clips(clips), model.encode_clips(clips))


# --- training ------------------------------------------------------------------------------------------


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    from vpt.models.autoencoders.moso_objective import MosoObjective

    model = _tiny().train()
    objective = MosoObjective(
        model,
        LossConfig(
            reconstruction="l2",
            perceptual_weight=0.0,
            discriminator="patchgan",
            disc_layers=2,
            disc_channels=8,
            adaptive_weight=False,
            gan_weight=0.1,
            disc_start=0,
        ),
    ).train()
    optimizer = torch.optim.Adam([p for group in objective.param_groups() for p in group["params"]], lr=2e-3)
    batch = _clips(n=2).reshape(1, 16, 3, 32, 32).repeat(2, 1, 1, 1, 1)
    losses = []
    for _ in range(8):
        out = objective.loss(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["rec"]))
    assert {"rec", "codebook", "g_loss", "d_loss"} <= set(out)
    assert losses[-1] < 0.8 * losses[0]


def test_split_inputs_follow_the_step_schedule():
    from vpt.models.autoencoders.moso_objective import MosoObjective

    model = _tiny(split_input_steps=1).train()
    objective = MosoObjective(model, LossConfig(perceptual_weight=0.0, discriminator="none")).train()
    batch = _clips()
    objective.loss(batch)
    assert model.split_inputs  # step 0 < 1
    objective.loss(batch)
    assert not model.split_inputs


def test_other_discriminators_are_refused():
    from vpt.models.autoencoders.moso_objective import MosoObjective

    with pytest.raises(ConfigError, match="trains with 'patchgan'"):
        MosoObjective(_tiny(), LossConfig(perceptual_weight=0.0, discriminator="latte"))


@pytest.fixture(scope="module")
def shapes_16(tmp_path_factory):
    """`make-data shapes`: 6 videos of 16 frames (one clip each) at 32 x 32, as HDF5."""
    from data_helpers import shapes_h5

    return shapes_h5(tmp_path_factory.mktemp("shapes"), num_videos=6, frames=16, size=32)


TINY_SETTINGS = [
    "--set",
    "autoencoder.arch.num_hiddens=8",
    "--set",
    "autoencoder.arch.num_residual_hiddens=8",
    "--set",
    "autoencoder.arch.embedding_dim=4",
    "--set",
    "train.batch_size=1",
]


def test_train_ae_then_save_latents_records_the_token_layout(shapes_16, tmp_path, invoke):
    from vpt.commands.save_latents import encode_dataset
    from vpt.data.datasets import frames_to_tensor
    from vpt.data.h5 import VideoH5

    run = tmp_path / "run"
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIGS / "moso_shapes.yaml",
        "--data",
        shapes_16,
        "--run",
        run,
        *TINY_SETTINGS,
        "--set",
        "train.val_every=2",
        "--max-steps",
        "2",
    )
    assert code == 0, output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("codebook" in r for r in records) and any("val_psnr" in r for r in records)

    summary = encode_dataset(run, shapes_16, tmp_path / "latents")
    grids = {"scene": [8, 8], "object": [4, 4], "motion": [16, 8, 8]}
    length = 64 + 16 + 16 * 64
    assert summary["latent_shape"] == (1, length)
    latents = VideoH5(tmp_path / "latents" / "val")
    assert json.loads(latents.attrs["latent_layout"]) == grids
    assert json.loads(latents.attrs["autoencoder"])["layout"] == grids
    stored = torch.from_numpy(latents.read(0))[None]  # (1, 1 clip, 1, L)
    assert stored.shape == (1, 1, 1, length) and torch.equal(stored, stored.round())
    ae = load_autoencoder(run)
    video = frames_to_tensor(VideoH5(shapes_16 / "val").read(0))[None]  # (1, 16, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(stored, ae.encode(video))
        torch.testing.assert_close(ae.decode(stored), ae.reconstruct(video), atol=0, rtol=0)


def test_float16_latents_are_refused_for_token_ids(shapes_16, tmp_path, invoke):
    run = tmp_path / "run"
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIGS / "moso_shapes.yaml",
        "--data",
        shapes_16,
        "--run",
        run,
        *TINY_SETTINGS,
        "--set",
        "autoencoder.arch.num_embeddings=4096",
        "--set",
        "train.val_every=0",
        "--max-steps",
        "1",
    )
    assert code == 0, output
    code, output = invoke(
        "save-latents", "--ae", run, "--data", shapes_16, "--out", tmp_path / "latents", "--dtype", "float16"
    )
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert code != 0 and len(error) == 1 and "float16 cannot hold" in error[0], output


def test_train_ae_and_save_latents_with_neighbour_frames(shapes_16, tmp_path, invoke):
    """motion_context: neighbours trains on 8 + 2 frames and encodes frames 1 ... 8 of each 16-frame video."""
    from vpt.commands.save_latents import encode_dataset
    from vpt.data.datasets import frames_to_tensor
    from vpt.data.h5 import VideoH5

    run, neighbours = tmp_path / "run", ["--set", "autoencoder.arch.motion_context=neighbours"]
    arguments = ["--config", CONFIGS / "moso_shapes.yaml", "--data", shapes_16, *TINY_SETTINGS, "--max-steps", "2"]
    code, output = invoke(
        "train-ae", *arguments, "--run", run, *neighbours, "--set", "autoencoder.arch.frames=8",
        "--set", "data.frames=10", "--set", "train.val_every=2",
    )  # fmt: skip
    assert code == 0, output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_psnr" in r for r in records)
    encode_dataset(run, shapes_16, tmp_path / "latents")
    stored = torch.from_numpy(VideoH5(tmp_path / "latents" / "val").read(0))[None]  # (1, 1 clip, 1, L)
    ae = load_autoencoder(run)
    video = frames_to_tensor(VideoH5(shapes_16 / "val").read(0))[None]  # (1, 16, 3, 32, 32)
    with torch.no_grad():
        assert stored.shape[1] == 1 and torch.equal(stored, ae.encode(video[:, :10]))
    for setting, needle in (
        ("data.frames=16", "data.frames=16 is not a multiple of the 16 frames moso encodes at once, plus the 1"),
        ("autoencoder.arch.motion_context=sideways", "motion_context"),
    ):
        code, output = invoke("train-ae", *arguments, "--run", tmp_path / "bad", *neighbours, "--set", setting)
        error = [line for line in output.splitlines() if line.startswith("error:")]
        assert code != 0 and len(error) == 1 and needle in error[0], output


def test_train_ae_size_mistake_is_one_line(shapes_16, tmp_path, invoke):
    code, output = invoke(
        "train-ae",
        "--config",
        CONFIGS / "moso_shapes.yaml",
        "--data",
        shapes_16,
        "--run",
        tmp_path / "run",
        *TINY_SETTINGS,
        "--set",
        "autoencoder.arch.resolution=36",
        "--max-steps",
        "1",
    )
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert code != 0 and len(error) == 1 and "resolution 36 is not divisible by 16" in error[0], output
