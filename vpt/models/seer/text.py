"""Seer's text path: CLIP tokenizer + CLIPTextModel, run with the padding attention mask (spec section 4, P19).

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

    Its merges are learned here by `tokenizers`' BPE trainer on `BUILTIN_WORDS` (deterministic), so
    each of those words is one token; every byte symbol, alone and word-final, is in the vocabulary.
    """
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.train_from_iterator(BUILTIN_WORDS, trainers.BpeTrainer(vocab_size=100_000, initial_alphabet=symbols,
                                                               end_of_word_suffix="</w>", show_progress=False))
    learned = json.loads(bpe.to_str())["model"]
    vocab = ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]
    known = set(vocab)
    vocab += [token for token in sorted(learned["vocab"], key=learned["vocab"].get) if token not in known]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=merges, model_max_length=max_length)


def builtin_text_encoder(vocab_size: int, hidden_size: int, layers: int, heads: int, max_length: int):
    """A small random CLIP text transformer (frozen like SD's; FSText learns on top of it)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(config)


def encode_text(tokenizer, text_encoder, prompts: list[str], device: torch.device) -> torch.Tensor:
    """prompts -> CLIP last hidden state (B, L, D), padded to the tokenizer's max length, mask passed (P19)."""
    tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        return text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))[0]
