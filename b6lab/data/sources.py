"""Document sources read through `datasets` streaming: local files, and Hub datasets.

The `text` and `hf` dataset plugins are these two classes; the named corpora (c4, oscar, ...)
are the same two with their Hub ids, files and text fields filled in. Both are plain picklable
objects: no file is opened and no network is touched until a split's documents are asked for.
"""

from __future__ import annotations

import importlib.util
import itertools
from typing import Iterator

from b6lab.data.documents import check_split, split_documents, split_text, text_pieces
from b6lab.data.files import builder_for, find_files, fingerprint
from b6lab.data.hub import HubCall, explain_hub_failure
from b6lab.data.streaming import load_stream, read_local_files, texts_of
from b6lab.errors import UsageError

# A lone text file is served in pieces of about this many characters: enough pieces for several
# DataLoader workers to share, few enough that the end-of-text token between them is rare.
TEXT_PIECE_CHARS = 1 << 16


class LocalFiles:
    """Documents from local files: .txt, .jsonl, .json, .parquet, text and JSON also .gz or .zst.

    Each record of a JSON or Parquet file is a document (its `text_field`), and so is each whole
    .txt file; every ~1/val_fraction-th document is held out for validation (documents.in_split).
    A single .txt file on its own is one long text instead: its first (1 - val_fraction) trains
    and the rest validates (documents.split_text), each part served in pieces cut at line breaks.
    """

    def __init__(self, path: str | list[str], val_fraction: float, text_field: str = "text"):
        self.files = find_files(path)
        self.val_fraction, self.text_field = val_fraction, text_field
        self.single_text = len(self.files) == 1 and builder_for(self.files[0].name) == "text"
        shown = path if isinstance(path, str) else ", ".join(path)
        digest = fingerprint(self.files, salt=f"{text_field}|{val_fraction}")
        self.fingerprint = f"{shown} ({len(self.files)} file{'s' * (len(self.files) != 1)}, {digest})"

    def documents(self, split: str, start: int = 0) -> Iterator[str]:
        check_split(split)
        if self.single_text:
            return itertools.islice(self._pieces(split), start, None)
        return split_documents(read_local_files(self.files, self.text_field), split, self.val_fraction, start)

    def _pieces(self, split: str) -> Iterator[str]:
        for text in read_local_files(self.files, self.text_field):
            yield from text_pieces(split_text(text, split, self.val_fraction), TEXT_PIECE_CHARS)


class HubDataset:
    """Documents streamed from a Hugging Face Hub dataset, a batch of records at a time.

    With a `val` call the validation documents come from the dataset's own validation split;
    without one, the training split is divided by document (documents.in_split). `local_hint`
    ends every error message: how to train on a local copy instead.
    """

    def __init__(self, train: HubCall, val_fraction: float, text_field: str = "text", val: HubCall | None = None,
                 local_hint: str = "download its files and train on them with data.source=text and data.path"):
        self.train, self.val = train, val
        self.val_fraction, self.text_field, self.local_hint = val_fraction, text_field, local_hint
        held_out = f"val {val.split}" if val else f"val_fraction {val_fraction}"
        self.fingerprint = f"hf {train.describe()}, field {text_field}, {held_out}"

    def hub_call(self, split: str) -> HubCall:
        """The Hub call that reads `split` ("train" or "val"): what this source will ask the Hub for."""
        check_split(split)
        return self.val if split == "val" and self.val is not None else self.train

    def documents(self, split: str, start: int = 0) -> Iterator[str]:
        texts = self._texts(self.hub_call(split))
        if self.val is None:
            return split_documents(texts, split, self.val_fraction, start)
        return itertools.islice(texts, start, None)

    def _texts(self, call: HubCall) -> Iterator[str]:
        try:
            yield from texts_of(load_stream(call.load_dataset_kwargs()), self.text_field, call.describe())
        except UsageError:
            raise
        except Exception as exc:
            raise explain_hub_failure(exc, call, self.local_hint) from exc


def datasets_missing(**_) -> str | None:
    """Why the sources read through `datasets` cannot run here (None when they can)."""
    return None if importlib.util.find_spec("datasets") else "the datasets package is not installed (pip install datasets)"
