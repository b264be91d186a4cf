"""How the cost of a training step grows with context length and depth, and where gradient
checkpointing pays: tokens/s and peak memory from `b6lab bench`, each run in a fresh process.

The tokens per optimizer step stay fixed (micro-batch = tokens / context), so a row differs from
the next only by the context or the depth. Each shape runs with model.gradient_checkpointing
off and on: checkpointing keeps only each block's input and recomputes the rest in backward,
so it trades about a third more compute for activation memory that no longer grows with depth
x context.

    python benchmarks/scaling.py                 # CPU: 256 wide, a few minutes
    python benchmarks/scaling.py --gpu           # CUDA: 1024 wide (gpt2-medium's width), bf16
    python benchmarks/scaling.py --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CONTEXTS = (256, 1024, 4096)
DEPTHS = (6, 12, 24)
SHAPES = {
    # CPU: small enough to finish in a few minutes on 2 cores.
    "cpu": dict(d_model=256, n_heads=4, tokens=4096, steps=2, warmup=1, base_ctx=256,
                extra=["data.num_workers=0"]),
    # GPU: gpt2-medium's width, 32k tokens per step; eager (compiling each of the twelve runs
    # would take longer than the runs).
    "gpu": dict(d_model=1024, n_heads=16, tokens=32768, steps=5, warmup=2, base_ctx=1024,
                extra=["train.precision=bf16", "data.tokenizer=byte", "model.vocab_size=50304", "train.compile=false"]),
}


def shapes(kind: str):
    """(context, layers) pairs: every context at 6 layers, then every depth at the base context."""
    base = SHAPES[kind]["base_ctx"]
    seen = []
    for shape in [(ctx, DEPTHS[0]) for ctx in CONTEXTS] + [(base, layers) for layers in DEPTHS]:
        if shape not in seen:
            seen.append(shape)
    return seen


def bench(kind: str, ctx: int, layers: int, checkpointing: bool) -> dict:
    s = SHAPES[kind]
    overrides = [
        f"model.max_seq_len={ctx}", f"model.n_layers={layers}", f"model.d_model={s['d_model']}",
        f"model.n_heads={s['n_heads']}", f"train.batch_size={max(1, s['tokens'] // ctx)}",
        f"model.gradient_checkpointing={str(checkpointing).lower()}", "logging.progress=false",
        f"train.device={'cuda' if kind == 'gpu' else 'cpu'}", *s["extra"],
    ]
    command = [sys.executable, "-m", "b6lab.cli", "bench", "--json", "--steps", str(s["steps"]), "--warmup", str(s["warmup"])]
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": reason[:120]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the CUDA shapes (1024 wide, bf16)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    kind = "gpu" if args.gpu else "cpu"
    s = SHAPES[kind]
    header = (f"{kind.upper()}: d_model {s['d_model']}, {s['n_heads']} heads, {s['tokens']} tokens per step, "
              f"{s['steps']} timed steps after {s['warmup']} warm-up; memory = "
              f"{'max allocated' if kind == 'gpu' else 'peak RSS'}\n")
    lines = [header, "| context | layers | micro-batch | tokens/s | peak MB | tokens/s, checkpointing | peak MB, checkpointing | memory saved |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    print(header, flush=True)
    for ctx, layers in shapes(kind):
        plain, ckpt = bench(kind, ctx, layers, False), bench(kind, ctx, layers, True)
        cells = [str(ctx), str(layers), str(max(1, s["tokens"] // ctx))]
        for r in (plain, ckpt):
            cells += [f"{r['tokens_per_sec']:,.0f}", f"{r['peak_mem_mb']:,.0f}"] if "error" not in r else [r["error"], "-"]
        if "error" not in plain and "error" not in ckpt:
            cells.append(f"{1 - ckpt['peak_mem_mb'] / plain['peak_mem_mb']:.0%}")
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
