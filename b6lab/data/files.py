"""Local data files: finding them from a path, folder or glob, and knowing how each is read.

A file's name says its format: the `datasets` packaged builder that reads it (text, json or
parquet), optionally compressed with gzip (.gz) or zstandard (.zst), which `datasets`
decompresses on the fly from the extension.
"""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

from b6lab.errors import DataError

# Extension (after any compression suffix is removed) -> the `datasets` builder that reads it.
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".zst")
READABLE = ".txt, .jsonl, .json or .parquet (text and JSON also as .gz or .zst)"


def builder_for(name: str) -> str | None:
    """The `datasets` builder for a file name or pattern ("shard-*.jsonl.zst" -> "json"), or None."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":  # parquet compresses inside the file, never around it
            return None
    return BUILDERS.get(suffixes[-1]) if suffixes else None


def packaged_load_kwargs(builder: str, data_files: list[str] | dict[str, list[str]], split: str = "train") -> dict:
    """The streaming `datasets.load_dataset` call that reads `data_files` with a packaged builder."""
    kwargs = {"path": builder, "data_files": data_files, "split": split, "streaming": True}
    if builder == "text":
        kwargs["sample_by"] = "document"  # a text file is one document, not one per line
    return kwargs


def find_files(path: str | list[str], key: str = "data.path") -> list[Path]:
    """Every readable file that `path` names: files, folders (searched recursively) and globs.

    Files in folders and glob matches that are not data (a README, a checksum list) are skipped;
    a file named outright must be readable. The order is sorted within each entry of `path`,
    so the documents come in the same order on every machine.
    """
    entries = [path] if isinstance(path, str) else list(path)
    if not entries:
        raise DataError(f"{key} is empty; set it to files, folders or globs of {READABLE}")
    found: list[Path] = []
    for entry in entries:
        expanded = os.path.expanduser(entry)
        if glob.has_magic(expanded):
            matches = sorted(Path(m) for m in glob.glob(expanded, recursive=True))
            files = [f for m in matches for f in _files_in(m)]
        elif os.path.isdir(expanded):
            files = _files_in(Path(expanded))
        elif os.path.isfile(expanded):
            if builder_for(expanded) is None:
                raise DataError(f"{key} names {expanded}, which is not a data file b6lab reads; it reads {READABLE}")
            files = [Path(expanded)]
        else:
            raise DataError(f"{key} {entry} does not exist (looked for {Path(expanded).absolute()})")
        if not files:
            raise DataError(f"{key} {entry} matches no {READABLE} files (looked in {Path(expanded).absolute()})")
        found += [f.absolute() for f in files]
    return list(dict.fromkeys(found))  # a file named twice is read once


def _files_in(path: Path) -> list[Path]:
    """`path` itself if it is a data file; the data files under it if it is a folder (hidden ones skipped)."""
    if path.is_file():
        return [path] if builder_for(path.name) else []
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(root) / n for n in sorted(names) if not n.startswith(".") and builder_for(n)]
    return files


def fingerprint(files: list[Path], salt: str = "") -> str:
    """A short hash of the files' paths, sizes and modification times (and `salt`): changes when any file does."""
    digest = hashlib.sha1(salt.encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]
