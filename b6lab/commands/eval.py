"""Evaluate a checkpoint: loss, perplexity and bits per byte on any data source, or accuracy on a multiple-choice task.

CHECKPOINT is a checkpoint folder (runs/x/checkpoints/best) or a run folder (its best checkpoint,
else its last). Without --set it reads the run's own validation split; --set data.… points it at
other text with the keys training uses (e.g. --set data.source=text --set data.path=test.txt
--split all). --task FILE.jsonl scores a multiple-choice task instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from b6lab.evaluate import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder or a run folder")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
        help="the text to evaluate on, with training's data keys (repeatable); also train.batch_size, train.eval_steps",
    )
    parser.add_argument("--split", choices=("val", "train", "all"), default="val",
                        help="which part of the data: val (default), train, or all: the train part then the val part "
                        "(of a single text file, the whole file, with an end-of-text token between the two)")
    parser.add_argument("--max-batches", type=int, help="read at most this many batches (default: the whole split, "
                        "or, when --set gives train.eval_steps, the trainer's own validation set: that many global batches)")
    parser.add_argument("--task", metavar="FILE.jsonl", help="a multiple-choice task: lines of "
                        '{"context", "choices", "label"} or HellaSwag\'s own (ctx_a, ctx_b, activity_label, endings, label)')
    parser.add_argument("--limit", type=int, help="with --task: score only the first N questions")
    parser.add_argument("--target-delimiter", default=" ", help="with --task: put between context and choice (default: a space)")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32", help="autocast dtype (default fp32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")


def run(args: argparse.Namespace) -> int:
    from b6lab.config import parse_override
    from b6lab.errors import UsageError
    from b6lab.evaluate import autocast, evaluate_text, load_checkpoint

    for name in ("max_batches", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    ckpt = load_checkpoint(args.checkpoint, args.device, args.overrides)
    if ckpt.note:
        print(f"note: {ckpt.note}", file=sys.stderr)
    progress = _Progress()
    if args.task:
        from b6lab.multiple_choice import evaluate_choices, read_task

        questions = read_task(args.task, args.limit)
        with autocast(next(ckpt.model.parameters()).device, args.precision):
            figures = evaluate_choices(
                ckpt.model, ckpt.tokenizer, questions, max_length=ckpt.cfg.model.max_seq_len,
                batch_size=ckpt.cfg.train.batch_size, target_delimiter=args.target_delimiter,
                on_batch=lambda done, total: progress.show(done, total, f"{done}/{total} choices scored"),
            )
        figures = {"checkpoint": str(ckpt.folder), "task": args.task, **figures}
    else:
        max_batches = args.max_batches
        if max_batches is None and any(parse_override(o)[0] == "train.eval_steps" for o in args.overrides):
            max_batches = trainer_validation_batches(ckpt)
        figures = evaluate_text(
            ckpt, split=args.split, max_batches=max_batches, precision=args.precision,
            on_batch=lambda f: progress.show(f["batches"], max_batches, f"{f['batches']} batches, {f['tokens']:,} tokens, "
                                             f"loss {f['loss']:.4f}"),
        )
    progress.close()
    print(json.dumps(figures) if args.json else _table(figures))
    return 0


class _Progress:
    """A tqdm bar on stderr when stdout is a terminal; otherwise a plain line every 10 seconds and at the end."""

    EVERY_SECONDS = 10.0

    def __init__(self):
        self.bar, self.last_line, self.pending = None, time.monotonic(), None
        self.interactive = sys.stdout.isatty()

    def show(self, done: int, total: int | None, line: str) -> None:
        if self.interactive:
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc="eval", dynamic_ncols=True, file=sys.stderr)
            self.bar.update(done - self.bar.n)
            return
        self.pending = line
        if time.monotonic() - self.last_line >= self.EVERY_SECONDS:
            self._say()

    def _say(self) -> None:
        print(f"eval: {self.pending}", file=sys.stderr, flush=True)
        self.last_line, self.pending = time.monotonic(), None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.pending:
            self._say()


def _table(figures: dict) -> str:
    rows = [("checkpoint", figures["checkpoint"])]
    if "task" in figures:
        rows += [("task", f"{figures['task']} ({figures['questions']} questions)")]
        for key in ("acc", "acc_norm"):
            stderr = figures[f"{key}_stderr"]
            rows.append((key, f"{figures[key]:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")))
    else:
        rows += [
            ("data", f"{figures['data']} ({figures['split']} split)"),
            ("read", f"{figures['tokens']:,} tokens, {figures['bytes']:,} bytes, {figures['batches']} batches"),
            ("loss", f"{figures['loss']:.4f} nats/token"),
            ("perplexity", f"{figures['perplexity']:.3f}"),
            ("bits/byte", f"{figures['bits_per_byte']:.4f}" if figures["bits_per_byte"] is not None else "-"),
        ]
    return "\n".join(f"{name:<11} {value}" for name, value in rows)


def trainer_validation_batches(ckpt) -> int:
    """Batches of train.batch_size holding the trainer's own validation set: train.eval_steps global
    batches, the global batch as the run that wrote the checkpoint had it (micro-batch x
    accumulation x processes, from its config.yaml's `run` record)."""
    run = ckpt.config.get("run", {})
    resolved = run.get("resolved", {})
    global_batch = (resolved.get("batch_size", ckpt.cfg.train.batch_size)
                    * resolved.get("grad_accum_steps", ckpt.cfg.train.grad_accum_steps) * run.get("processes", 1))
    return -(-ckpt.cfg.train.eval_steps * global_batch // ckpt.cfg.train.batch_size)
