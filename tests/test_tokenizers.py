"""Tokenizer plugins: byte, bpe (trained here, cached per corpus) and gpt2 (local files or the HF cache).

The real GPT-2 files cannot be downloaded here (no Hub), so the gpt2 tests write files in
GPT-2's format (vocab.json + merges.txt) from a small byte-level BPE trained in the test.
"""

import json
import os
import pickle
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from b6lab import registry
from b6lab.data.documents import Corpus
from b6lab.data.hub import hub_offline
from b6lab.errors import ConfigError, DataError
from b6lab.plugins import tokenizers as tokenizer_plugins

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 20,
    "def tokenize(text):\n    return [ord(c) for c in text]\n" * 15,
    "Zürich, café, naïve, 東京 and emoji 🙂 are all bytes in the end. " * 10,
]
SAMPLE = "The lazy fox tokenizes café code: def f(x): return x  🙂"


class ListSource:
    """A document source over a list: the simplest thing a dataset plugin can return."""

    def __init__(self, documents: list[str], fingerprint: str = "test-corpus"):
        self.docs, self.fingerprint = documents, fingerprint

    def documents(self, split: str, start: int = 0):
        return iter(self.docs[start:] if split == "train" else self.docs[:1])


def build(name: str, corpus: Corpus, **options):
    return registry.get("tokenizer", name).build(corpus, **options)


@pytest.fixture
def corpus(tmp_path):
    return Corpus(ListSource(TEXTS), tmp_path / "cache")


def test_byte_round_trips_and_ends_documents_with_nul(corpus):
    tokenizer = build("byte", corpus)
    ids = tokenizer.encode(SAMPLE)
    assert tokenizer.vocab_size == 256 and tokenizer.eos_id == 0
    assert ids == list(SAMPLE.encode("utf-8")) and tokenizer.decode(ids) == SAMPLE


def test_bpe_trains_a_byte_level_vocabulary(corpus):
    tokenizer = build("bpe", corpus, bpe_vocab_size=400)
    ids = tokenizer.encode(SAMPLE)
    assert 257 <= tokenizer.vocab_size <= 400
    assert tokenizer.decode(ids) == SAMPLE  # any text, not only what it was trained on
    assert len(ids) < len(SAMPLE.encode("utf-8"))  # merges learned from the corpus shorten it
    assert tokenizer.eos_id not in ids


def test_bpe_is_cached_per_corpus_and_vocabulary_size(corpus, tmp_path, monkeypatch):
    trained = []
    real_train = tokenizer_plugins.train_bpe

    def counting_train(texts, vocab_size):
        trained.append(vocab_size)
        return real_train(texts, vocab_size)

    monkeypatch.setattr(tokenizer_plugins, "train_bpe", counting_train)
    first = build("bpe", corpus, bpe_vocab_size=400)
    cached = list((tmp_path / "cache" / "tokenizers").iterdir())
    assert trained == [400] and len(cached) == 1
    written = cached[0].stat().st_mtime_ns

    second = build("bpe", corpus, bpe_vocab_size=400)  # a second run: read back, not retrained
    assert trained == [400] and cached[0].stat().st_mtime_ns == written
    assert second.encode(SAMPLE) == first.encode(SAMPLE)

    build("bpe", corpus, bpe_vocab_size=300)  # another vocabulary size is another tokenizer
    build("bpe", Corpus(ListSource(TEXTS[:2], "other corpus"), corpus.cache_dir), bpe_vocab_size=400)
    assert trained == [400, 300, 400]
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 3


def test_bpe_vocabulary_must_hold_the_bytes(corpus):
    with pytest.raises(ConfigError, match="data.bpe_vocab_size"):
        build("bpe", corpus, bpe_vocab_size=200)


def test_text_that_spells_the_end_of_text_token_is_ordinary_text(corpus):
    tokenizer = build("bpe", corpus, bpe_vocab_size=300)
    for candidate in (tokenizer, pickle.loads(pickle.dumps(tokenizer))):  # as a DataLoader worker has it
        ids = candidate.encode("end <|endoftext|> here")
        assert candidate.eos_id not in ids
        assert candidate.decode(ids) == "end <|endoftext|> here"


