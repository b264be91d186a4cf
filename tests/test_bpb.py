"""Bits per byte: byte lengths of token ids for every built-in tokenizer, and the conversion."""

import math

import pytest
import torch

from b6lab import registry
from b6lab.bpb import bits_per_byte, token_byte_lengths
from b6lab.data.documents import Corpus
from tests.test_tokenizers import TEXTS, ListSource, write_gpt2_files

TEXT = "Zürich café naïve 東京 🙂 and plain ASCII: def f(x): return x\n" * 3


@pytest.fixture
def corpus(tmp_path):
    return Corpus(ListSource(TEXTS), tmp_path / "cache")


def spelled_bytes(tokenizer, text: str) -> int:
    lengths = token_byte_lengths(tokenizer)
    assert lengths.dtype == torch.long and lengths.shape == (tokenizer.vocab_size,)
    assert lengths[tokenizer.eos_id] == 0
    return int(lengths[torch.tensor(tokenizer.encode(text))].sum())


@pytest.mark.parametrize("name,options", [("byte", {}), ("bpe", {"bpe_vocab_size": 400})])
def test_byte_lengths_of_the_tokens_sum_to_the_texts_bytes(corpus, name, options):
    tokenizer = registry.get("tokenizer", name).build(corpus, **options)
    assert spelled_bytes(tokenizer, TEXT) == len(TEXT.encode("utf-8"))


def test_gpt2_tokens_count_their_bytes_even_inside_a_character(corpus, tmp_path):
    write_gpt2_files(tmp_path / "gpt2")
    tokenizer = registry.get("tokenizer", "gpt2").build(corpus, tokenizer_path=str(tmp_path / "gpt2"))
    assert spelled_bytes(tokenizer, TEXT) == len(TEXT.encode("utf-8"))
    assert spelled_bytes(tokenizer, "🙂") == 4


def test_bits_per_byte_of_a_byte_model_is_its_loss_over_ln2():
    assert bits_per_byte(100 * 1.5, 100) == pytest.approx(1.5 / math.log(2))
    with pytest.raises(ValueError, match="n_bytes=0"):
        bits_per_byte(1.0, 0)


def ascii_corpus(tmp_path):
    """A single ASCII text file, long enough that the evaluated targets never reach its end (no end-of-text)."""
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(600)))
    return path


def test_every_evaluation_logs_bits_per_byte_and_the_summary_keeps_them(tmp_path, tiny_run):
    from b6lab.train.records import read_metrics

    summary = tiny_run.train(tmp_path / "run", "data.source=text", f"data.path={ascii_corpus(tmp_path)}",
                             "data.val_fraction=0.1", max_steps=8, eval_interval=4)
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    for record in evals:  # one byte per token and no end-of-text target: bits per byte = nats / ln 2
        assert record["val_bpb"] == pytest.approx(record["val_loss"] / math.log(2), rel=1e-6)
    assert summary["final_val_bpb"] == evals[-1]["val_bpb"]
    assert summary["best_val_bpb"] == min(r["val_bpb"] for r in evals)


class CharacterTokenizer:
    """A third-party tokenizer with none of the optional methods: one id per character of a small
    alphabet, id 0 ends documents."""

    alphabet = "\0abcdeé z"
    vocab_size = len(alphabet)
    eos_id = 0

    def encode(self, text):
        return [self.alphabet.index(c) for c in text if c in self.alphabet[1:]]

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids if i)


def test_a_third_party_tokenizer_gets_bits_per_byte_by_decoding_each_id():
    """The core imports no built-in tokenizer: a plugin's tokenizer without token_byte_lengths() is
    measured by decoding each id ('é' is 2 bytes), one with it is asked."""
    tokenizer = CharacterTokenizer()
    assert spelled_bytes(tokenizer, "abé z") == len("abé z".encode("utf-8"))

    class Declared(CharacterTokenizer):
        def token_byte_lengths(self):
            return [0, 1, 1, 1, 1, 1, 2, 1, 1]

    assert spelled_bytes(Declared(), "abé z") == 6

    class Wrong(CharacterTokenizer):
        def token_byte_lengths(self):
            return [1, 1]

    with pytest.raises(ValueError, match="gave \\(2,\\) lengths for a vocabulary of 9"):
        token_byte_lengths(Wrong())


def test_a_tokenizer_without_a_fast_form_is_refused_by_export_in_one_line():
    from b6lab.errors import UsageError
    from b6lab.hf.tokenizer import hf_tokenizer

    with pytest.raises(UsageError, match="CharacterTokenizer.*lacks to_fast_tokenizer"):
        hf_tokenizer(CharacterTokenizer(), 64)
