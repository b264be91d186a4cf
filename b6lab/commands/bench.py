"""Measure training throughput: tokens/s, MFU, step time and peak memory of the real trainer step.

Runs the same step as `b6lab train` (same config, same data stream) for --warmup steps, then
times --steps more. MFU is against a peak measured here by a matrix product in the run's
precision, or the one given by --peak-tflops. `--set model.attention=all` runs every attention
backend that can run here side by side, with the largest difference of each one's output from
`eager`. The run folder is a temporary one, removed at the end.
"""

from __future__ import annotations

import argparse
import json

from b6lab.commands.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first; compilation happens here (default 3)")
    parser.add_argument("--peak-tflops", type=float, help="the peak TFLOP/s for MFU (default: measured by a matmul here)")
    parser.add_argument("--json", action="store_true", help="end with one line of JSON holding every figure")
    parser.add_argument("--same-process", action="store_true",
                        help="with model.attention=all: run every backend in this process (quicker; on a CPU the "
                             "peak memory is then the process's peak so far, not each backend's own)")


def run(args: argparse.Namespace) -> int:
    from b6lab import bench
    from b6lab.commands.common import config_from_args
    from b6lab.config import parse_override
    from b6lab.errors import UsageError
    from b6lab.train import distributed

    if args.steps < 1 or args.warmup < 0:
        raise UsageError("--steps must be at least 1 and --warmup at least 0")
    all_attention = [o for o in args.overrides if parse_override(o) == ("model.attention", "all")]
    if all_attention:
        others = [o for o in args.overrides if o not in all_attention]
        return _run_all_attention(args, others)
    cfg = config_from_args(args)
    with distributed.process_group(cfg.train.device):  # under torchrun: data-parallel, each process timed
        result = bench.measure(cfg, steps=args.steps, warmup=args.warmup, peak_tflops=args.peak_tflops)
        print(describe(cfg.name, result))  # rank 0 only
        if args.json:
            print(json.dumps(result))
    return 0


def describe(name: str, r: dict) -> str:
    lines = [
        f"b6lab bench {name}: {r['params'] / 1e6:.2f}M params, attention {r['attention']}, {r['precision']} on {r['device']}",
        f"  {r['tokens_per_step']:,} tokens per step (micro-batch {r['micro_batch']} x {r['grad_accum_steps']} x "
        f"{r['seq_len']}), {r['steps']} timed steps after {r['warmup']} warm-up, {r['threads']} threads",
        f"  tokens/s     {r['tokens_per_sec']:,.0f}" + (f" per process; {r['total_tokens_per_sec']:,.0f} in total over "
                                                         f"{r['processes']} processes" if r["processes"] > 1 else ""),
        f"  step time    {r['step_time_s']:.3f} s (median; {min(r['step_times_s']):.3f} to {max(r['step_times_s']):.3f})",
        f"  MFU          {100 * r['mfu']:.1f}% of {r['peak_tflops']:.3g} TFLOP/s, {r['peak_source']}",
        f"  peak memory  {r['peak_mem_mb']:,.0f} MB ({r['memory_kind']})"
        + (f"; child processes {r['children_mb']:,.0f} MB of their own" if r.get("children_mb") else ""),
    ]
    if r["compile"]:
        lines.append(f"  compile      first step {r['first_step_s']:.1f} s, warm-up {r['warmup_s']:.1f} s in all (not timed)")
    return "\n".join(lines)


def _run_all_attention(args: argparse.Namespace, overrides: list[str]) -> int:
    from b6lab import bench

    result = bench.compare_attention(overrides, preset=args.preset, config=args.config, steps=args.steps,
                                     warmup=args.warmup, peak_tflops=args.peak_tflops,
                                     isolate=False if args.same_process else None)
    rows = result["backends"]
    print(f"{'attention':<12} {'tokens/s':>10} {'MFU':>7} {'peak MB':>9} {'max |out - eager|':>18}")
    for row in rows:
        if "tokens_per_sec" in row:
            print(f"{row['attention']:<12} {row['tokens_per_sec']:>10,.0f} {100 * row['mfu']:>6.1f}% "
                  f"{row['peak_mem_mb']:>9,.0f} {row['max_abs_diff']:>18.2e}")
        else:
            why = row.get("unavailable") or row.get("error") or f"an alias: runs {row.get('chooses')} here"
            print(f"{row['attention']:<12} {why}")
    if args.json:
        print(json.dumps(result))
    return 0
