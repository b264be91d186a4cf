"""Reading text records through `datasets` streaming, for local files and Hub datasets alike.

Nothing is downloaded or converted ahead: records are decoded a batch at a time as the
training loop asks for documents. Failures become DataErrors that name the file (or the Hub
dataset) and say what was wrong, instead of a traceback from deep inside pyarrow or zstandard.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

from b6lab.data.files import builder_for, packaged_load_kwargs
from b6lab.errors import DataError, UsageError, exception_line

# Records decoded per step: arrow batches are far faster than one row at a time.
BATCH_RECORDS = 256

_DESCRIPTIONS = {"text": "UTF-8 text", "json": "JSON lines", "parquet": "Parquet"}


def load_stream(load_dataset_kwargs: dict):
    """`datasets.load_dataset(**kwargs)`; imported here because `datasets` takes seconds to import."""
    import logging

    import datasets

    # These readers log a file they cannot parse, then raise; b6lab reports the raised error as one
    # line (texts_of), so their log line would only be the same news twice.
    for reader in ("json", "parquet"):
        logging.getLogger(f"datasets.packaged_modules.{reader}.{reader}").setLevel(logging.CRITICAL)
    return datasets.load_dataset(**load_dataset_kwargs)


def texts_of(stream, text_field: str, where: str) -> Iterator[str]:
    """The non-empty strings in column `text_field` of a streamed dataset, in order."""
    # .iter() rather than plain iteration: inside a DataLoader worker, plain iteration would
    # quietly hand each worker only some of the files, and every worker here reads all of them.
    for batch in stream.iter(batch_size=BATCH_RECORDS):
        if text_field not in batch:
            raise DataError(
                f"{where} has no field {text_field!r} (its fields: {', '.join(batch)}); set data.text_field to one of them"
            )
        for text in batch[text_field]:
            if isinstance(text, str):
                if text:
                    yield text
            elif text is not None:
                raise DataError(
                    f"field {text_field!r} of {where} holds {type(text).__name__} values, not text; "
                    "set data.text_field to a text field"
                )


TEXT_FILES_PER_CALL = 64


def read_local_files(files: list[Path], text_field: str) -> Iterator[str]:
    """The documents of local files in order: each record of JSON/Parquet, each whole text file."""
    for builder, run in itertools.groupby(files, key=lambda f: builder_for(f.name)):
        run = list(run)
        # Text files all have one column, "text", so a run of them goes TEXT_FILES_PER_CALL to a
        # call (a folder of 100k books opens quickly; and since each file is then read as its own
        # shard, and datasets re-splits the call's whole file list for every shard, a call over
        # the whole run would cost files^2). JSON and Parquet shards often differ in their other
        # columns, which one call would have to reconcile (and fails to), so each is read on its own.
        size = TEXT_FILES_PER_CALL if builder == "text" else 1
        for start in range(0, len(run), size):
            yield from _read_group(builder, run[start:start + size], text_field)


def _read_group(builder: str, group: list[Path], text_field: str) -> Iterator[str]:
    field = "text" if builder == "text" else text_field  # the text builder names its column "text"
    try:
        # datasets reads the first file here, to learn its columns.
        stream = load_stream(packaged_load_kwargs(builder, [str(f) for f in group]))
    except UsageError:
        raise
    except Exception as exc:
        raise unreadable(group[0], builder, exc) from exc
    for i, file in enumerate(group):
        # The packaged builders stream each file as one shard, in the order given: reading a
        # shard at a time lets an error name its file.
        shard = stream.shard(num_shards=len(group), index=i, contiguous=True) if len(group) > 1 else stream
        try:
            yield from texts_of(shard, field, str(file))
        except UsageError:
            raise
        except Exception as exc:
            raise unreadable(file, builder, exc) from exc


def unreadable(file: Path, builder: str, exc: Exception) -> DataError:
    """A corrupt or mislabelled file: which one, what it should have been, and what went wrong."""
    compression = {".gz": "gzip-compressed ", ".zst": "zstd-compressed "}.get(file.suffix.lower(), "")
    return DataError(
        f"{file} cannot be read as {compression}{_DESCRIPTIONS[builder]} ({exception_line(exc)}); "
        "fix or remove the file, or narrow data.path"
    )
