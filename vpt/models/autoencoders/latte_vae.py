"""The frame VAE of the Latte re-implementation VideoGeneration-PyTorch, with its
parameter names, so its `vae_autoencoder_ckpt.pth` (a bare state dict) loads as it is.

A KL-regularised conv autoencoder applied per frame. Encoder: conv_in, DownBlocks (ResNet layers,
optional attention, 4x4 stride-2 conv), MidBlocks, GN-SiLU-conv to 2z channels, 1x1 pre_quant_conv,
split into mean and log-variance (no clamp). Decoder: 1x1 post_quant_conv, conv_in, MidBlocks,
UpBlocks (4x4 stride-2 transposed conv first), GN-SiLU-conv; no output activation.
`encode` returns the posterior mean, `encode_posterior` mean and log-variance (upstream samples its
DiT's training latents from them); training decodes a reparameterised sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import nn

from vpt.models.autoencoders.base import FrameAutoencoder, count_indices
from vpt.models.autoencoders.layers import MultiheadSelfAttention


def _resnet_half(groups: int, in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.GroupNorm(groups, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
    )


class ResnetStack(nn.Module):
    """`num_resnets` ResNet layers (`h = conv(SiLU(GN(conv(SiLU(GN(x)))))) + conv1x1(x)`; the 1x1 conv
    exists even when widths match), with GN + multi-head self-attention after some of them.

    `attend_after` lists the ResNet layers followed by attention; DownBlock/UpBlock attend after every
    layer (when enabled), MidBlock after every layer but the last, which is the order upstream runs.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_resnets: int,
        attend_after: list[int],
        groups: int,
        num_heads: int,
    ):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_resnets
        self.resnet_conv_first = nn.ModuleList(
            _resnet_half(groups, widths[i], out_channels) for i in range(num_resnets)
        )
        self.resnet_conv_second = nn.ModuleList(
            _resnet_half(groups, out_channels, out_channels) for _ in range(num_resnets)
        )
        self.attend_after = attend_after
        if attend_after:
            self.attention_norms = nn.ModuleList(nn.GroupNorm(groups, out_channels) for _ in attend_after)
            self.attentions = nn.ModuleList(MultiheadSelfAttention(out_channels, num_heads) for _ in attend_after)
        self.residual_input_conv = nn.ModuleList(nn.Conv2d(widths[i], out_channels, 1) for i in range(num_resnets))

    def resnets(self, x: torch.Tensor) -> torch.Tensor:
        attention_index = {layer: i for i, layer in enumerate(self.attend_after)}
        for i in range(len(self.resnet_conv_first)):
            x = self.resnet_conv_second[i](self.resnet_conv_first[i](x)) + self.residual_input_conv[i](x)
            if i in attention_index:
                x = self._attend(x, attention_index[i])
        return x

    def _attend(self, x: torch.Tensor, index: int) -> torch.Tensor:
        height = x.shape[2]
        tokens = rearrange(self.attention_norms[index](x), "b c h w -> b (h w) c")
        return x + rearrange(self.attentions[index](tokens), "b (h w) c -> b c h w", h=height)


class DownBlock(ResnetStack):
    def __init__(self, in_channels, out_channels, *, down_sample, num_layers, attn, groups, num_heads):
        super().__init__(
            in_channels, out_channels, num_layers, list(range(num_layers)) if attn else [], groups, num_heads
        )
        if down_sample:
            self.down_sample_conv = nn.Conv2d(out_channels, out_channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets(x)
        return self.down_sample_conv(x) if hasattr(self, "down_sample_conv") else x


class MidBlock(ResnetStack):
    """ResNet, then `num_layers` x [attention, ResNet]."""

    def __init__(self, in_channels, out_channels, *, num_layers, groups, num_heads):
        super().__init__(in_channels, out_channels, num_layers + 1, list(range(num_layers)), groups, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets(x)


class UpBlock(ResnetStack):
    def __init__(self, in_channels, out_channels, *, up_sample, num_layers, attn, groups, num_heads):
        super().__init__(
            in_channels, out_channels, num_layers, list(range(num_layers)) if attn else [], groups, num_heads
        )
        if up_sample:
            self.up_sample_conv = nn.ConvTranspose2d(in_channels, in_channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "up_sample_conv"):
            x = self.up_sample_conv(x)
        return self.resnets(x)


@dataclass
class LatteVAEConfig:
    """VideoGeneration-PyTorch's `autoencoder_params` (defaults: config/ucf.yaml) plus `in_channels`
    (upstream `frame_channels`). `codebook_size` of upstream configs is unused and not taken."""

    in_channels: int = 3
    z_channels: int = 4
    down_channels: list[int] = field(default_factory=lambda: [128, 256, 384, 512])
    mid_channels: list[int] = field(default_factory=lambda: [512])
    down_sample: list[bool] = field(default_factory=lambda: [True, True, True])
    attn_down: list[bool] = field(default_factory=lambda: [False, False, False])
    norm_channels: int = 32
    num_heads: int = 4
    num_down_layers: int = 2
    num_mid_layers: int = 2
    num_up_layers: int = 2

    def __post_init__(self) -> None:
        levels = len(self.down_channels) - 1
        if self.mid_channels[0] != self.down_channels[-1] or self.mid_channels[-1] != self.down_channels[-1]:
            raise ValueError("autoencoder.arch.mid_channels must start and end with down_channels[-1]")
        if len(self.down_sample) != levels or len(self.attn_down) != levels:
            raise ValueError(
                f"autoencoder.arch.down_sample and attn_down need {levels} entries (len(down_channels) - 1)"
            )


class LatteVAE(FrameAutoencoder):
    type = "latte-vae"
    Config = LatteVAEConfig
    presets = {  # VideoGeneration-PyTorch config/ucf.yaml and config/mnist.yaml
        "vg-ucf": dict(
            in_channels=3,
            down_channels=[128, 256, 384, 512],
            mid_channels=[512],
            down_sample=[True, True, True],
            attn_down=[False, False, False],
            num_heads=4,
            num_down_layers=2,
            num_mid_layers=2,
            num_up_layers=2,
        ),
        "vg-mnist": dict(
            in_channels=1,
            down_channels=[32, 64, 128],
            mid_channels=[128],
            down_sample=[True, True],
            attn_down=[False, False],
            num_heads=16,
            num_down_layers=1,
            num_mid_layers=1,
            num_up_layers=1,
        ),
    }

    @classmethod
    def recognizes_state(cls, state: dict[str, torch.Tensor]) -> bool:
        return "encoder_conv_in.weight" in state and "pre_quant_conv.weight" in state

    @classmethod
    def arch_from_state(cls, state: dict[str, torch.Tensor]) -> dict:
        """Widths, levels and layer counts; GroupNorm groups and attention heads leave no trace (`arch`)."""
        levels = count_indices(state, r"encoder_layers\.(\d+)\.")
        mids = count_indices(state, r"encoder_mids\.(\d+)\.")
        down = [state["encoder_conv_in.weight"].shape[0]] + [
            state[f"encoder_layers.{i}.resnet_conv_first.0.2.weight"].shape[0] for i in range(levels)
        ]
        inferred = dict(
            in_channels=state["encoder_conv_in.weight"].shape[1],
            z_channels=state["post_quant_conv.weight"].shape[0],
            down_channels=down,
            mid_channels=[down[-1]]
            + [state[f"encoder_mids.{i}.resnet_conv_first.0.2.weight"].shape[0] for i in range(mids)],
            down_sample=[f"encoder_layers.{i}.down_sample_conv.weight" in state for i in range(levels)],
            attn_down=[f"encoder_layers.{i}.attentions.0.in_proj_weight" in state for i in range(levels)],
            num_down_layers=count_indices(state, r"encoder_layers\.0\.resnet_conv_first\.(\d+)\."),
            num_up_layers=count_indices(state, r"decoder_layers\.0\.resnet_conv_first\.(\d+)\."),
        )
        if mids:
            inferred["num_mid_layers"] = count_indices(state, r"encoder_mids\.0\.attentions\.(\d+)\.")
        return inferred

    has_posterior = True

    def __init__(self, config: LatteVAEConfig):
        super().__init__(config)
        c = config
        blocks = dict(groups=c.norm_channels, num_heads=c.num_heads)
        self.encoder_conv_in = nn.Conv2d(c.in_channels, c.down_channels[0], 3, padding=1)
        self.encoder_layers = nn.ModuleList(
            DownBlock(
                c.down_channels[i],
                c.down_channels[i + 1],
                down_sample=c.down_sample[i],
                num_layers=c.num_down_layers,
                attn=c.attn_down[i],
                **blocks,
            )
            for i in range(len(c.down_channels) - 1)
        )
        self.encoder_mids = nn.ModuleList(
            MidBlock(c.mid_channels[i], c.mid_channels[i + 1], num_layers=c.num_mid_layers, **blocks)
            for i in range(len(c.mid_channels) - 1)
        )
        self.encoder_norm_out = nn.GroupNorm(c.norm_channels, c.down_channels[-1])
        self.encoder_conv_out = nn.Conv2d(c.down_channels[-1], 2 * c.z_channels, 3, padding=1)
        self.pre_quant_conv = nn.Conv2d(2 * c.z_channels, 2 * c.z_channels, 1)

        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 1)
        self.decoder_conv_in = nn.Conv2d(c.z_channels, c.mid_channels[-1], 3, padding=1)
        self.decoder_mids = nn.ModuleList(
            MidBlock(c.mid_channels[i], c.mid_channels[i - 1], num_layers=c.num_mid_layers, **blocks)
            for i in reversed(range(1, len(c.mid_channels)))
        )
        self.decoder_layers = nn.ModuleList(
            UpBlock(
                c.down_channels[i],
                c.down_channels[i - 1],
                up_sample=c.down_sample[i - 1],
                num_layers=c.num_up_layers,
                attn=c.attn_down[i - 1],
                **blocks,
            )
            for i in reversed(range(1, len(c.down_channels)))
        )
        self.decoder_norm_out = nn.GroupNorm(c.norm_channels, c.down_channels[0])
        self.decoder_conv_out = nn.Conv2d(c.down_channels[0], c.in_channels, 3, padding=1)

    def latent_dims(self, height: int, width: int) -> tuple[int, ...]:
        factor = 2 ** sum(self.config.down_sample)
        return (self.config.z_channels, height // factor, width // factor)

    def moments(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> mean || log-variance on the channel axis (N, 2z, h, w): upstream's `encoder_output`."""
        h = self.encoder_conv_in(images)
        for block in [*self.encoder_layers, *self.encoder_mids]:
            h = block(h)
        h = self.encoder_conv_out(nn.functional.silu(self.encoder_norm_out(h)))
        return self.pre_quant_conv(h)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.moments(images).chunk(2, dim=1)[0]

    def posterior_clips(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.moments(clips[:, 0]).chunk(2, dim=1)
        return mean, logvar

    def decode_images(self, latents: torch.Tensor) -> torch.Tensor:
        h = self.decoder_conv_in(self.post_quant_conv(latents))
        for block in [*self.decoder_mids, *self.decoder_layers]:
            h = block(h)
        return self.decoder_conv_out(nn.functional.silu(self.decoder_norm_out(h)))

    def forward_train_images(self, images):
        mean, logvar = self.moments(images).chunk(2, dim=1)
        sample = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        # KL to N(0, I): sum over (C, H, W), mean over the batch (upstream's definition).
        kl = 0.5 * torch.sum(torch.exp(logvar) + mean**2 - 1 - logvar, dim=(1, 2, 3)).mean()
        return self.decode_images(sample), {"kl": kl}

    def last_layer(self) -> nn.Parameter:
        return self.decoder_conv_out.weight