def write_gpt2_files(folder: Path, vocab_size: int = 320) -> Tokenizer:
    """vocab.json and merges.txt in GPT-2's format, from a byte-level BPE trained on TEXTS."""
    trained = tokenizer_plugins.train_bpe(TEXTS, vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    trained.model.save(str(folder))
    return trained


def test_gpt2_loads_from_a_local_folder(corpus, tmp_path):
    trained = write_gpt2_files(tmp_path / "gpt2")
    tokenizer = build("gpt2", corpus, tokenizer_path=str(tmp_path / "gpt2"))
    vocab = json.loads((tmp_path / "gpt2" / "vocab.json").read_text())
    assert tokenizer.vocab_size == len(vocab) and tokenizer.eos_id == vocab["<|endoftext|>"]
    assert tokenizer.encode(SAMPLE) == trained.encode(SAMPLE).ids  # GPT-2's byte-level BPE, same merges
    assert tokenizer.decode(tokenizer.encode(SAMPLE)) == SAMPLE
    assert pickle.loads(pickle.dumps(tokenizer)).encode(SAMPLE) == tokenizer.encode(SAMPLE)


def test_gpt2_loads_from_the_hugging_face_cache_offline(corpus, tmp_path, monkeypatch):
    """The layout huggingface_hub gives a downloaded model: refs/main names a snapshot folder."""
    from huggingface_hub import constants

    assert hub_offline()
    repo_folder = tmp_path / "hub" / "models--openai-community--gpt2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_gpt2_files(repo_folder / "snapshots" / commit)
    (repo_folder / "refs").mkdir()
    (repo_folder / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tokenizer = build("gpt2", corpus)
    assert tokenizer.decode(tokenizer.encode(SAMPLE)) == SAMPLE and tokenizer.vocab_size > 256


def test_gpt2_offline_without_files_says_what_to_do(corpus, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    started = time.perf_counter()
    with pytest.raises(DataError) as error:
        build("gpt2", corpus)
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert "HF_HUB_OFFLINE" in message and "data.tokenizer_path" in message and "data.tokenizer=bpe" in message


@pytest.mark.parametrize("contents", [[], ["vocab.json"], ["merges.txt"]])
def test_gpt2_from_a_folder_without_its_files_is_a_data_error(contents, corpus, tmp_path):
    folder = tmp_path / "not-gpt2"
    folder.mkdir()
    for name in contents:
        (folder / name).write_text("{}" if name.endswith(".json") else "")
    with pytest.raises(DataError, match="holds no GPT-2 tokenizer files"):
        build("gpt2", corpus, tokenizer_path=str(folder))


def test_gpt2_with_an_empty_vocabulary_is_refused(corpus, tmp_path):
    """transformers quietly builds a one-token tokenizer from empty files; b6lab must not train on it."""
    folder = tmp_path / "empty-gpt2"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({"<|endoftext|>": 0}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(DataError, match="has only 1 tokens"):
        build("gpt2", corpus, tokenizer_path=str(folder))


def test_a_run_trains_with_gpt2_files_and_bpe_from_the_config(tmp_path):
    """The tokenizer options travel from the config; model.vocab_size follows the tokenizer."""
    from b6lab.config import load_config
    from b6lab.train.trainer import Trainer

    write_gpt2_files(tmp_path / "gpt2", vocab_size=300)
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS * 10))
    base = ["logging.progress=false", "train.max_steps=4", "train.eval_interval=4", "train.eval_steps=1",
            "train.log_interval=2", "model.max_seq_len=32", "data.source=text", f"data.path={corpus_file}",
            f"data.cache_dir={tmp_path / 'cache'}"]
    for tokenizer_options, vocab_size in (
        (["data.tokenizer=gpt2", f"data.tokenizer_path={tmp_path / 'gpt2'}"], 320),  # 300 rounded up to 64s
        (["data.tokenizer=bpe", "data.bpe_vocab_size=300"], None),
    ):
        cfg = load_config(preset="tiny", overrides=base + tokenizer_options)
        trainer = Trainer(cfg, tmp_path / f"run-{cfg.data.tokenizer}", say=lambda message: None)
        assert trainer.run()["status"] == "completed"
        if vocab_size:
            assert trainer.model_cfg.vocab_size == vocab_size
    assert len(os.listdir(tmp_path / "cache" / "tokenizers")) == 1  # the bpe run cached its tokenizer
