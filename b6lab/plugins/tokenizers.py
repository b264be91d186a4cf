"""Built-in tokenizers: byte (256 ids), bpe (byte-level BPE trained here and cached), gpt2.

A tokenizer has encode(text) -> list[int], decode(ids) -> str, vocab_size and eos_id, and
must pickle (DataLoader workers tokenize on the fly).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import b6lab
from b6lab.data.documents import EOS_TOKEN
from b6lab.data.hub import hub_offline
from b6lab.errors import ConfigError, DataError, exception_line
from b6lab.train.records import naming

# GPT-2's tokenizer on the Hub, under its current id and the short one older caches keep it under.
GPT2_REPOS = ("openai-community/gpt2", "gpt2")
GPT2_FILES = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"]


class ByteTokenizer:
    """UTF-8 bytes as ids. Byte 0 (NUL), which text does not contain, ends each document."""

    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.replace("\0", "").encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if 0 < i < 256).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> list[int]:
        return [1] * self.vocab_size

    def to_fast_tokenizer(self):
        from b6lab.hf.tokenizer import byte_tokenizer

        return byte_tokenizer()


class HFTokenizer:
    """A `tokenizers.Tokenizer` (rust, fast) with an end-of-text token.

    A document that contains the text "<|endoftext|>" is encoded as that text, not as the
    end-of-text id (like tiktoken's encode_ordinary): only the packer ends documents.
    """

    def __init__(self, tokenizer, eos_token: str = EOS_TOKEN, where: str = "the tokenizer"):
        self.tokenizer = tokenizer
        self.tokenizer.encode_special_tokens = True
        self.eos_id = tokenizer.token_to_id(eos_token)
        if self.eos_id is None:
            raise DataError(f"{where} has no {eos_token} token, which b6lab puts between documents")
        self.vocab_size = tokenizer.get_vocab_size()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.tokenizer.encode_special_tokens = True  # a setting that the tokenizer's pickle forgets

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def token_byte_lengths(self):
        from b6lab.bpb import fast_tokenizer_byte_lengths

        return fast_tokenizer_byte_lengths(self.tokenizer, self.vocab_size)

    def to_fast_tokenizer(self):
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.tokenizer.to_str())  # a copy: the wrapped one stays as it is


def byte(corpus):
    """UTF-8 bytes, 256 ids; nothing to train or download."""
    return ByteTokenizer()


def bpe(corpus, *, bpe_vocab_size: int = 4096, bpe_train_mb: float = 8.0):
    """Byte-level BPE trained on the first bpe_train_mb MB of the training split, cached per corpus."""
    from tokenizers import Tokenizer

    if bpe_vocab_size < 257:
        raise ConfigError(f"must be at least 257 (256 bytes + end of text), got {bpe_vocab_size}", key="data.bpe_vocab_size")
    key = hashlib.sha1(f"{corpus.source.fingerprint}|{bpe_vocab_size}|{bpe_train_mb}".encode()).hexdigest()[:16]
    path = Path(corpus.cache_dir) / "tokenizers" / f"bpe-{bpe_vocab_size}-{key}.json"
    if path.exists():
        return HFTokenizer(Tokenizer.from_file(str(path)))
    tokenizer = train_bpe(corpus.text_sample(int(bpe_train_mb * 1e6)), bpe_vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    try:  # written by Python, not by tokenizers' save(): a full disk is then an OSError that names the file
        with naming(path):
            partial.write_text(tokenizer.to_str(pretty=True))
    except OSError:
        partial.unlink(missing_ok=True)
        raise
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
    """GPT-2's byte-level BPE (50257 ids) via transformers, from data.tokenizer_path or the Hugging Face cache.

    With neither, and the Hub reachable, it is downloaded once into the cache.
    """
    from transformers import GPT2TokenizerFast

    folder = _gpt2_files(tokenizer_path)
    where = f"the GPT-2 tokenizer in {folder}"
    try:
        loaded = GPT2TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise DataError(f"{where} cannot be loaded ({exception_line(exc, limit=None)})") from exc
    tokenizer = HFTokenizer(loaded.backend_tokenizer, where=where)
    # transformers builds an empty tokenizer from a folder without vocabulary files, rather than failing.
    if tokenizer.vocab_size <= 256:
        raise DataError(f"{where} has only {tokenizer.vocab_size} tokens; its vocab.json/merges.txt are missing or empty")
    return tokenizer


def _gpt2_files(tokenizer_path: str | None) -> Path:
    """The folder holding GPT-2's tokenizer files: data.tokenizer_path, the HF cache, or a new download."""
    if tokenizer_path:
        folder = Path(tokenizer_path).expanduser()
        if not _has_gpt2_files(folder):
            raise DataError(
                f"data.tokenizer_path {folder} holds no GPT-2 tokenizer files (vocab.json and merges.txt, or tokenizer.json)"
            )
        return folder
    from huggingface_hub import snapshot_download

    for repo in GPT2_REPOS:
        try:
            folder = Path(snapshot_download(repo, allow_patterns=GPT2_FILES, local_files_only=True))
        except Exception:  # not in the cache under this id
            continue
        if _has_gpt2_files(folder):
            return folder
    why = "HF_HUB_OFFLINE=1 forbids downloading it"
    if not hub_offline():
        try:
            folder = Path(snapshot_download(GPT2_REPOS[0], allow_patterns=GPT2_FILES))
            if _has_gpt2_files(folder):
                return folder
            why = f"{GPT2_REPOS[0]} on the Hub has no tokenizer files"
        except Exception as exc:
            why = f"downloading it failed ({type(exc).__name__})"
    raise DataError(
        f"the gpt2 tokenizer is not in the Hugging Face cache and {why}; run once with network access "
        "(later runs use the cache offline), or set data.tokenizer_path to a folder with GPT-2's vocab.json and "
        "merges.txt, or use data.tokenizer=bpe (trained on your corpus, no download)"
    )


def _has_gpt2_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())


@b6lab.hookimpl
def b6lab_register_tokenizer(register):
    register("byte", byte)
    register("bpe", bpe)
    register("gpt2", gpt2, unavailable=_transformers_missing)


def _transformers_missing(**_) -> str | None:
    import importlib.util

    return None if importlib.util.find_spec("transformers") else "transformers not installed"
