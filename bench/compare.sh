#!/usr/bin/env bash
# Runs densenet's benchmarks and, where a local PyTorch is installed, the same shapes in
# PyTorch right after (same machine, same threads), then prints the time ratios.
# Without PyTorch it prints densenet's figures alone. Not part of the tests.
#
#   bench/compare.sh            # BC-100-12 train b64, densenet121 eval b16 and b1
#   THREADS=2 STEPS=5 bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-3}
cargo build --release -q
bin=target/release/densenet
have_torch=0
if python3 -c "import torch, torchvision" 2>/dev/null; then have_torch=1; fi
json_get() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d[sys.argv[2]])" "$1" "$2"; }

echo "threads: $THREADS, cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-40s %12s %12s %8s\n' "work" "densenet" "pytorch" "ratio"

ours=$($bin --threads "$THREADS" bench train --model densenet-bc-100-12 --batch 64 --steps "$STEPS" --json)
o=$(json_get "$ours" median_step_s)
if [ $have_torch = 1 ]; then
  theirs=$(python3 bench/pytorch/bench_train.py --depth 100 --k 12 --bc --batch 64 --threads "$THREADS" --steps "$STEPS" 2>/dev/null | tail -1)
  t=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d.get('median_s', d.get('median_step_s')))" "$theirs")
else t=""; fi
ratio() { if [ -n "$2" ]; then python3 -c "print(f'{$1/$2:.2f}x')"; else echo "-"; fi; }
printf '%-40s %11.3fs %12s %8s\n' "BC-100-12 train step, batch 64" "$o" "${t:--}" "$(ratio "$o" "$t")"

for b in 16 1; do
  ours=$($bin --threads "$THREADS" bench infer --model densenet121 --batch $b --steps "$STEPS" --json)
  o=$(json_get "$ours" median_s)
  if [ $have_torch = 1 ]; then
    theirs=$(python3 bench/pytorch/bench_infer.py --model densenet121 --batch $b --threads "$THREADS" --iters "$STEPS" 2>/dev/null | tail -1)
    t=$(python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d.get('median_s', d.get('median')))" "$theirs")
  else t=""; fi
  printf '%-40s %11.3fs %12s %8s\n' "densenet121 eval, batch $b" "$o" "${t:--}" "$(ratio "$o" "$t")"
done
[ $have_torch = 1 ] || echo "(PyTorch not installed: pip install torch torchvision to compare)"
