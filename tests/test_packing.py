"""Packing documents into batches: resuming at the very next batch, reading each source once per
pass, errors from DataLoader workers, validation batches, and the document boundaries attention sees.
"""

import json

import pytest
import torch

from b6lab.attention import Documents
from b6lab.data.packing import TrainBatches, rebatch, validation_batches
from b6lab.data.sources import LocalFiles
from b6lab.errors import DataError
from b6lab.plugins.tokenizers import ByteTokenizer

SEQ_LEN, BATCH = 16, 4


def corpus_file(tmp_path, count=24):
    """A small corpus, so that a few dozen batches go through several chunks and epochs."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i} " + "abcdefghij"[i % 10] * (20 + 7 * i)}) + "\n"
                            for i in range(count)))
    return LocalFiles(str(path), val_fraction=0.2)


class CountingSource:
    """A list of documents that counts how often its stream is opened."""

    fingerprint = "counting"

    def __init__(self, documents):
        self.docs, self.opened = documents, 0

    def documents(self, split, start=0):
        self.opened += 1
        return iter(self.docs[start:])


class BrokenSource:
    """A source whose files turn out to be unreadable once the workers read them."""

    fingerprint = "broken"

    def documents(self, split, start=0):
        raise DataError("shard-7.jsonl.zst cannot be read as zstd-compressed JSON lines")


def batches(source, num_workers, state=None):
    return TrainBatches(source, ByteTokenizer(), seq_len=SEQ_LEN, batch_size=BATCH, shuffle_buffer=8, seed=3,
                        num_workers=num_workers, prefetch_factor=2, state=state)


def take(stream, count):
    return [next(stream) for _ in range(count)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_stream_continues_with_the_very_next_batch(num_workers, tmp_path):
    source = corpus_file(tmp_path)
    straight = batches(source, num_workers)
    expected = take(straight, 70)  # several chunks of 8 blocks, and more than one epoch
    straight.close()

    interrupted = batches(source, num_workers)
    before = take(interrupted, 33)
    state = interrupted.state_dict()
    interrupted.close()
    resumed = batches(source, num_workers, state=state)
    after = take(resumed, 37)
    resumed.close()

    for (x, y), (x_expected, y_expected) in zip(before + after, expected):
        assert torch.equal(x, x_expected) and torch.equal(y, y_expected)
    x, y = expected[0]
    assert x.shape == (BATCH, SEQ_LEN) and torch.equal(x[:, 1:], y[:, :-1])


def test_resuming_with_another_worker_count_is_refused(tmp_path):
    stream = batches(corpus_file(tmp_path), 0)
    take(stream, 3)
    with pytest.raises(DataError, match="data.num_workers=1"):
        batches(corpus_file(tmp_path), 2, state=stream.state_dict())


def test_the_source_is_opened_once_per_pass_not_once_per_chunk():
    docs = [f"document {i} " + "xyz" * (10 + i) for i in range(40)]
    source = CountingSource(docs)
    stream = batches(source, 0)
    tokens_per_pass = sum(len(d.encode()) + 1 for d in docs)
    served = 0
    while served < 2.5 * tokens_per_pass:  # two and a half epochs of 8-block chunks
        x, _ = next(stream)
        served += x.numel()
    assert source.opened == 3


def test_a_worker_error_arrives_as_its_one_line_message():
    stream = batches(BrokenSource(), 2)
    with pytest.raises(DataError) as error:
        next(stream)
    assert str(error.value) == "shard-7.jsonl.zst cannot be read as zstd-compressed JSON lines"


def test_validation_batches_are_the_same_every_time(tmp_path):
    source = corpus_file(tmp_path)
    first = validation_batches(source, ByteTokenizer(), seq_len=SEQ_LEN, batch_size=BATCH, max_batches=3)
    again = validation_batches(source, ByteTokenizer(), seq_len=SEQ_LEN, batch_size=BATCH, max_batches=3)
    assert len(first) == 3 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    val_text = "\0".join(source.documents("val")) + "\0"
    for x, _ in first:
        for row in x:
            assert bytes(row.tolist()).decode("utf-8", errors="replace") in val_text


def test_document_boundaries_follow_the_end_of_text_tokens():
    eos = 0
    x = torch.tensor([[5, 6, eos, 7, 8, 9, eos, 1],
                      [2, eos, eos, 3, 4, 5, 6, 7]])
    docs = Documents.from_tokens(x, eos)
    # A document ends at (and includes) its end-of-text token; each row starts a new sequence.
    assert docs.cu_seqlens.tolist() == [0, 3, 7, 8, 10, 11, 16]
    assert docs.max_seqlen == 5
    mask = docs.mask()[0, 0]
    assert mask[2, 0] and not mask[3, 2] and mask[6, 3]


def test_rebatch_keeps_the_sequences_and_their_order():
    batches = [(torch.arange(i * 12, i * 12 + 12).view(3, 4), torch.arange(i * 12, i * 12 + 12).view(3, 4) + 1) for i in range(5)]
    regrouped = rebatch(batches, 6)
    assert [x.size(0) for x, _ in regrouped] == [6, 6, 3]
    assert torch.equal(torch.cat([x for x, _ in regrouped]), torch.cat([x for x, _ in batches]))
    assert torch.equal(torch.cat([y for _, y in regrouped]), torch.cat([y for _, y in batches]))
