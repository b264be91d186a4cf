"""Bits per byte: a loss that compares across tokenizers.

Nats per token depend on how much text a token holds (a byte, a BPE piece, a GPT-2 word), so a
byte model and a BPE model cannot be compared by val_loss. Dividing the summed loss by the UTF-8
bytes of the text the targets spell (and by ln 2) gives bits per byte, which does not depend on
the tokenizer. The loss of end-of-text targets stays in the sum while they count 0 bytes: the
model has to predict where a document ends, and that costs bits like any other prediction.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def token_byte_lengths(tokenizer) -> torch.LongTensor:
    """The number of UTF-8 bytes each token id stands for (vocab_size entries); special tokens 0.

    Exact for the byte tokenizer and for byte-level BPE (bpe, gpt2), whose tokens may be parts of
    a character; other tokenizers are measured by decoding each id alone, which is exact when
    their tokens are whole characters.
    """
    from b6lab.plugins.tokenizers import ByteTokenizer, HFTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        lengths = torch.ones(tokenizer.vocab_size, dtype=torch.long)
    elif isinstance(tokenizer, HFTokenizer):
        lengths = _hf_lengths(tokenizer.tokenizer, tokenizer.vocab_size)
    else:
        lengths = torch.tensor([len(tokenizer.decode([i]).encode("utf-8")) for i in range(tokenizer.vocab_size)])
    lengths[tokenizer.eos_id] = 0
    return lengths


def bits_per_byte(loss_nats_sum: float, n_bytes: int) -> float:
    """Summed next-token loss in nats over the bytes those targets spell, in bits per byte."""
    if n_bytes <= 0:
        raise ValueError(f"bits per byte needs at least one byte of text, got n_bytes={n_bytes}")
    return loss_nats_sum / (math.log(2) * n_bytes)


def _hf_lengths(tokenizer, vocab_size: int) -> torch.LongTensor:
    from tokenizers import decoders

    byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
    lengths = torch.zeros(vocab_size, dtype=torch.long)
    for i in range(vocab_size):
        piece = tokenizer.id_to_token(i)
        if piece is None:
            continue
        if byte_level:  # each character of a byte-level token stands for one byte
            lengths[i] = len(piece) if all(c in _byte_level_alphabet() for c in piece) else len(piece.encode("utf-8"))
        else:
            lengths[i] = len(tokenizer.decode([i], skip_special_tokens=False).encode("utf-8"))
    for i, added in tokenizer.get_added_tokens_decoder().items():
        if added.special and i < vocab_size:
            lengths[i] = 0
    return lengths


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> frozenset[str]:
    from tokenizers import pre_tokenizers

    return frozenset(pre_tokenizers.ByteLevel.alphabet())
