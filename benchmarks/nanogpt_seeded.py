"""Run nanoGPT's unchanged train.py with its seed moved by OFFSET, without editing its files.

nanoGPT's train.py seeds once, `torch.manual_seed(1337 + seed_offset)`, where seed_offset is the
DDP rank (0 in one process), and offers no option for it. To draw several seeds of its recipe,
this wraps torch.manual_seed so that the call sees 1337 + OFFSET, then runs train.py as
`python train.py ARGS...` would (runpy, as __main__, with the same sys.argv after OFFSET).
OFFSET 0 is nanoGPT exactly. Run it from nanoGPT's folder (the copy laid out by
shakespeare_side_by_side.copy_nanogpt):

    cd NANOGPT_COPY && python .../benchmarks/nanogpt_seeded.py 3 config/train_shakespeare_char.py --device=cpu ...
"""

import os
import runpy
import sys

import torch

offset = int(sys.argv.pop(1))
seed_call = torch.manual_seed


def offset_manual_seed(seed):
    return seed_call(seed + offset)


torch.manual_seed = offset_manual_seed
sys.argv[0] = "train.py"
sys.path.insert(0, os.getcwd())  # train.py imports model.py from its own folder
runpy.run_path("train.py", run_name="__main__")
