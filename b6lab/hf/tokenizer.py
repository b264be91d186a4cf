"""b6lab's tokenizers as transformers tokenizers (PreTrainedTokenizerFast over a `tokenizers` JSON).

A tokenizer exports when it gives its `tokenizers.Tokenizer` (`to_fast_tokenizer()`, part of the
tokenizer contract; the byte, bpe and gpt2 built-ins do). b6lab encodes the text "<|endoftext|>"
as text, never as the end-of-text id (only the packer ends documents), so the exported tokenizer
splits special tokens the same way (split_special_tokens).
"""

from __future__ import annotations

from b6lab.data.documents import EOS_TOKEN
from b6lab.errors import UsageError


def hf_tokenizer(tokenizer, model_max_length: int):
    from transformers import PreTrainedTokenizerFast

    to_fast = getattr(tokenizer, "to_fast_tokenizer", None)
    if not callable(to_fast):
        raise UsageError(f"the tokenizer ({type(tokenizer).__name__}) has no Hugging Face form: it lacks "
                         "to_fast_tokenizer(), which export needs (plugins/README.md, tokenizer)")
    return PreTrainedTokenizerFast(tokenizer_object=to_fast(), eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   split_special_tokens=True, model_max_length=model_max_length)


def byte_tokenizer():
    """b6lab's byte tokenizer (id = byte value, id 0 ends documents) as a byte-level BPE without merges:
    the byte-level pre-tokenizer maps each byte to one symbol, and each symbol's id is its byte.
    Byte 0's symbol is renamed to the end-of-text token, so a NUL in the text is dropped, as b6lab does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {symbol: byte for byte, symbol in bytes_to_unicode().items() if byte != 0}
    vocab[EOS_TOKEN] = 0
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer
