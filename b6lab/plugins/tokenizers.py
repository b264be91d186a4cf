"""Built-in tokenizers: byte (256 ids), bpe (byte-level BPE trained here and cached), gpt2.

A tokenizer has encode(text) -> list[int], decode(ids) -> str, vocab_size and eos_id, and
must pickle (DataLoader workers tokenize on the fly).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import b6lab
from b6lab.errors import DataError

EOS_TOKEN = "<|endoftext|>"


class ByteTokenizer:
    """UTF-8 bytes as ids. Byte 0 (NUL), which text does not contain, ends each document."""

    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.replace("\0", "").encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if 0 < i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A `tokenizers.Tokenizer` (rust, fast) with an end-of-text token."""

    def __init__(self, tokenizer, eos_token: str = EOS_TOKEN):
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.token_to_id(eos_token)
        if self.eos_id is None:
            raise DataError(f"the tokenizer has no {eos_token} token")
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))


def byte(corpus):
    """UTF-8 bytes, 256 ids; nothing to train or download."""
    return ByteTokenizer()


def bpe(corpus, *, bpe_vocab_size: int = 4096, bpe_train_mb: float = 8.0):
    """Byte-level BPE trained on the first bpe_train_mb MB of the training split, cached per corpus."""
    from tokenizers import Tokenizer

    if bpe_vocab_size < 257:
        from b6lab.errors import ConfigError

        raise ConfigError(f"must be at least 257 (256 bytes + end of text), got {bpe_vocab_size}", key="data.bpe_vocab_size")
    key = hashlib.sha1(f"{corpus.source.fingerprint}|{bpe_vocab_size}|{bpe_train_mb}".encode()).hexdigest()[:16]
    path = Path(corpus.cache_dir) / "tokenizers" / f"bpe-{bpe_vocab_size}-{key}.json"
    if path.exists():
        return HFTokenizer(Tokenizer.from_file(str(path)))
    tokenizer = train_bpe(corpus.text_sample(int(bpe_train_mb * 1e6)), bpe_vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    tokenizer.save(str(partial))
    os.replace(partial, path)  # atomic: a concurrent run (a sweep's trials) never reads half a file
    return HFTokenizer(tokenizer)


def train_bpe(texts, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def gpt2(corpus, *, tokenizer_path: str | None = None):
    """GPT-2's BPE (50257 ids) via transformers, from tokenizer_path or the local Hugging Face cache."""
    from transformers import AutoTokenizer

    source = tokenizer_path or "gpt2"
    try:
        loaded = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        if tokenizer_path:
            raise DataError(
                f"data.tokenizer_path {tokenizer_path} holds no GPT-2 tokenizer files "
                "(vocab.json + merges.txt, or tokenizer.json)"
            ) from None
        try:
            loaded = AutoTokenizer.from_pretrained("gpt2")
        except Exception:
            raise DataError(
                "the gpt2 tokenizer is not in the local Hugging Face cache and the Hub cannot be reached; "
                "run once with network access, or set data.tokenizer_path to a folder with vocab.json and "
                "merges.txt, or use data.tokenizer=bpe (trained locally)"
            ) from None
    return HFTokenizer(loaded.backend_tokenizer)


@b6lab.hookimpl
def b6lab_register_tokenizer(register):
    register("byte", byte)
    register("bpe", bpe)
    register("gpt2", gpt2, unavailable=_transformers_missing)


def _transformers_missing(**_) -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("transformers") else "transformers not installed"
