"""FSText: decomposes one CLIP text embedding into one sub-instruction embedding per frame.

A learnable query plus a (frames x tokens) position table is refined by layers of
[self-attention within each frame -> cross-attention to the CLIP tokens -> FF] and
[causal attention over frames per token position, rotary frame indices -> FF].
Module names equal upstream's FSTextTransformer, so released `pytorch_model_1.bin` files load as they are.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock
from einops import rearrange
from torch import nn

from vpt.models.seer.layers import CausalTemporalBlock, nearest_frames, use_diffusers_attention


class FSTextLayer(nn.Module):
    """`trf_blocks.<l>`: block 0 text-sequential (per frame + cross to CLIP), block 1 temporal (causal over frames)."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(dim, heads, dim // heads, cross_attention_dim=context_dim, activation_fn="geglu"),
                CausalTemporalBlock(dim, heads, dim // heads),
            ]
        )

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:  # x (B, F, L, D); text (B, L_ctx, D_ctx)
        batch, frames, tokens, _ = x.shape
        h = rearrange(x, "b f l d -> (b f) l d")
        # Every frame's queries see the same CLIP tokens, so repeating the context per frame equals
        # upstream's single cross-attention over all F*L queries.
        h = self.transformer_blocks[0](h, encoder_hidden_states=text.repeat_interleave(frames, dim=0))
        h = rearrange(h, "(b f) l d -> (b l) f d", b=batch)
        h = self.transformer_blocks[1](h, frames, 1, 1)
        return rearrange(h, "(b l) f d -> b f l d", b=batch)


class FSText(nn.Module):
    """(B, L, D_ctx) CLIP last hidden state -> (B, F, L, D) per-frame text; F may differ from the table's frames."""

    def __init__(
        self,
        dim: int = 768,
        heads: int = 8,
        layers: int = 8,
        pos_frames: int = 16,
        max_tokens: int = 1024,
        context_dim: int = 768,
    ):
        super().__init__()
        # Both zero-initialised as upstream; `fstext_init` or training fills them.
        self.learnable_query = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_frames, max_tokens, dim))
        self.trf_blocks = nn.ModuleList(FSTextLayer(dim, heads, context_dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        use_diffusers_attention(self)

    def forward(self, text: torch.Tensor, num_frames: int) -> torch.Tensor:
        batch, tokens, _ = text.shape
        if tokens > self.pos_embed.shape[2]:
            raise ValueError(f"FSText holds positions for {self.pos_embed.shape[2]} tokens, got {tokens}")
        positions = nearest_frames(self.pos_embed[:, :, :tokens], num_frames)  # (1, F, L, D), upstream's nearest resize
        x = self.learnable_query.expand(batch, num_frames, tokens, -1) + positions
        for layer in self.trf_blocks:
            x = layer(x, text)
        return self.norm(x)
