"""Built-in document sources: the embedded default (python-stdlib), local files (text), any Hub dataset (hf)."""

from __future__ import annotations

import random
import sys
import sysconfig
from pathlib import Path

import b6lab
from b6lab.data.documents import check_split, split_documents


class PythonStdlib:
    """The running Python's own library sources and its bundled docs: ~30 MB of real text, no download.

    Each .py file is a document, and so is each topic of the reference docs that Python ships
    for help() (pydoc_data). Documents come in a fixed shuffled order, so that every part of
    the library shows up early in a run; every ~1/val_fraction-th is held out for validation.
    """

    def __init__(self, val_fraction: float):
        self.val_fraction = val_fraction
        root = Path(sysconfig.get_paths()["stdlib"])
        files = [
            path for path in root.rglob("*.py")
            if not {"site-packages", "dist-packages", "__pycache__"} & set(path.relative_to(root).parts)
        ]
        items: list[tuple[str, str]] = [("file", str(path)) for path in sorted(files)]
        items += [("topic", name) for name in sorted(_doc_topics())]
        random.Random(0).shuffle(items)
        self.items = items
        self.fingerprint = f"python-stdlib-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}-{len(items)}"

    def documents(self, split: str, start: int = 0):
        check_split(split)
        return split_documents(self._texts(), split, self.val_fraction, start)

    def _texts(self):
        topics = _doc_topics()
        for kind, name in self.items:
            if kind == "topic":
                yield topics[name]
            else:
                yield Path(name).read_text(encoding="utf-8", errors="replace")


def _doc_topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip the docs
        return {}
    return topics


def python_stdlib(val_fraction: float):
    """The running Python's library sources and bundled docs (embedded default, no download)."""
    return PythonStdlib(val_fraction)


@b6lab.hookimpl
def b6lab_register_dataset(register):
    register("python-stdlib", python_stdlib)
