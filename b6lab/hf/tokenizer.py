"""b6lab's tokenizers as transformers tokenizers (PreTrainedTokenizerFast over a `tokenizers` JSON).

b6lab encodes the text "<|endoftext|>" as text, never as the end-of-text id (only the packer ends
documents), so the exported tokenizer splits special tokens the same way (split_special_tokens).
"""

from __future__ import annotations

from b6lab.errors import UsageError
from b6lab.plugins.tokenizers import EOS_TOKEN, ByteTokenizer, HFTokenizer


def hf_tokenizer(tokenizer, model_max_length: int):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, ByteTokenizer):
        backend = byte_tokenizer()
    elif isinstance(tokenizer, HFTokenizer):
        backend = Tokenizer.from_str(tokenizer.tokenizer.to_str())  # a copy: the wrapped one stays as it is
    else:
        raise UsageError(f"the tokenizer ({type(tokenizer).__name__}) has no Hugging Face form; "
                         "the byte, bpe and gpt2 tokenizers export")
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   split_special_tokens=True, model_max_length=model_max_length)


def byte_tokenizer():
    """b6lab's byte tokenizer (id = byte value, id 0 ends documents) as a byte-level BPE without merges:
    the byte-level pre-tokenizer maps each byte to one symbol, and each symbol's id is its byte.
    Byte 0's symbol is renamed to the end-of-text token, so a NUL in the text is dropped, as b6lab does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {symbol: byte for byte, symbol in bytes_to_unicode().items() if byte != 0}
    vocab[EOS_TOKEN] = ByteTokenizer.eos_id
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer
