#!/bin/bash
# One norm_depth trial (pre, warmup 100, gpt2 init, seed 0; 1 thread, as a sweep trial runs) as a
# whole `b6lab train` process: eager against whole-model torch.compile, alternating, after one cold
# compile that fills the inductor cache (so the compiled runs show what a sweep's later trials pay).
#   bash benchmarks/trial_compile.sh [rounds]
set -e
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SETS="--set model.n_layers=16 --set model.d_model=64 --set model.n_heads=4 --set optim.name=adamw
 --set optim.lr=3.0e-3 --set optim.weight_decay=0.1 --set train.precision=fp32 --set train.max_steps=400
 --set train.eval_interval=100 --set train.eval_steps=8 --set train.log_interval=25
 --set schedule.warmup_steps=100 --set train.threads=1"
WORK=$(mktemp -d)
run() {  # label, train.compile
  local out="$WORK/$1-$RANDOM" start end
  start=$(date +%s.%N)
  b6lab train --preset tiny $SETS --set train.compile="$2" --set train.out_dir="$out" --quiet > "$out.log" 2>&1
  end=$(date +%s.%N)
  python -c "import json, sys; m = json.load(open(sys.argv[4] + '/summary.json')); \
print(f'{sys.argv[1]:13s} whole {float(sys.argv[3]) - float(sys.argv[2]):6.1f} s  train {m[\"wall_seconds\"]:6.1f} s  \
final val {m[\"final_val_loss\"]:.4f}', flush=True)" "$1" "$start" "$end" "$out"
}
lscpu | grep -E "Model name|CPU family|^Model:"
run compile-cold true
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then run eager false; run compile true; else run compile true; run eager false; fi
done
rm -rf "$WORK"
