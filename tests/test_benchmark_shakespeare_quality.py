"""benchmarks/shakespeare_quality.py's scoring protocol and benchmarks/nanogpt_seeded.py's seed offset."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from shakespeare_quality import windowed_nll  # noqa: E402


@pytest.mark.parametrize("length", [2, 64, 65, 129, 1000])
def test_windowed_nll_predicts_every_token_but_the_first_once(length):
    # A bigram model's prediction depends on the previous token only, so however the text is cut
    # into windows, the sum must be that of every (token, next token) pair of the text, once.
    torch.manual_seed(0)
    bigram = torch.nn.Embedding(11, 11)
    ids = np.random.default_rng(length).integers(0, 11, size=length)
    nll, targets = windowed_nll(lambda x: bigram(x), ids, context=64)
    every_pair = F.cross_entropy(bigram(torch.as_tensor(ids[:-1])), torch.as_tensor(ids[1:]), reduction="sum")
    assert targets == length - 1
    assert nll == pytest.approx(every_pair.item(), rel=1e-6)


def test_windowed_nll_context_restarts_at_each_window():
    # A model that predicts token 0 with certainty at a window's first position and is uniform
    # elsewhere: the windows' first positions are exactly 0, 64, 128, ... of the text.
    vocab, context = 5, 64
    ids = np.zeros(200, dtype=np.int64)

    def logits_of(x):
        logits = torch.zeros(*x.shape, vocab)
        logits[:, 0, 0] = 1e4
        return logits

    nll, targets = windowed_nll(logits_of, ids, context=context)
    windows = -(-199 // context)  # 4: three full, one of 7
    assert targets == 199
    assert nll == pytest.approx((targets - windows) * np.log(vocab), rel=1e-6)


def test_nanogpt_seeded_moves_only_the_seed(tmp_path):
    # A stand-in for nanoGPT's train.py that seeds as nanoGPT's does and reports what it saw.
    (tmp_path / "train.py").write_text(
        "import sys, torch\nfrom helper import NAME\ntorch.manual_seed(1337 + 0)\n"
        "print(NAME, torch.initial_seed(), sys.argv, __name__)\n"
    )
    (tmp_path / "helper.py").write_text("NAME = 'local import ok'\n")
    for offset, expected in [(0, 1337), (4, 1341)]:
        done = subprocess.run([sys.executable, str(BENCHMARKS / "nanogpt_seeded.py"), str(offset), "config/x.py", "--a=1"],
                              cwd=tmp_path, capture_output=True, text=True, check=True)
        assert done.stdout.strip() == f"local import ok {expected} ['train.py', 'config/x.py', '--a=1'] __main__"
