"""Export a checkpoint for Hugging Face transformers (--format hf) or as plain safetensors weights.

CHECKPOINT is a checkpoint folder or a run folder (its best checkpoint, else its last). A Pre-LN
B6 exports as a GPT-NeoX; every other built-in choice as B6ForCausalLM, loaded with
trust_remote_code=True. A plugin or option the hf format cannot express is refused by name.
"""

from __future__ import annotations

import argparse

from b6lab.export import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder or a run folder")
    parser.add_argument("out", help="the folder to write (new, or empty)")
    parser.add_argument("--format", choices=FORMATS, default="hf", help="hf (default) or safetensors")


def run(args: argparse.Namespace) -> int:
    from b6lab.export import export

    written = export(args.checkpoint, args.out, args.format)
    print(f"wrote {args.out}: {written}")
    return 0
