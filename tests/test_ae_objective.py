"""The autoencoder objective: one optimizer, yet each GAN player only gets its own gradient; taming's
adaptive weight and start step; codebook (legacy beta) and KL terms; LPIPS optional."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vpt.models.autoencoders import build_autoencoder
from vpt.models.autoencoders.objective import LossConfig, discriminator_loss, generator_loss, load_perceptual
from vpt.models.autoencoders.quantize import VectorQuantizer

TINY_VQGAN = dict(
    ch=8,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[],
    resolution=16,
    z_channels=4,
    embed_dim=4,
    n_embed=16,
    norm_groups=4,
)


def _objective(**loss):
    torch.manual_seed(0)
    autoencoder = build_autoencoder("vqgan", TINY_VQGAN)
    cfg = LossConfig(**{"perceptual_weight": 0.0, "disc_layers": 2, "disc_channels": 8, "disc_start": 0, **loss})
    return autoencoder.build_objective(cfg)


def _batch(seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(4, 1, 3, 16, 16, generator=generator) * 2 - 1}


def _grads(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in module.named_parameters()}


def test_generator_term_never_reaches_the_discriminator_and_vice_versa():
    objective = _objective(adaptive_weight=False, gan_weight=0.7, disc_factor=0.5)
    video = objective.autoencoder.to_clips(_batch()["video"])[:, 0]  # (N, C, H, W)
    fake, _ = objective.autoencoder.forward_train_images(video)

    # the generator's adversarial term alone: gradient on the autoencoder, none on D
    generator_loss("hinge", objective._frozen_discriminator(fake)).backward()
    assert all(p.grad is None for p in objective.discriminator.parameters())
    assert objective.autoencoder.last_layer().grad.abs().sum() > 0
    objective.zero_grad(set_to_none=True)

    # the discriminator term alone: gradient on D, none on the autoencoder
    fake, _ = objective.autoencoder.forward_train_images(video)
    discriminator_loss("hinge", objective.discriminator(video), objective.discriminator(fake.detach())).backward()
    assert all(p.grad is None for p in objective.autoencoder.parameters())
    assert all(p.grad is not None for p in objective.discriminator.parameters())
    assert objective.discriminator.main[0].weight.grad.abs().sum() > 0


def test_one_backward_gives_each_player_exactly_its_own_objective_gradient():
    objective = _objective(adaptive_weight=False, gan_weight=0.7, disc_factor=0.5)
    batch = _batch()
    objective.loss(batch)["loss"].backward()
    total = _grads(objective)
    objective.zero_grad(set_to_none=True)

    ae, disc = objective.autoencoder, objective.discriminator
    video = ae.to_clips(batch["video"])[:, 0]
    fake, regularizers = ae.forward_train_images(video)
    ae_only = (fake - video).abs().mean() + regularizers["codebook"] + 0.7 * generator_loss("hinge", disc(fake))
    ae_grads = torch.autograd.grad(ae_only, list(ae.parameters()))
    d_only = 0.5 * discriminator_loss("hinge", disc(video), disc(fake.detach()))
    d_grads = torch.autograd.grad(d_only, list(disc.parameters()))
    for (name, _), expected in zip(ae.named_parameters(), ae_grads):
        torch.testing.assert_close(total[f"autoencoder.{name}"], expected, atol=1e-6, rtol=1e-4)
    for (name, _), expected in zip(disc.named_parameters(), d_grads):
        torch.testing.assert_close(total[f"discriminator.{name}"], expected, atol=1e-6, rtol=1e-4)


def test_adaptive_weight_is_tamings_gradient_norm_ratio():
    objective = _objective(adaptive_weight=True, gan_weight=0.8)
    batch = _batch()
    logs = objective.loss(batch)
    ae = objective.autoencoder
    video = ae.to_clips(batch["video"])[:, 0]
    fake, _ = ae.forward_train_images(video)
    nll = (fake - video).abs().mean()
    g_loss = generator_loss("hinge", objective._frozen_discriminator(fake))
    last = ae.last_layer()
    ratio = torch.autograd.grad(nll, last, retain_graph=True)[0].norm() / (
        torch.autograd.grad(g_loss, last)[0].norm() + 1e-4
    )
    torch.testing.assert_close(logs["gan_weight"], ratio.clamp(0, 1e4) * 0.8, atol=1e-6, rtol=1e-4)


def test_gan_terms_switch_on_at_disc_start_and_the_clock_survives_a_checkpoint():
    objective = _objective(disc_start=2, adaptive_weight=False, gan_weight=0.5)
    for step in range(3):
        objective.zero_grad(set_to_none=True)
        logs = objective.loss(_batch(step))
        logs["loss"].backward()
        d_grad = sum(p.grad.abs().sum() for p in objective.discriminator.parameters())
        ae_part = logs["rec"] + logs["codebook"]
        if step < 2:
            torch.testing.assert_close(logs["loss"].detach(), ae_part, atol=1e-6, rtol=1e-5)
            assert d_grad == 0
        else:
            assert d_grad > 0
            expected = ae_part + 0.5 * logs["g_loss"] + logs["d_loss"]
            torch.testing.assert_close(logs["loss"].detach(), expected, atol=1e-6, rtol=1e-5)
    assert int(objective.state_dict()["micro_steps"]) == 3
    resumed = _objective(disc_start=2)
    resumed.load_state_dict(objective.state_dict())
    assert resumed.step == 3


def test_grad_accumulation_counts_optimizer_steps():
    torch.manual_seed(0)
    objective = build_autoencoder("vqgan", TINY_VQGAN).build_objective(
        LossConfig(perceptual_weight=0.0, disc_layers=2, disc_channels=8, disc_start=1), grad_accum=2
    )
    objective.loss(_batch())
    objective.loss(_batch())
    assert objective.step == 1


def test_param_groups_give_the_discriminator_its_learning_rate_scale():
    objective = _objective(disc_lr_scale=0.25)
    groups = objective.param_groups()
    assert [g["lr_scale"] for g in groups] == [1.0, 0.25]
    assert sum(len(g["params"]) for g in groups) == len(list(objective.parameters()))
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in objective.discriminator.parameters()}


@pytest.mark.parametrize("legacy", [True, False])
def test_codebook_loss_places_beta_as_taming(legacy):
    quantizer = VectorQuantizer(8, 4, beta=0.25, legacy=legacy)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = quantizer(z)
    out.loss.backward()
    codes = quantizer.embedding.weight[out.indices].permute(0, 3, 1, 2)
    n = z.numel()
    encoder_weight, codebook_weight = (1.0, 0.25) if legacy else (0.25, 1.0)
    torch.testing.assert_close(z.grad, encoder_weight * 2 * (z - codes).detach() / n)
    expected_codebook = torch.zeros_like(quantizer.embedding.weight)
    expected_codebook.index_add_(
        0, out.indices.flatten(), (codebook_weight * 2 * (codes - z) / n).detach().permute(0, 2, 3, 1).reshape(-1, 4)
    )
    torch.testing.assert_close(quantizer.embedding.weight.grad, expected_codebook)
    # straight-through: the forward value is the code, the gradient of the output w.r.t. z is identity
    torch.testing.assert_close(out.quantized, codes.detach())


def test_kl_vae_objective_is_l2_plus_weighted_kl():
    torch.manual_seed(0)
    arch = dict(
        in_channels=3,
        down_channels=[8, 8],
        mid_channels=[8],
        down_sample=[True],
        attn_down=[False],
        norm_channels=4,
        num_heads=1,
        num_down_layers=1,
        num_mid_layers=1,
        num_up_layers=1,
    )
    vae = build_autoencoder("latte-vae", arch)
    objective = vae.build_objective(
        LossConfig(reconstruction="l2", perceptual_weight=0.0, kl_weight=0.01, discriminator="none")
    )
    batch = _batch()
    torch.manual_seed(5)
    logs = objective.loss(batch)
    torch.manual_seed(5)
    images = batch["video"][:, 0]
    reconstruction, regularizers = vae.forward_train_images(images)
    mean, logvar = vae.moments(images).chunk(2, dim=1)
    kl = 0.5 * (logvar.exp() + mean**2 - 1 - logvar).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(regularizers["kl"], kl)
    torch.testing.assert_close(logs["loss"], ((reconstruction - images) ** 2).mean() + 0.01 * kl)
    assert objective.param_groups()[0]["params"] and len(objective.param_groups()) == 1


class _SquaredDistance(nn.Module):
    """Stands in for LPIPS (same call signature: two (N, 3, H, W) batches -> (N,))."""

    def forward(self, a, b):
        assert a.shape[1] == 3
        return (a - b).pow(2).flatten(1).mean(1)


def test_perceptual_term_is_added_and_grayscale_frames_are_shown_as_rgb():
    torch.manual_seed(0)
    arch = dict(
        in_channels=1,
        down_channels=[8, 8],
        mid_channels=[8],
        down_sample=[True],
        attn_down=[False],
        norm_channels=4,
        num_heads=1,
        num_down_layers=1,
        num_mid_layers=1,
        num_up_layers=1,
    )
    vae = build_autoencoder("latte-vae", arch)
    objective = vae.build_objective(
        LossConfig(perceptual_weight=2.0, kl_weight=0.0, discriminator="none"), perceptual=_SquaredDistance()
    )
    torch.manual_seed(5)
    logs = objective.loss(_batch())  # RGB data, 1-channel model: the first channel is used
    torch.testing.assert_close(logs["loss"], logs["rec"] + 2.0 * logs["lpips"])
    assert logs["lpips"] > 0


class _DropoutSeen(_SquaredDistance):
    """Records the head dropout each call asked for."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def forward(self, a, b, *, head_dropout=0.0):
        self.asked.append(head_dropout)
        return super().forward(a, b)


def test_lpips_head_dropout_applies_only_while_training():
    torch.manual_seed(0)
    autoencoder = build_autoencoder("vqgan", TINY_VQGAN)
    perceptual = _DropoutSeen()
    objective = autoencoder.build_objective(
        LossConfig(perceptual_weight=1.0, lpips_head_dropout=0.5, discriminator="none"), perceptual=perceptual
    )
    objective.train().loss(_batch())
    objective.eval().loss(_batch())
    assert perceptual.asked == [0.5, 0.0]
    with pytest.raises(ValueError, match="lpips_head_dropout"):
        LossConfig(lpips_head_dropout=1.0)


def test_missing_lpips_backbone_disables_the_term_with_a_reason(tmp_path):
    network, reason = load_perceptual(LossConfig(lpips_backbone=str(tmp_path / "vgg16.pth")))
    assert network is None and "vgg16.pth" in reason
    assert load_perceptual(LossConfig(perceptual_weight=0.0)) == (None, "loss.perceptual_weight is 0")
