"""b6lab against HF transformers' GPT2LMHeadModel (and a minimal nanoGPT-style reference) on
the same workload, alternating runs, each run in a fresh process.

Workload "cpu-small": vocab 50304, 6 layers, 6 heads, 384 wide, d_ff 1536, context 256,
micro-batch 8, AdamW (torch's fused AdamW for every trainer: what HF's Trainer uses by default
with torch >= 2.8, and what b6lab's adamw plugin uses), gradient clipping at 1.0, 3 warm-up
steps then 10 timed steps. tokens/s = timed tokens / timed seconds; peak memory is the run's
process's peak RSS (the unique memory of b6lab's child processes, its data-loading worker and
torch.compile's compiler pool, is shown beside it as +N).

b6lab runs through its own command line, exactly as a user would:
    b6lab bench --preset cpu-small --set model.vocab_size=50304 --set optim.name=adamw --json
that is the real trainer step with the real data stream (python-stdlib text, BPE tokenizer).
The references get random token ids already in memory: their data costs nothing, which can only
flatter them.

    python benchmarks/side_by_side.py                      # fp32 and bf16, 3 rounds
    python benchmarks/side_by_side.py --precision fp32 --rounds 5
    python benchmarks/side_by_side.py --compile            # adds b6lab and nanogpt with torch.compile

A round runs every trainer once, in an order that rotates from round to round; the table
shows each trainer's median over rounds and its ratio to HF's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOAD = dict(vocab=50304, layers=6, heads=6, width=384, d_ff=1536, ctx=256, batch=8, lr=1e-3, wd=0.1)


def b6lab_command(precision: str, compile_: bool, steps: int, warmup: int, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "b6lab.cli", "bench", "--preset", "cpu-small", "--json",
               "--steps", str(steps), "--warmup", str(warmup),
               "--set", "model.vocab_size=50304", "--set", "optim.name=adamw", "--set", f"train.precision={precision}"]
    if compile_:
        command += ["--set", "train.compile=true"]
    for override in extra:
        command += ["--set", override]
    return command


def reference_command(kind: str, precision: str, compile_: bool, steps: int, warmup: int) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--precision", precision,
               "--steps", str(steps), "--warmup", str(warmup)]
    return command + (["--compile"] if compile_ else [])


# ---------------------------------------------------------------------------------------------
# A reference trainer's run (in its own process)


def child(kind: str, precision: str, compile_: bool, steps: int, warmup: int) -> dict:
    import torch

    torch.manual_seed(0)
    w = WORKLOAD
    if kind == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=w["vocab"], n_positions=w["ctx"], n_embd=w["width"], n_layer=w["layers"],
                            n_head=w["heads"], n_inner=w["d_ff"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        config._attn_implementation = "sdpa"
        model = GPT2LMHeadModel(config)

        def loss_of(x, y):
            return model(input_ids=x, labels=x).loss  # HF shifts the labels itself
    else:
        sys.path.insert(0, str(HERE))
        from reference_gpt import GPT, GPTConfig

        model = GPT(GPTConfig(block_size=w["ctx"], vocab_size=w["vocab"], n_layer=w["layers"], n_head=w["heads"],
                              n_embd=w["width"], dropout=0.0, bias=True))

        def loss_of(x, y):
            return step_model(x, y)[1]
    model.train()
    step_model = torch.compile(model) if compile_ and kind != "hf" else model
    if compile_ and kind == "hf":
        model.forward = torch.compile(model.forward)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": w["wd"]}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=w["lr"], betas=(0.9, 0.95), fused=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, w["vocab"], (steps + warmup, w["batch"], w["ctx"] + 1), generator=generator)

    def step(i):
        x, y = tokens[i, :, :-1], tokens[i, :, 1:]
        with autocast:
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    start = time.perf_counter()
    for i in range(warmup):
        step(i)
    warmup_s = time.perf_counter() - start
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return {
        "tokens_per_sec": w["batch"] * w["ctx"] * steps / sum(times),
        "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_time_s": statistics.median(times),
        "warmup_s": warmup_s,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------
# Rounds of alternating runs


def run_once(command: list[str]) -> dict:
    before = _busy_other()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1])
    result["load_before"] = before
    return result


def _busy_other() -> float:
    """The 1-minute load average when a run starts: other work on the machine skews a run."""
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add b6lab and the nanoGPT-style reference with torch.compile")
    parser.add_argument("--trainers", nargs="+", help="a subset of: b6lab hf nanogpt b6lab+compile nanogpt+compile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra b6lab --set (e.g. train.threads=1)")
    parser.add_argument("--child", choices=["hf", "nanogpt"], help=argparse.SUPPRESS)
    parser.add_argument("--json-out", help="also write every run's figures to this file")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.precision[0], args.compile, args.steps, args.warmup)))
        return

    trainers = args.trainers or ["hf", "b6lab", "nanogpt"] + (["b6lab+compile", "nanogpt+compile"] if args.compile else [])
    print("warming the tokenizer cache (not timed) ...", flush=True)
    run_once(b6lab_command("fp32", False, 1, 0, args.overrides))
    all_runs = []
    for precision in args.precision:
        runs: dict[str, list[dict]] = {t: [] for t in trainers}
        for round_ in range(args.rounds):
            order = trainers[round_ % len(trainers):] + trainers[: round_ % len(trainers)]
            for trainer in order:
                if precision == "bf16" and "+compile" in trainer:
                    continue
                compile_ = trainer.endswith("+compile")
                base = trainer.split("+")[0]
                command = (b6lab_command(precision, compile_, args.steps, args.warmup, args.overrides) if base == "b6lab"
                           else reference_command(base, precision, compile_, args.steps, args.warmup))
                result = run_once(command)
                runs[trainer].append(result)
                all_runs.append({"trainer": trainer, "precision": precision, "round": round_, **result})
                print(f"  {precision} round {round_ + 1} {trainer:<16} {result['tokens_per_sec']:8.0f} tok/s "
                      f"{result['peak_mem_mb']:7.0f} MB  (load {result['load_before']:.1f})", flush=True)
        report(precision, runs)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(all_runs, indent=1))


def report(precision: str, runs: dict[str, list[dict]]) -> None:
    hf = statistics.median(r["tokens_per_sec"] for r in runs["hf"]) if runs.get("hf") else None
    print(f"\n{precision}: median of {max(len(r) for r in runs.values())} alternating runs")
    print(f"{'trainer':<16} {'tokens/s':>9} {'vs HF':>7} {'peak RSS MB':>12} {'runs (tokens/s)':>30}")
    for trainer, results in runs.items():
        if not results:
            continue
        tps = statistics.median(r["tokens_per_sec"] for r in results)
        rss = statistics.median(r["peak_mem_mb"] for r in results)
        extra = statistics.median(r.get("children_mb", 0) for r in results)
        ratio = f"{tps / hf:.2f}x" if hf else "-"
        each = " ".join(f"{r['tokens_per_sec']:.0f}" for r in results)
        worker = f" +{extra:.0f}" if extra else ""
        print(f"{trainer:<16} {tps:>9.0f} {ratio:>7} {rss:>8.0f}{worker:<5} {each:>30}")
    print(flush=True)


if __name__ == "__main__":
    main()
