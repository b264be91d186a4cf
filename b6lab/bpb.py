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
    """The number of UTF-8 bytes each token id stands for (vocab_size entries); end-of-text 0.

    A tokenizer that knows it says so (`token_byte_lengths()`, part of the tokenizer contract:
    exact for bytes and byte-level BPE, whose tokens may be parts of a character); any other is
    measured by decoding each id alone, which is exact when its tokens are whole characters.
    """
    own = getattr(tokenizer, "token_byte_lengths", None)
    if callable(own):
        lengths = torch.as_tensor(own(), dtype=torch.long).clone()
    else:
        lengths = torch.tensor([len(tokenizer.decode([i]).encode("utf-8")) for i in range(tokenizer.vocab_size)])
    if lengths.shape != (tokenizer.vocab_size,):
        raise ValueError(f"token_byte_lengths() gave {tuple(lengths.shape)} lengths for a vocabulary of "
                         f"{tokenizer.vocab_size}: one per token id is needed")
    lengths[tokenizer.eos_id] = 0
    return lengths


def bits_per_byte(loss_nats_sum: float, n_bytes: int) -> float:
    """Summed next-token loss in nats over the bytes those targets spell, in bits per byte."""
    if n_bytes <= 0:
        raise ValueError(f"bits per byte needs at least one byte of text, got n_bytes={n_bytes}")
    return loss_nats_sum / (math.log(2) * n_bytes)


def fast_tokenizer_byte_lengths(tokenizer, vocab_size: int) -> torch.LongTensor:
    """token_byte_lengths of a `tokenizers.Tokenizer`: byte-level ones count their symbols (one a
    byte), others decode each id; added special tokens 0. For tokenizer plugins that wrap one."""
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
