"""Built-in document sources: the embedded default (python-stdlib), local files (text), any Hub dataset (hf)."""

from __future__ import annotations

import os
import random
import sys
import sysconfig
from pathlib import Path

import b6lab
from b6lab.data.documents import check_split, split_documents
from b6lab.data.hub import HubCall
from b6lab.data.sources import HubDataset, LocalFiles, datasets_missing
from b6lab.errors import ConfigError


class PythonStdlib:
    """The running Python's own library sources and its bundled docs: ~30 MB of real text, no download.

    Each .py file is a document, and so is each topic of the reference docs that Python ships
    for help() (pydoc_data). Documents come in a fixed shuffled order, so that every part of
    the library shows up early in a run; every ~1/val_fraction-th is held out for validation.
    """

    def __init__(self, val_fraction: float):
        self.val_fraction = val_fraction
        items: list[tuple[str, str]] = [("file", str(path)) for path in sorted(_stdlib_files())]
        items += [("topic", name) for name in sorted(_doc_topics())]
        random.Random(0).shuffle(items)
        self.items = items
        self.fingerprint = f"python-stdlib-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}-{len(items)}"

    def documents(self, split: str, start: int = 0):
        check_split(split)
        topics = _doc_topics()
        # Choose before reading, so the `start` documents a resumed stream skips are never read.
        for kind, name in split_documents(self.items, split, self.val_fraction, start):
            yield topics[name] if kind == "topic" else Path(name).read_text(encoding="utf-8", errors="replace")


def _stdlib_files() -> list[Path]:
    """The library's .py files. The folders it skips are pruned, not walked: a venv's Python may keep
    hundreds of MB of site-packages there, and every trial of a sweep lists these files again."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in ("site-packages", "dist-packages", "__pycache__")]
        files += [Path(folder, name) for name in names if name.endswith(".py")]
    return files


def _doc_topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip the docs
        return {}
    return topics


def python_stdlib(val_fraction: float):
    """The running Python's library sources and bundled docs (embedded default, no download)."""
    return PythonStdlib(val_fraction)


def text(val_fraction: float, *, path: str | list[str] | None = None, text_field: str = "text"):
    """Local files, folders or globs (data.path) of .txt, .jsonl, .json, .parquet; text and JSON also .gz or .zst.

    Each JSON/Parquet record's `text_field` is a document, and so is each .txt file; a single
    .txt file is split by position instead (its last val_fraction validates).
    """
    if path is None:
        raise ConfigError(
            "data.source=text reads local files: set data.path to files, folders or globs (e.g. corpus/*.jsonl.zst)",
            key="data.path",
        )
    return LocalFiles(path, val_fraction, text_field)


def hf(val_fraction: float, *, hf_path: str | None = None, hf_name: str | None = None, hf_split: str = "train",
       hf_val_split: str | None = None, data_dir: str | None = None,
       data_files: str | list[str] | dict | None = None, text_field: str = "text"):
    """Any Hugging Face Hub dataset, streamed: data.hf_path (id), hf_name (config), hf_split, text_field.

    hf_val_split names the dataset's validation split; without it the training split is divided
    by document. data_files (globs inside the repository, or a mapping of split -> globs) reads
    the files directly with a packaged builder: the way to read repositories that only have a
    loading script, which datasets >= 4 no longer runs.
    """
    if not hf_path:
        raise ConfigError("data.source=hf needs the dataset's Hub id, e.g. data.hf_path=allenai/c4", key="data.hf_path")
    if hf_name and data_files is not None:
        raise ConfigError(
            "picks one of the repository's configs, but data.data_files reads files directly; give one or the other",
            key="data.hf_name",
        )

    def call(split: str) -> HubCall:
        return HubCall(hf_path, split, hf_name, data_dir, _files_of_split(data_files, split, hf_val_split))

    return HubDataset(call(hf_split), val_fraction, text_field, call(hf_val_split) if hf_val_split else None)


def _files_of_split(data_files, split: str, val_split: str | None) -> tuple[str, ...]:
    """The data_files globs that hold `split`: all of them, or the mapping's entry for `split`."""
    if data_files is None:
        return ()
    if isinstance(data_files, dict):
        if split not in data_files:
            raise ConfigError(
                f"has no files for split {split!r} (it maps {', '.join(map(repr, data_files))})", key="data.data_files"
            )
        data_files = data_files[split]
    elif val_split:
        raise ConfigError(
            f"with data.hf_val_split={val_split!r}, give data_files as a mapping of split -> globs "
            "(e.g. {train: 'en/train-*.json.gz', validation: 'en/val-*.json.gz'})",
            key="data.data_files",
        )
    return (data_files,) if isinstance(data_files, str) else tuple(data_files)


@b6lab.hookimpl
def b6lab_register_dataset(register):
    register("python-stdlib", python_stdlib)
    register("text", text, unavailable=datasets_missing)
    register("hf", hf, unavailable=datasets_missing)
