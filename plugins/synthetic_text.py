"""A synthetic text source: sums written out as text, generated from a seed, with no download.
Use it with `data: {source: sums, n_documents: 5000}` and `plugins: [plugins/synthetic_text.py]`."""
import random

import b6lab
from b6lab.data.documents import check_split, split_documents
from b6lab.errors import ConfigError


class Sums:
    """Documents of lines like `37 + 58 = 95`, each document from its own seeded generator."""

    def __init__(self, val_fraction: float, n_documents: int, text_seed: int):
        self.val_fraction, self.n_documents, self.text_seed = val_fraction, n_documents, text_seed
        self.fingerprint = f"sums-{text_seed}-{n_documents}"  # names the corpus in the tokenizer cache

    def documents(self, split: str, start: int = 0):
        """The documents of `split` ("train" or "val"), skipping the first `start` of them: a resumed
        run continues where it stopped. About a val_fraction share of them is held out for "val"."""
        check_split(split)
        every = (self._document(i) for i in range(self.n_documents))
        return split_documents(every, split, self.val_fraction, start)

    def _document(self, index: int) -> str:
        rng = random.Random(self.text_seed * 1_000_003 + index)
        sums = [(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(rng.randint(3, 12))]
        return "".join(f"{a} + {b} = {a + b}\n" for a, b in sums)


def sums(val_fraction: float, *, n_documents: int = 20_000, text_seed: int = 0):
    """Sums of two numbers below 100 written out as text (`37 + 58 = 95`): a corpus with a known answer."""
    if n_documents < 2:
        raise ConfigError(f"must be at least 2 (one for each split), got {n_documents}", key="data.n_documents")
    return Sums(val_fraction, n_documents, text_seed)


@b6lab.hookimpl
def b6lab_register_dataset(register):
    register("sums", sums)
