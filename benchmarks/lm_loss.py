"""The LM head and its loss alone (cpu-small's shapes: 2048 tokens, 384 wide, vocab 50304):
forward + backward of the plain route (F.linear, then F.cross_entropy over fp32 logits) against
b6lab's fused, chunked LinearCrossEntropy at several chunk sizes, and the cost of writing a
fresh logits-sized buffer against reusing one (the page faults that b6lab.lm_loss avoids).

    python benchmarks/lm_loss.py                 # fp32
    python benchmarks/lm_loss.py --precision bf16 --repeats 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from b6lab.lm_loss import LinearCrossEntropy

TOKENS, WIDTH, VOCAB = 2048, 384, 50304


def plain(h, w, t):
    return F.cross_entropy(F.linear(h, w).float(), t, ignore_index=-1)


def fused(chunk):
    return lambda h, w, t: LinearCrossEntropy.apply(h, w, t, chunk, True, None, 0.0)


def forward_backward(loss_fn, h0, w0, targets, precision):
    h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = loss_fn(h, w, targets)
    loss.backward()


def median_ms(fn, repeats):
    fn()  # first call: allocation, kernel choice
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    h0, w0 = torch.randn(TOKENS, WIDTH), torch.randn(VOCAB, WIDTH) * 0.02
    targets = torch.randint(0, VOCAB, (TOKENS,))
    print(f"LM head + loss, forward and backward, {TOKENS} tokens x {WIDTH} -> {VOCAB}, {args.precision}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'variant':<28} {'ms':>8}")
    variants = {"plain (F.cross_entropy)": plain}
    for chunk in (256, 512, 1024, 2048):
        variants[f"fused, {chunk} tokens a chunk"] = fused(chunk)
    for name, fn in variants.items():
        ms = median_ms(lambda: forward_backward(fn, h0, w0, targets, args.precision), args.repeats)
        print(f"{name:<28} {ms:>8.0f}")

    print("\nfilling one chunk of logits (1024 x 50304 fp32, 206 MB)")
    h, buffer = h0[:1024], torch.empty(1024, VOCAB)
    rows = {
        "matmul into a fresh tensor": lambda: h @ w0.t(),
        "matmul into a reused buffer": lambda: torch.mm(h, w0.t(), out=buffer),
        "fill_ a fresh tensor": lambda: torch.empty(1024, VOCAB).fill_(1.0),
        "fill_ a reused buffer": lambda: buffer.fill_(1.0),
    }
    for name, fn in rows.items():
        print(f"{name:<28} {median_ms(fn, args.repeats * 2):>8.1f}")


if __name__ == "__main__":
    main()
