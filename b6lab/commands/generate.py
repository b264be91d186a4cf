"""Sample text from a trained model's checkpoint (or a run folder's best checkpoint)."""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from b6lab.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder (runs/x/checkpoints/best) or a run folder")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 picks the most likely token")
    parser.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


def check_arguments(args: argparse.Namespace) -> None:
    for flag, value, lowest in (("--max-new-tokens", args.max_new_tokens, 0), ("--top-k", args.top_k, 0),
                                ("--temperature", args.temperature, 0.0)):
        if value < lowest:
            raise UsageError(f"{flag} must be >= {lowest}, got {value}")
    device = args.device
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA device torch can use; use --device cpu")


def run(args: argparse.Namespace) -> int:
    from b6lab.generate import PastContextWarning

    with warnings.catch_warnings():  # restores showwarning on leaving
        shown_before = warnings.showwarning

        def show(message, category, *rest, **kwargs):
            if issubclass(category, PastContextWarning):  # one line of its own, wherever stdout's text has got to
                print(f"\nb6lab generate: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown_before(message, category, *rest, **kwargs)

        warnings.showwarning = show
        return _generate(args)


def _generate(args: argparse.Namespace) -> int:
    from b6lab.generate import load_for_sampling, sample

    check_arguments(args)
    model, tokenizer, note = load_for_sampling(args.checkpoint, args.device)
    if note:
        print(f"note: {note}", file=sys.stderr)
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        prompt_ids = [tokenizer.eos_id]  # an empty prompt starts a new document
    new_ids: list[int] = []
    printed = ""
    sys.stdout.write(args.prompt)
    for token in sample(model, prompt_ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k or None, eos_id=tokenizer.eos_id, generator=generator):
        new_ids.append(token)
        text = tokenizer.decode(new_ids)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
    sys.stdout.write(tokenizer.decode(new_ids)[len(printed):] + "\n")
    return 0
