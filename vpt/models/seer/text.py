"""Seer's text path: CLIP tokenizer + CLIPTextModel, run with the padding attention mask, as upstream.

With Stable Diffusion weights both come from the SD folder. Without them (tests, the tiny config) a
small random `CLIPTextModel` is built from a `CLIPTextConfig` and the tokenizer is a real
`CLIPTokenizer` whose vocabulary is made here: the 256 byte symbols (alone and word-final), plus
BPE merges learned from a short built-in word list, so common instruction words are single tokens
and any other text still tokenizes (by pieces and characters). Nothing is downloaded.
"""

from __future__ import annotations

import torch

# Words that become single tokens in the built-in tokenizer: motion / manipulation instructions.
BUILTIN_WORDS = """
a an the of to from into onto in on off at by with and or is are it its this that something
left right up down forward backward away towards toward around over under behind front top bottom
move moves moving moved stay stays still fall falls falling rise rises push pushes pushing pull pulls
pulling put puts putting take takes taking pick picks picking lift lifts lifting drop drops dropping
open opens opening close closes closing turn turns turning rotate rotates spin spins roll rolls
slide slides throw throws grow grows shrink shrinks bounce bounces hold holds cover covers uncover
pour pours fold folds unfold wipe wipes stir stirs cut cuts wash washes place places
red green blue yellow orange purple pink white black gray grey cyan magenta brown
square squares circle circles triangle triangles ball balls box boxes disk dot rectangle shape shapes object
book cup bottle door drawer lid cloth towel pot pan spoon knife fork plate bowl table counter sink
tap fridge cupboard bag paper pen phone laptop block blocks toy robot gripper hand camera
""".split()


def builtin_tokenizer(max_length: int):
    """A `CLIPTokenizer` (byte-level BPE, CLIP's normaliser and specials) needing no vocabulary files.

    Its merges are learned here from `BUILTIN_WORDS` (`learn_merges`), so each of those words is one
    token; every byte symbol, alone and word-final, is in the vocabulary.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    merges = learn_merges(BUILTIN_WORDS)
    known = set(vocab)
    for left, right in merges:
        if left + right not in known:
            vocab.append(left + right)
            known.add(left + right)
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges, model_max_length=max_length)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges that turn every word into one token: repeatedly merge the most frequent adjacent
    pair, ties broken by the pair itself. Deterministic (a trainer that breaks ties by hash order gives
    a different vocabulary per process, and with it different text embeddings for the same seed)."""
    from collections import Counter

    spelled = [[*word[:-1], word[-1] + "</w>"] for word in dict.fromkeys(words)]  # ASCII: bytes are chars
    merges = []
    while True:
        pairs = Counter(pair for parts in spelled for pair in zip(parts, parts[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        spelled = [_merge(parts, best) for parts in spelled]


def _merge(parts: list[str], pair: tuple[str, str]) -> list[str]:
    merged, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            merged.append(parts[i] + parts[i + 1])
            i += 2
        else:
            merged.append(parts[i])
            i += 1
    return merged


def builtin_text_encoder(vocab_size: int, hidden_size: int, layers: int, heads: int, max_length: int):
    """A small random CLIP text transformer (frozen like SD's; FSText learns on top of it)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def encode_text(tokenizer, text_encoder, prompts: list[str], device: torch.device) -> torch.Tensor:
    """prompts -> CLIP last hidden state (B, L, D), padded to the tokenizer's max length, mask passed."""
    tokens = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        return text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
