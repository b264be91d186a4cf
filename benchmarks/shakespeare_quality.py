"""nanoGPT's CPU Shakespeare recipe, b6lab against nanoGPT, on loss alone: several seeds each, both
final models scored on the same validation characters in fp32, the same way.

    python benchmarks/shakespeare_quality.py --seeds 5 --json-out benchmarks/results/shakespeare_quality_cpu_DATE.json

Training, each side as it ships:
- nanoGPT: the anchors README's command from the unchanged copy in ../shared/anchors/nanogpt
  (fp32), plus `--always_save_checkpoint=True` so that ckpt.pt holds the model after the last
  of its 2000 iterations rather than the one its 20-batch estimate liked best (saving does not
  touch the training). Its train.py fixes `torch.manual_seed(1337)`; seed k runs it through
  nanogpt_seeded.py, which moves that call to 1337 + k without editing nanoGPT's files (k = 0 is
  nanoGPT exactly).
- b6lab: `b6lab train --preset shakespeare-char-cpu --set train.seed=k` (its default
  precision, bf16 autocast on a CPU with bf16 instructions), the model after its 2000 steps
  (checkpoints/last).

Scoring, identical for both: the text is b6lab's validation split of tinyshakespeare.txt
(the last 10%, cut at the next line break: 111,538 characters), which is nanoGPT's validation
split (val.bin, the last 10% cut at the character) without its first 2 characters; the script
checks that. Each model reads it in consecutive windows of 64 characters (the models' context),
window i predicting characters 64i+1 .. 64i+64 from the characters before them in its window, the
last window shorter: every character but the first is predicted exactly once, with 1 to 64
characters of context, the same for both models. fp32 throughout (no autocast), the summed
cross-entropy of the model's own logits (nanoGPT's 65-character vocabulary, b6lab's 256 bytes)
over the number of characters: nats per character. Beside it: nanoGPT's own figure (20 random
batches at step 2000), b6lab's own (its whole split in bf16, during training), and
`b6lab eval RUN/checkpoints/last --split val --precision fp32 --json` (the same windows over the
split's text as b6lab streams it: an end-of-text token after each piece of at most 65,536
characters, and the last partial window dropped, so 111,488 targets, one of them the end-of-text
token after the first piece).

The difference b6lab - nanoGPT is judged with Welch's t-test over the seeds (two-sided, 95% CI,
Welch-Satterthwaite degrees of freedom): the sides' seeds are not paired (seed k of one shares
nothing with seed k of the other: different data order, different initialisation code). It
assumes each side's per-seed losses are independent and roughly normal.

Wall time is recorded but is not a speed figure unless the machine was otherwise idle
(shakespeare_side_by_side.py measures speed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import statistics
import subprocess
import sys
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from shakespeare_side_by_side import NANOGPT_ARGS, ROOT, TEXT, copy_nanogpt

SEEDED_RUNNER = Path(__file__).resolve().parent / "nanogpt_seeded.py"
CONTEXT = 64  # both models' context (nanoGPT's --block_size=64, the preset's max_seq_len)
WINDOWS_PER_FORWARD = 64


@torch.no_grad()
def windowed_nll(logits_of, ids: np.ndarray, context: int = CONTEXT) -> tuple[float, int]:
    """Summed next-token cross-entropy (nats, fp32 logits, float64 sum) of `ids` read in consecutive
    windows of `context` tokens, and the number of tokens predicted: every token but the first, once.
    logits_of(x) gives (windows, length, vocab) logits for (windows, length) token ids."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    targets = len(ids) - 1
    full = targets // context
    total = 0.0
    inputs, outputs = ids[: full * context].view(full, context), ids[1 : full * context + 1].view(full, context)
    for start in range(0, full, WINDOWS_PER_FORWARD):
        x, y = inputs[start : start + WINDOWS_PER_FORWARD], outputs[start : start + WINDOWS_PER_FORWARD]
        total += F.cross_entropy(logits_of(x).float().flatten(0, 1), y.flatten(), reduction="sum").double().item()
    if targets > full * context:  # the last, shorter window
        x, y = ids[full * context : -1].unsqueeze(0), ids[full * context + 1 :].unsqueeze(0)
        total += F.cross_entropy(logits_of(x).float().flatten(0, 1), y.flatten(), reduction="sum").double().item()
    return total, targets


