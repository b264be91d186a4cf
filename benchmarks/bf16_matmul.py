"""One bf16 matmul of the cpu-small model's shapes, three ways, forward only: fp32, torch's bf16
kernel, and b6lab's route on CPUs without bf16 instructions (b6lab/cpu_bf16.py: widen the bf16
operands to fp32, fp32 GEMM, round the result to bf16). Each through b6lab's own Linear layer
under bf16 autocast, as the model runs it. Prints GFLOP/s and each bf16 route's largest
difference from the exact (float64) sum of the bf16 products.

    python benchmarks/bf16_matmul.py
"""

from __future__ import annotations

import time

import torch

from b6lab import cpu_bf16

SHAPES = [  # (tokens, in, out): cpu-small's micro-batch of 8 x 256 tokens
    (2048, 384, 1536, "feed-forward up"),
    (2048, 1536, 384, "feed-forward down"),
    (2048, 384, 50304, "LM head"),
    (2048, 384, 384, "attention projection"),
]


def gflops(run, flops: float, repeats: int = 5) -> float:
    run(), run()  # warm-up: kernel choice, allocations
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return flops * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bf16 instructions: {cpu_bf16.cpu_has_bf16_instructions()}")
    print(f"{'shape':<42} {'fp32':>6} {'bf16 torch':>11} {'bf16 fp32 GEMM':>15}   max |error|: torch, fp32 GEMM")
    for tokens, n_in, n_out, name in SHAPES:
        layer, x = cpu_bf16.Linear(n_in, n_out, bias=False), torch.randn(tokens, n_in)
        exact = x.bfloat16().double() @ layer.weight.detach().bfloat16().double().t()

        def bf16(on_fp32_gemm: bool):
            cpu_bf16.BF16_ON_FP32_GEMM = on_fp32_gemm
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return layer(x)

        flops = 2 * tokens * n_in * n_out
        with torch.no_grad():
            fp32 = gflops(lambda: layer(x), flops)
            native = gflops(lambda: bf16(False), flops)
            error_native = (bf16(False).double() - exact).abs().max().item()
            route = gflops(lambda: bf16(True), flops)
            error_route = (bf16(True).double() - exact).abs().max().item()
        label = f"{tokens} x {n_in} -> {n_out} ({name})"
        print(f"{label:<42} {fp32:>6.0f} {native:>11.0f} {route:>15.0f}   {error_native:.3g}, {error_route:.3g}")


if __name__ == "__main__":
    main()
