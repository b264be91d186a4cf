#!/usr/bin/env bash
# The GPU half of issue 5, prepared for one H100 or H200: the GPU tests, then `b6lab bench` for
# gpt2-small and gpt2-medium in bf16 with each attention backend that can run there, and a
# table of tokens/s and MFU against the bf16 matmul peak measured on that GPU.
#
#   bash benchmarks/gpu_check.sh            # tests + sdpa (default: compiled), sdpa eager, sdpa(flash kernel) eager, flash-v2, flash-v3
#   bash benchmarks/gpu_check.sh --quick    # tests + sdpa (default) and sdpa eager only
#
# Through the device tool (repo root; results come back from $OUT):
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=600)
# Budget: on an H100 on 2026-11-28 the whole script took 378 s (tests 44 s, the 60-step train
# ~70 s, each eager bench ~20 s, each compiled default 1-1.5 min); --quick leaves room for a
# rerun in a 15-minute session.
#
# What it needs there: python3 with a CUDA build of torch, numpy, pyyaml, pluggy, tqdm (psutil
# optional). The device image has all of them (KINDS.md); b6lab itself runs from this checkout
# through PYTHONPATH, nothing is installed. `b6lab bench` imports no ray, datasets, wandb or
# transformers: the data is the embedded python-stdlib corpus with the byte tokenizer
# (data.tokenizer=byte; the gpt2 tokenizer would need files from the Hub).
# If a package is missing, carry it as wheels: here, once, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl pluggy==1.6.0 pyyaml==6.0.2 tqdm==4.67.1
# then run with carry=[".whl"]; this script installs whatever lies in .whl/ into /tmp/site first.
# flash-attn is not in the image and its wheels (hundreds of MB) are over the 64 MiB that can be
# carried, so flash-v2/flash-v3 rows say "not installed" unless the machine already has them.
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
PY=${PYTHON:-python3}
OUTDIR=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export B6LAB_CACHE="${B6LAB_CACHE:-/tmp/b6lab-cache}" B6LAB_LOAD_ENTRYPOINTS=0
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
LOG="$OUTDIR/gpu_check.log"
RESULTS="$OUTDIR/gpu_bench.jsonl"
: >"$RESULTS"
exec > >(tee -a "$LOG") 2>&1

echo "== $(date -u +%FT%TZ) $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" || exit 1
$PY -c "import flash_attn; print('flash_attn', flash_attn.__version__)" 2>/dev/null || echo "flash_attn: not installed"
$PY -c "import flash_attn_interface; print('flash_attn_interface (FA3): installed')" 2>/dev/null || echo "flash_attn_interface (FA3): not installed"

echo "== GPU tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/gpu -rs

echo "== b6lab train with its GPU default (no preset), 60 steps"
timeout 180 $PY -m b6lab.cli train --set train.max_steps=60 --set train.eval_interval=30 --set train.eval_steps=8 \
    --set train.out_dir=/tmp/b6lab-gpu-train --set logging.progress=false 2>&1 | tail -n 12

echo "== bf16 matmul peak"
PEAK=$($PY -c "
import torch
from b6lab.bench import measure_peak_flops
print(f'{measure_peak_flops(torch.device(\"cuda\"), torch.bfloat16, seconds=2.0) / 1e12:.1f}')")
echo "bf16 peak: $PEAK TFLOP/s (8192^3 matmul, best of repeats)"

# label | extra --set overrides. The default compiles on a GPU (train.compile=auto); the eager
# rows show what compiling buys.
VARIANTS=("sdpa (default)|model.attention=sdpa" "sdpa eager|model.attention=sdpa train.compile=false")
if [[ $QUICK == 0 ]]; then
    VARIANTS+=("sdpa(flash) eager|model.attention=sdpa model.sdpa_kernel=flash train.compile=false"
               "flash-v2|model.attention=flash-v2" "flash-v3|model.attention=flash-v3")
fi
for preset in gpt2-small gpt2-medium; do
    for variant in "${VARIANTS[@]}"; do
        label=${variant%%|*}
        sets=()
        for s in data.tokenizer=byte logging.progress=false ${variant#*|}; do sets+=(--set "$s"); done
        echo "== $preset $label: b6lab bench --preset $preset ${sets[*]} --peak-tflops $PEAK"
        output=$(timeout 420 $PY -m b6lab.cli bench --preset "$preset" --json --steps 10 --warmup 3 \
                 --peak-tflops "$PEAK" "${sets[@]}" 2>&1)
        status=$?
        echo "$output" | tail -n 9
        last=$(echo "$output" | tail -n 1)
        if [[ $status == 0 && $last == \{* ]]; then
            echo "{\"preset\": \"$preset\", \"variant\": \"$label\", \"result\": $last}" >>"$RESULTS"
        else
            reason=$(echo "$output" | grep -v '^\s*$' | tail -n 1 | sed 's/"/\\"/g')
            echo "{\"preset\": \"$preset\", \"variant\": \"$label\", \"error\": \"exit $status: $reason\"}" >>"$RESULTS"
        fi
    done
done

echo "== results (MFU against the measured bf16 peak, $PEAK TFLOP/s)"
$PY - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"{'preset':<12} {'attention':<20} {'tokens/s':>10} {'MFU':>6} {'step s':>7} {'peak GB':>8} {'batch':>9}  compile warm-up")
for row in rows:
    r = row.get("result")
    if r is None:
        print(f"{row['preset']:<12} {row['variant']:<20} {row['error'][:90]}")
        continue
    batch = f"{r['micro_batch']}x{r['grad_accum_steps']}"
    warm = f"{r['first_step_s']:.0f} s" if r["compile"] else ""
    print(f"{row['preset']:<12} {row['variant']:<20} {r['tokens_per_sec']:>10,.0f} {100 * r['mfu']:>5.1f}% "
          f"{r['step_time_s']:>7.3f} {r['peak_mem_mb'] / 1024:>8.1f} {batch:>9}  {warm}")
EOF