def b6lab_val_text() -> str:
    """The validation split exactly as b6lab's preset reads it (the same source code path)."""
    from b6lab import config, parts

    cfg = config.load_config(preset="shakespeare-char-cpu", overrides=[f"data.path={TEXT}"])
    return "".join(parts.build_source(cfg.data).documents("val"))


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode:
        sys.exit(f"{' '.join(map(str, command))} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def nanogpt_seed(seed: int, val_text: str, steps: int | None = None) -> dict:
    work = Path(tempfile.mkdtemp(prefix="nanogpt-"))
    try:
        copy_nanogpt(work)
        start = time.perf_counter()
        run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=work)
        shorter = [f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={steps}",
                   f"--warmup_iters={steps // 10}"] if steps else []
        done = run([sys.executable, str(SEEDED_RUNNER), str(seed), *NANOGPT_ARGS, "--always_save_checkpoint=True", *shorter],
                   cwd=work)
        wall = time.perf_counter() - start
        own = [line for line in done.stdout.splitlines() if line.startswith("step ")][-1]  # "step 2000: train loss .., val loss .."
        data = work / "data" / "shakespeare_char"
        meta = pickle.loads((data / "meta.pkl").read_bytes())
        own_val = np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64)
        own_val_text = "".join(meta["itos"][int(i)] for i in own_val)
        if not own_val_text.endswith(val_text) or len(own_val_text) - len(val_text) > 80:
            sys.exit("nanoGPT's val.bin does not end with b6lab's validation text: the splits differ more than the cut")
        # nanoGPT's own model.py, from the copy it trained with
        spec = importlib.util.spec_from_file_location("nanogpt_model", work / "model.py")
        nanogpt = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(nanogpt)
        checkpoint = torch.load(work / "out-shakespeare-char" / "ckpt.pt", map_location="cpu")
        model = nanogpt.GPT(nanogpt.GPTConfig(**checkpoint["model_args"]))
        model.load_state_dict(checkpoint["model"])
        model.eval().float()
        ids = np.array([meta["stoi"][c] for c in val_text], dtype=np.int64)
        logits_of = lambda x: model(x, x)[0]  # with targets nanoGPT returns every position's logits
        nll, targets = windowed_nll(logits_of, ids)
        own_nll, own_targets = windowed_nll(logits_of, own_val)
        return {"side": "nanogpt", "seed": seed, "torch_seed": 1337 + seed, "loss": nll / targets, "targets": targets,
                "loss_own_val_bin": own_nll / own_targets, "own_val_bin_targets": own_targets,
                "own_figure": float(own.rsplit("val loss ", 1)[1]), "own_figure_line": own,
                "checkpoint_iter": checkpoint["iter_num"], "wall_s": wall}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def b6lab_seed(seed: int, val_text: str, steps: int | None = None) -> dict:
    from b6lab.evaluate import load_checkpoint

    work = Path(tempfile.mkdtemp(prefix="b6lab-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        start = time.perf_counter()
        run([sys.executable, "-m", "b6lab", "train", "--preset", "shakespeare-char-cpu", "--quiet", "--set", f"data.path={TEXT}",
             "--set", f"train.out_dir={work / 'run'}", "--set", f"train.seed={seed}",
             *(["--set", f"train.max_steps={steps}", "--set", f"train.eval_interval={steps}",
                "--set", f"schedule.warmup_steps={steps // 10}"] if steps else [])], cwd=ROOT, env=env)
        wall = time.perf_counter() - start
        last = work / "run" / "checkpoints" / "last"
        summary = json.loads((work / "run" / "summary.json").read_text())
        ckpt = load_checkpoint(last, device="cpu")
        model = ckpt.model.eval().float()
        ids = np.array(ckpt.tokenizer.encode(val_text), dtype=np.int64)
        if len(ids) != len(val_text):
            sys.exit("b6lab's byte tokenizer did not give one token per character of the validation text")
        nll, targets = windowed_nll(model, ids)  # B6 without targets returns the logits of every position
        command = run([sys.executable, "-m", "b6lab", "eval", str(last), "--split", "val", "--precision", "fp32", "--json"],
                      cwd=ROOT, env=env)
        b6lab_eval = json.loads(command.stdout.strip().splitlines()[-1])
        return {"side": "b6lab", "seed": seed, "loss": nll / targets, "targets": targets,
                "b6lab_eval_fp32": b6lab_eval["loss"], "b6lab_eval_targets": b6lab_eval["tokens"],
                "own_figure": summary["final_val_loss"], "steps": summary.get("steps"), "wall_s": wall}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def welch(a: list[float], b: list[float]) -> dict:
    """a - b: Welch's two-sided t-test and its 95% confidence interval."""
    result = stats.ttest_ind(a, b, equal_var=False)
    low, high = result.confidence_interval(0.95)
    return {"difference": statistics.mean(a) - statistics.mean(b), "ci95": [float(low), float(high)],
            "p": float(result.pvalue), "df": float(result.df)}


def report(runs: list[dict]) -> dict:
    sides = {side: [r for r in runs if r["side"] == side] for side in ("b6lab", "nanogpt")}
    print("\n| side | seed | whole val split, fp32, windows of 64 (nats/char) | own figure | other |")
    print("| --- | --- | --- | --- | --- |")
    for side, rows in sides.items():
        for r in sorted(rows, key=lambda r: r["seed"]):
            other = (f"`b6lab eval` fp32 {r['b6lab_eval_fp32']:.4f}" if side == "b6lab"
                     else f"on its own val.bin {r['loss_own_val_bin']:.4f}; ckpt.pt from iter {r['checkpoint_iter']}")
            print(f"| {side} | {r['seed']} | {r['loss']:.4f} | {r['own_figure']:.4f} | {other} |")
    summary = {}
    for side, rows in sides.items():
        losses = [r["loss"] for r in rows]
        if losses:
            sd = statistics.stdev(losses) if len(losses) > 1 else float("nan")
            summary[side] = {"mean": statistics.mean(losses), "sd": sd, "n": len(losses)}
            print(f"{side}: {statistics.mean(losses):.4f} ± {sd:.4f} (mean ± sd over {len(losses)} seeds)")
    if all(len(rows) >= 2 for rows in sides.values()):
        summary["b6lab_minus_nanogpt"] = test = welch([r["loss"] for r in sides["b6lab"]], [r["loss"] for r in sides["nanogpt"]])
        print(f"b6lab - nanoGPT: {test['difference']:+.4f}, 95% CI [{test['ci95'][0]:+.4f}, {test['ci95'][1]:+.4f}], "
              f"Welch p = {test['p']:.2g} (df {test['df']:.1f})")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per side: 0 .. N-1 (default 3)")
    parser.add_argument("--json-out", type=Path, help="every run so far, rewritten after each run; "
                        "with --resume, the runs already in it are kept and not run again")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--steps", type=int, help="train each side this many steps instead of the recipe's 2000 "
                        "(a quick check of the script, not a result)")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (a spread is needed for the test)")
    runs = json.loads(args.json_out.read_text())["runs"] if args.resume and args.json_out and args.json_out.exists() else []
    val_text = b6lab_val_text()
    print(f"validation text: {len(val_text):,} characters, {len(val_text) - 1:,} predicted; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs", flush=True)
    for seed in range(args.seeds):
        order = ("nanogpt", "b6lab") if seed % 2 == 0 else ("b6lab", "nanogpt")  # alternate who runs first
        for side in order:
            if any(r["side"] == side and r["seed"] == seed for r in runs):
                continue
            load = os.getloadavg()[0]
            result = (nanogpt_seed if side == "nanogpt" else b6lab_seed)(seed, val_text, args.steps)
            result["load_before"] = load
            runs.append(result)
            print(f"seed {seed} {side:8s} loss {result['loss']:.4f} (own figure {result['own_figure']:.4f}) "
                  f"wall {result['wall_s']:.0f} s, load before {load:.2f}", flush=True)
            if args.json_out:
                args.json_out.write_text(json.dumps({"runs": runs}, indent=1))
    summary = report(runs)
    if args.json_out:
        args.json_out.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
