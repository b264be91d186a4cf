"""Documents -> tokens -> fixed-length blocks -> shuffled batches, resumable at any batch.

Each DataLoader worker owns every W-th document (W workers), tokenizes it on the fly, appends
an end-of-sequence token, and cuts the joined stream into blocks of seq_len + 1 tokens (inputs
and next-token targets; consecutive blocks share one token so every token is a target once).
Blocks are shuffled a chunk at a time: a chunk of `shuffle_buffer` blocks is filled, permuted
with a seeded generator, and served in batches.

Why chunks rather than a running shuffle buffer: a chunk can be rebuilt from a few numbers
(where its documents started, the leftover tokens before it, its index), so a worker's whole
position is a small dict. Each batch carries its worker's position; the loader keeps the
latest per worker and that is what a checkpoint stores. A resumed run rebuilds each worker's
current chunk and continues with the very next batch.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from b6lab.errors import DataError, UsageError


@dataclass
class StreamSpec:
    """Everything a worker needs, as plain picklable values and objects."""

    source: Any
    tokenizer: Any
    split: str
    seq_len: int
    batch_size: int
    chunk_blocks: int  # blocks shuffled together; a multiple of batch_size
    seed: int
    num_workers: int  # logical workers: the stream's shape, independent of processes (>= 1)
    rank: int = 0  # under torchrun: batch_size is the global batch, and this rank keeps its rows of it
    ranks: int = 1


def fresh_position() -> dict:
    """Where a worker starts: epoch 0, document 0, nothing carried over, chunk 0, nothing served."""
    return {"epoch": 0, "doc": 0, "offset": 0, "carry": [], "chunk": 0, "served": 0}


class WorkerStream:
    """One logical worker's share of the stream; yields (batch, position after it).

    A chunk starts at (epoch, doc, offset, carry): the tokens in `carry` (fewer than a block,
    left over from earlier documents), then document `doc` from its `offset`-th token on.
    """

    def __init__(self, spec: StreamSpec, worker: int, position: dict):
        self.spec, self.worker = spec, worker
        self.position = copy.deepcopy(position)
        self._last_doc: tuple[int, np.ndarray] | None = None  # a long document spans chunks
        self._open: Iterator[tuple[int, str]] | None = None  # the source, read up to and including...
        self._last_read: tuple[int, int, str] | None = None  # ...this (epoch, index, text)

    def _documents(self, start_doc: int, epoch: int = 0):
        """(global index, text) of this worker's documents from `start_doc` on, in this epoch.

        A chunk begins at the document where the one before it stopped. That document is kept
        and the open source goes on after it: opening the source again would read (or, from
        the Hub, download) every document before it once more, for every chunk.
        """
        if self._last_read is not None and self._last_read[:2] == (epoch, start_doc):
            yield self._last_read[1:]
            stream = self._open
        else:
            stream = self._open = self._read_from(start_doc)
        for index, text in stream:
            self._last_read = (epoch, index, text)
            yield index, text

    def _read_from(self, start_doc: int) -> Iterator[tuple[int, str]]:
        docs = self.spec.source.documents(self.spec.split, start=start_doc)
        for index, text in enumerate(docs, start=start_doc):
            if index % self.spec.num_workers == self.worker:
                yield index, text

    def _tokens(self, index: int, text: str) -> np.ndarray:
        if self._last_doc is not None and self._last_doc[0] == index:
            return self._last_doc[1]
        ids = self.spec.tokenizer.encode(text)
        ids.append(self.spec.tokenizer.eos_id)
        tokens = np.asarray(ids, dtype=np.int64)
        self._last_doc = (index, tokens)
        return tokens

    def _fill_chunk(self, start: dict):
        """The blocks of the chunk that begins at `start`, and where the next chunk begins."""
        block, stride, wanted = self.spec.seq_len + 1, self.spec.seq_len, self.spec.chunk_blocks
        epoch, doc, offset = start["epoch"], start["doc"], start["offset"]
        pending = np.asarray(start["carry"], dtype=np.int64)
        blocks: list[np.ndarray] = []
        while True:
            pass_start, read = doc, False
            for index, text in self._documents(doc, epoch):
                read = True
                full = self._tokens(index, text)
                tokens, offset = full[offset:], 0
                pending = np.concatenate([pending, tokens])
                while len(pending) >= block and len(blocks) < wanted:
                    blocks.append(pending[:block])
                    pending = pending[stride:]
                if len(blocks) == wanted:
                    # What is left is a tail of this document, maybe after a short carry.
                    if len(pending) <= len(tokens):
                        return blocks, {"epoch": epoch, "doc": index, "offset": len(full) - len(pending), "carry": []}
                    carry = pending[: len(pending) - len(tokens)].tolist()
                    return blocks, {"epoch": epoch, "doc": index, "offset": 0, "carry": carry}
            if not read and pass_start == 0:
                raise DataError(
                    f"the {self.spec.split} split of {self.spec.source.fingerprint} has no documents for worker "
                    f"{self.worker} of {self.spec.num_workers}; use fewer data.num_workers or more data"
                )
            epoch, doc = epoch + 1, 0  # the split is exhausted: the next pass is a new epoch

    def __iter__(self):
        pos = self.position
        B = self.spec.batch_size
        while True:
            origin = {key: pos[key] for key in ("epoch", "doc", "offset", "carry")}
            blocks, next_origin = self._fill_chunk(origin)
            order = np.random.default_rng([self.spec.seed, self.worker, pos["chunk"]]).permutation(len(blocks))
            while pos["served"] + B <= len(blocks):
                chosen = order[pos["served"] : pos["served"] + B]
                pos["served"] += B
                if self.spec.ranks > 1:
                    share = B // self.spec.ranks
                    chosen = chosen[self.spec.rank * share : (self.spec.rank + 1) * share]
                yield np.stack([blocks[i] for i in chosen]), copy.deepcopy(pos)
            pos.update(next_origin, chunk=pos["chunk"] + 1, served=0)


class PackedStream(IterableDataset):
    """The DataLoader's dataset: each process runs one logical worker's stream.

    `rotation` makes the DataLoader (which always asks process 0 first) start with the logical
    worker whose turn it is after a resume.
    """

    def __init__(self, spec: StreamSpec, positions: list[dict], rotation: int = 0):
        self.spec, self.positions, self.rotation = spec, positions, rotation

    def __iter__(self):
        info = get_worker_info()
        process = info.id if info is not None else 0
        logical = (process + self.rotation) % self.spec.num_workers
        try:
            for blocks, position in WorkerStream(self.spec, logical, self.positions[logical]):
                tokens = torch.from_numpy(blocks)
                yield {"x": tokens[:, :-1], "y": tokens[:, 1:], "worker": logical, "position": position}
        except UsageError as exc:
            if info is None:
                raise
            # Raised in a worker, the DataLoader would re-raise it wrapped in the worker's
            # traceback; the user needs only the one-line message, so it travels as data.
            yield {"error": exc}


class TrainBatches:
    """An endless iterator of (x, y) training batches whose position can be saved and restored.

    With `ranks` > 1 (data parallelism) every rank walks the same stream of global batches of
    batch_size x ranks sequences and serves rows rank*batch_size onwards of each: disjoint shares,
    one position."""

    def __init__(self, source, tokenizer, *, seq_len: int, batch_size: int, shuffle_buffer: int, seed: int,
                 num_workers: int, prefetch_factor: int = 4, pin_memory: bool = False, state: dict | None = None,
                 rank: int = 0, ranks: int = 1):
        logical = max(1, num_workers)
        if state is not None and state["num_workers"] != logical:
            raise DataError(
                f"the checkpoint's data stream was made with data.num_workers={state['num_workers']}; "
                f"resume with the same value (this run asks for {num_workers})"
            )
        batch_size *= ranks
        chunk = -(-shuffle_buffer // batch_size) * batch_size
        self.spec = StreamSpec(source, tokenizer, "train", seq_len, batch_size, chunk, seed, logical, rank, ranks)
        self.positions = state["positions"] if state else [fresh_position() for _ in range(logical)]
        self.consumed = state["consumed"] if state else 0
        self.loader_options = dict(num_workers=num_workers, pin_memory=pin_memory)
        if num_workers > 0:
            self.loader_options.update(prefetch_factor=prefetch_factor, persistent_workers=True)
        self._iterator = None

    def _start(self):
        rotation = self.consumed % self.spec.num_workers
        dataset = PackedStream(self.spec, self.positions, rotation)
        # Its own generator: a DataLoader otherwise draws a seed from the global RNG when it starts,
        # which would shift the dropout masks of a resumed run.
        generator = torch.Generator().manual_seed(self.spec.seed)
        self._loader = DataLoader(dataset, batch_size=None, generator=generator, **self.loader_options)
        self._iterator = iter(self._loader)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iterator is None:
            self._start()
        batch = next(self._iterator)
        if "error" in batch:
            self.close()
            raise batch["error"]
        self.positions[batch["worker"]] = batch["position"]
        self.consumed += 1
        return batch["x"], batch["y"]

    def set_batch_size(self, batch_size: int) -> None:
        """Serve smaller batches from the same position (after an out-of-memory error)."""
        self.close()
        batch_size *= self.spec.ranks
        chunk = -(-self.spec.chunk_blocks // batch_size) * batch_size
        self.spec = StreamSpec(**{**self.spec.__dict__, "batch_size": batch_size, "chunk_blocks": chunk})

    def state_dict(self) -> dict:
        return {"positions": copy.deepcopy(self.positions), "consumed": self.consumed, "num_workers": self.spec.num_workers}

    def close(self) -> None:
        if self._iterator is not None:
            shutdown = getattr(self._iterator, "_shutdown_workers", None)
            if shutdown:
                shutdown()
        self._iterator = None


def split_blocks(source, tokenizer, split: str, seq_len: int) -> Iterator[np.ndarray]:
    """Blocks of seq_len + 1 tokens from one pass over `split`, in order, unshuffled, read as they
    are needed (evaluation streams a split of any size through this); a last partial block is dropped."""
    block, stride = seq_len + 1, seq_len
    pending = np.zeros(0, dtype=np.int64)
    for text in source.documents(split):
        ids = tokenizer.encode(text)
        ids.append(tokenizer.eos_id)
        pending = np.concatenate([pending, np.asarray(ids, dtype=np.int64)])
        while len(pending) >= block:
            yield pending[:block]
            pending = pending[stride:]


def validation_batches(source, tokenizer, *, seq_len: int, batch_size: int, max_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `max_batches` batches of the validation split, unshuffled: the same every eval.

    A split too small for that many is used whole (its last batch may be smaller)."""
    blocks = list(itertools.islice(split_blocks(source, tokenizer, "val", seq_len), batch_size * max_batches))
    if not blocks and next(iter(source.documents("val")), None) is None and next(iter(source.documents("train")), None) is None:
        raise DataError(f"{source.fingerprint} holds no text (both splits are empty); check the data source's files or options")
    if not blocks:
        raise DataError(
            f"the validation split of {source.fingerprint} holds fewer than seq_len + 1 = {seq_len + 1} tokens; "
            "raise data.val_fraction or shorten data.seq_len"
        )
    tokens = torch.from_numpy(np.stack(blocks))
    return [(b[:, :-1], b[:, 1:]) for b in tokens.split(batch_size)]


def rebatch(batches: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same sequences, in the same order, cut into batches of `batch_size` (the last may be smaller)."""
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    return list(zip(x.split(batch_size), y.split(batch_size)))
