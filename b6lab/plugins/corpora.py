"""The named corpora: well-known pretraining sets, with their real Hub ids, files and text fields.

Each streams from the Hugging Face Hub, or reads a local copy of the same files when data.path
is set. They are read through their data files rather than by repository name, because
datasets >= 4 runs no loading scripts and several of these repositories only had one; OSCAR
and The Stack are gated (accept their terms on the dataset page, then log in). OpenWebText2 and
Books3 are local only: the first is published as one tar of .jsonl.zst shards, which cannot be
streamed, and the second is no longer distributed.
"""

from __future__ import annotations

import b6lab
from b6lab.data.hub import HubCall
from b6lab.data.sources import HubDataset, LocalFiles, datasets_missing
from b6lab.errors import ConfigError, unknown

LOCAL_HINT = "download its files and set data.path to them"

C4_VARIANTS = ("en", "en.noblocklist", "en.noclean", "realnewslike")
# The slices of RedPajama-Data-1T-Sample: one <subset>_sample.jsonl file each.
REDPAJAMA_SUBSETS = ("arxiv", "book", "c4", "cc_2019-30", "cc_2020-05", "cc_2021-04", "cc_2022-05", "cc_2023-06",
                     "github", "stackexchange", "wikipedia")


def _local_or_hub(path, val_fraction: float, text_field: str, train: HubCall, val: HubCall | None = None):
    """The local copy at `path` if there is one (split by document), else the Hub stream."""
    if path is not None:
        return LocalFiles(path, val_fraction, text_field)
    return HubDataset(train, val_fraction, text_field, val, local_hint=LOCAL_HINT)


def _check_choice(value: str, choices: tuple[str, ...], key: str, what: str) -> None:
    if value not in choices:
        raise ConfigError(unknown(value, choices, what), key=key)


def _check_subfolder_name(value: str, key: str) -> None:
    """A name that becomes part of a path in the repository: no separators, no glob characters."""
    if not value or any(c in value for c in "/\\*?[]"):
        raise ConfigError(f"must be a plain name such as 'en' or 'python', got {value!r}", key=key)


def c4(val_fraction: float, *, variant: str = "en", path: str | list[str] | None = None, text_field: str = "text"):
    """C4, T5's cleaned Common Crawl (allenai/c4; data.variant: en, en.noblocklist, en.noclean, realnewslike).

    Validates on C4's own validation split (data.val_fraction applies only to a local copy).
    """
    _check_choice(variant, C4_VARIANTS, "data.variant", "C4 variant")

    def split(name: str) -> HubCall:
        return HubCall("allenai/c4", name, data_files=(f"{variant}/c4-{name}.*.json.gz",))

    return _local_or_hub(path, val_fraction, text_field, split("train"), split("validation"))


def redpajama(val_fraction: float, *, subset: str | None = None, path: str | list[str] | None = None,
              text_field: str = "text"):
    """RedPajama-Data-1T-Sample: 1B tokens of the open LLaMA-recipe corpus (data.subset: one slice, e.g. arxiv).

    The sample is what can be streamed: the full RedPajama-Data-1T repository is a loading
    script over files hosted elsewhere, which datasets >= 4 does not run.
    """
    if subset is not None:
        _check_choice(subset, REDPAJAMA_SUBSETS, "data.subset", "RedPajama subset")
    files = (f"{subset}_sample.jsonl",) if subset else ("*.jsonl",)
    return _local_or_hub(path, val_fraction, text_field, HubCall("togethercomputer/RedPajama-Data-1T-Sample", data_files=files))


def oscar(val_fraction: float, *, language: str = "en", path: str | list[str] | None = None,
          text_field: str = "content"):
    """OSCAR 23.01, Common Crawl sorted by language (oscar-corpus/OSCAR-2301, gated; data.language: en, fr, ...)."""
    _check_subfolder_name(language, "data.language")
    call = HubCall("oscar-corpus/OSCAR-2301", data_files=(f"{language}_meta/*.jsonl.zst",), gated=True)
    return _local_or_hub(path, val_fraction, text_field, call)


def the_stack(val_fraction: float, *, language: str = "python", dedup: bool = False,
              path: str | list[str] | None = None, text_field: str = "content"):
    """The Stack, permissively licensed source code (bigcode/the-stack, gated; data.language: python, c++, ...).

    data.language picks the repository's data/<language> folder; data.dedup=true reads the
    near-deduplicated bigcode/the-stack-dedup instead.
    """
    _check_subfolder_name(language, "data.language")
    repo = "bigcode/the-stack-dedup" if dedup else "bigcode/the-stack"
    call = HubCall(repo, data_dir=f"data/{language.lower()}", data_files=("*.parquet",), gated=True)
    return _local_or_hub(path, val_fraction, text_field, call)


def openwebtext2(val_fraction: float, *, path: str | list[str] | None = None, text_field: str = "text"):
    """OpenWebText2 (EleutherAI), web pages linked from Reddit: local .jsonl.zst shards only (data.path)."""
    if path is None:
        raise ConfigError(
            "openwebtext2 reads local .jsonl.zst shards, because its Hub copy (segyges/OpenWebText2) is one tar "
            "archive that cannot be streamed: download openwebtext2.jsonl.zst.tar from that dataset page, "
            "extract it (mkdir owt2 && tar xf openwebtext2.jsonl.zst.tar -C owt2) and set data.path=owt2",
            key="data.path",
        )
    return LocalFiles(path, val_fraction, text_field)


def books3(val_fraction: float, *, path: str | list[str] | None = None, text_field: str = "text"):
    """Books3, ~197k books once part of the Pile: local files only (data.path), as it is no longer distributed."""
    if path is None:
        raise ConfigError(
            "books3 is no longer distributed (it was taken down over copyright and is not on the Hub); "
            "if you hold a copy, set data.path to its .txt files (one book each) or its .jsonl(.zst) shards",
            key="data.path",
        )
    return LocalFiles(path, val_fraction, text_field)


@b6lab.hookimpl
def b6lab_register_dataset(register):
    for name, factory in (("c4", c4), ("redpajama", redpajama), ("oscar", oscar), ("the-stack", the_stack),
                          ("openwebtext2", openwebtext2), ("books3", books3)):
        register(name, factory, unavailable=datasets_missing)
