"""The Hugging Face Hub: which `load_dataset` call reads a corpus, and what to do when it can't.

A `HubCall` holds a call as plain data, so that a source can say exactly what it will ask the
Hub for before anything touches the network (the tests check each named corpus this way).
datasets >= 4 runs no loading scripts, so a corpus whose repository has one is read through
its data files (`load_dataset("json", data_files="hf://datasets/...")`) instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from b6lab.data.files import READABLE, builder_for, packaged_load_kwargs
from b6lab.errors import DataError, exception_line

LOGIN = "log in with `hf auth login` (`huggingface-cli login` before huggingface_hub 1.0) or set HF_TOKEN"


@dataclass(frozen=True)
class HubCall:
    """One streaming `datasets.load_dataset` call on a Hub dataset repository."""

    repo: str  # the dataset's id on the Hub, e.g. "allenai/c4"
    split: str = "train"  # the split name in the repository ("train", "validation", ...)
    name: str | None = None  # the repository's config, when it declares several
    data_dir: str | None = None
    data_files: tuple[str, ...] = ()  # globs inside the repository (inside data_dir, if set), read by a packaged builder
    gated: bool = False  # the repository asks users to accept its terms before downloading

    def __post_init__(self):
        if self.data_files:
            self.builder  # data files of no one readable format fail here, not in a DataLoader worker

    @property
    def url(self) -> str:
        return f"https://huggingface.co/datasets/{self.repo}"

    def load_dataset_kwargs(self) -> dict:
        """The keyword arguments of the `datasets.load_dataset` call that streams this split."""
        if not self.data_files:
            kwargs = {"path": self.repo, "split": self.split, "streaming": True}
            if self.name is not None:
                kwargs["name"] = self.name
            if self.data_dir is not None:
                kwargs["data_dir"] = self.data_dir
            return kwargs
        prefix = f"hf://datasets/{self.repo}/" + (f"{self.data_dir.strip('/')}/" if self.data_dir else "")
        return packaged_load_kwargs(self.builder, {self.split: [prefix + pattern for pattern in self.data_files]}, self.split)

    @property
    def builder(self) -> str:
        """The packaged builder ("json", "parquet", "text") that reads `data_files`."""
        builders = {builder_for(pattern) for pattern in self.data_files}
        if None in builders or len(builders) != 1:
            raise DataError(
                f"data files {', '.join(self.data_files)} of {self.repo} are not all one readable format; "
                f"name files of {READABLE}"
            )
        return builders.pop()

    def describe(self) -> str:
        parts = [self.repo] + [p for p in (self.name, self.data_dir) if p] + list(self.data_files)
        return f"{' '.join(parts)} (split {self.split})"


def hub_offline() -> bool:
    """Whether huggingface_hub was told not to use the network (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def explain_hub_failure(exc: BaseException, call: HubCall, local_hint: str) -> DataError:
    """A one-line DataError saying why reading `call` failed and what the user can do about it.

    `local_hint` says how to read a local copy instead (it differs between `hf` and the named
    corpora). Anything unrecognised keeps its own message, prefixed with what was being read.
    """
    chain = _exception_chain(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    access = f"accept its terms at {call.url}, then {LOGIN}"
    gated_note = f". {call.repo} is gated: to stream it, {access}" if call.gated else ""
    if "OfflineModeIsEnabled" in names or hub_offline():
        why = f"{call.repo} cannot be read: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1)"
        todo = "unset HF_HUB_OFFLINE to stream it"
    elif "GatedRepoError" in names or "gated" in text:
        why, todo, gated_note = f"{call.repo} is gated on the Hugging Face Hub and this login has no access", access, ""
    elif names & _UNREACHABLE or "couldn't reach" in text:
        why = f"{call.repo} cannot be read: the Hugging Face Hub is unreachable from here"
        todo = "check the network connection"
    elif names & _NOT_FOUND or isinstance(exc, FileNotFoundError):
        why = f"{call.describe()} was not found on the Hugging Face Hub"
        todo = f"check the dataset id and its files at {call.url}"
    else:
        return DataError(f"reading {call.describe()} from the Hugging Face Hub failed: {exception_line(exc)}")
    return DataError(f"{why}; {todo}, or {local_hint}{gated_note}")


_UNREACHABLE = {"ConnectError", "ConnectTimeout", "TimeoutException", "ConnectionError", "LocalEntryNotFoundError"}
_NOT_FOUND = {"RepositoryNotFoundError", "DatasetNotFoundError", "DataFilesNotFoundError", "EntryNotFoundError"}


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain
