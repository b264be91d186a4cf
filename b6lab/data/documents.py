"""What every document source shares: the train/validation split and resumable iteration.

A source (built by a dataset plugin) has:

    source.documents(split, start=0) -> iterator of str   # split is "train" or "val"
    source.fingerprint -> str                             # identifies the corpus, for caches

`start` counts documents within the split, so a resumed stream skips what it already read.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

EOS_TOKEN = "<|endoftext|>"  # the end-of-text token's text, in every b6lab vocabulary that has one

SPLITS = ("train", "val")

# Fractional part of i * golden ratio: an even, deterministic spread of documents over [0, 1).
_GOLDEN = 0.6180339887498949


def in_split(index: int, split: str, val_fraction: float) -> bool:
    """Whether document number `index` of a stream belongs to `split` (every ~1/val_fraction-th is val)."""
    is_val = (index * _GOLDEN) % 1.0 < val_fraction
    return is_val if split == "val" else not is_val


def split_documents(documents: Iterable[str], split: str, val_fraction: float, start: int = 0) -> Iterator[str]:
    """The documents of `split` from a stream holding both, skipping the first `start` of them."""
    chosen = (doc for i, doc in enumerate(documents) if in_split(i, split, val_fraction))
    return itertools.islice(chosen, start, None)


def split_text(text: str, split: str, val_fraction: float) -> str:
    """A single long text: the first (1 - val_fraction) trains, the rest validates.

    The cut moves forward to the next line break so no line is split between the two."""
    cut = int(len(text) * (1.0 - val_fraction))
    newline = text.find("\n", cut)
    cut = newline + 1 if newline != -1 else cut
    return text[:cut] if split == "train" else text[cut:]


def text_pieces(text: str, max_chars: int) -> Iterator[str]:
    """`text` in consecutive pieces of at most `max_chars`, each ending at a line break where it can.

    Joined back together the pieces are `text` exactly."""
    start = 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline != -1 else end
        yield text[start:end]
        start = end


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


@dataclass(frozen=True)
class Corpus:
    """What a tokenizer factory is given: the run's document source and where to cache."""

    source: object
    cache_dir: Path

    def text_sample(self, max_bytes: int) -> Iterator[str]:
        """Training documents from the start, until about `max_bytes` of text (for tokenizer training)."""
        seen = 0
        for doc in self.source.documents("train"):
            yield doc
            seen += len(doc.encode("utf-8", errors="ignore"))
            if seen >= max_bytes:
                return
