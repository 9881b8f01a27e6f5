#!/usr/bin/env bash
# Runs densenet's benchmarks and, where a local PyTorch is installed, the same shapes in
# PyTorch right after (same machine, same threads), then prints the time ratios.
# With ORT=1, densenet121 inference is also compared with ONNX Runtime, on our own ONNX
# export of it. Without either it prints densenet's figures alone. Not part of the tests.
#
# Python packages live in the bench's own virtual environment, bench/.venv (never used by
# the tests; VENV=DIR names another). Install them once with
#
#   python3 -m venv bench/.venv && bench/.venv/bin/pip install torch torchvision onnxruntime numpy
#
# (plain `pip install torch` brings the CUDA wheels, gigabytes this CPU never uses; first
# `bench/.venv/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu`
# installs the CPU-only ones.)
# PyTorch runs from bench/.venv/bin/python when that has torch and torchvision, else from
# the system python3 if it has them. ORT=1 makes bench/.venv with onnxruntime and numpy if
# it lacks them.
#
#   bench/compare.sh                     # BC-100-12 train b64, densenet121 train b16,
#                                        # densenet121 eval b16 and b1
#   THREADS=2 STEPS=5 ROUNDS=3 bench/compare.sh
#   WORK=train bench/compare.sh          # only the training steps (WORK=infer: only inference)
#   ONLY="densenet121 train" STEPS=1 bench/compare.sh   # only the rows whose name has ONLY
#   ORT=1 WORK=infer ROUNDS=5 bench/compare.sh   # densenet vs ONNX Runtime
#   ORT=1 ORT_EXPORT=torch WORK=infer bench/compare.sh   # on torch.onnx.export's file
#   OV=1 PRECISION=bf16 WORK=infer ROUNDS=3 bench/compare.sh   # densenet --precision bf16
#                                        # vs OpenVINO's bf16 (its default on AMX CPUs)
#   DENSENET_ROUTES=no-winograd bench/compare.sh   # densenet's 3×3 never through Winograd
#   DENSENET_KERNELS=avx2 bench/compare.sh   # densenet on the AVX2 table (AVX-512 CPUs)
#   ISA=avx2 bench/compare.sh            # both sides held to AVX2 on an AVX-512 CPU (below)
#
# ISA=avx2 stands in for an AVX2 machine on an AVX-512 one: densenet runs its avx2 table
# and is built without the gemm crate's AVX-512 micro-kernels (`--no-default-features`, in
# target/isa-avx2 so that the usual build stays as it is),
# PyTorch runs ATen's AVX2 kernels (ATEN_CPU_CAPABILITY), oneDNN's AVX2 convolutions
# (ONEDNN_MAX_CPU_ISA) and MKL's AVX2 products (MKL_ENABLE_INSTRUCTIONS). ONNX Runtime has
# no such switch (MLAS picks its kernels from cpuid), so its rows still run AVX-512 and the
# header says so. On Zen 4, which runs a 512-bit FMA as two 256-bit halves, the FLOP rate is
# the same either way; on Intel's AVX-512 cores it is not, so read the ratios as Zen 4's.
#
# PRECISION=bf16 runs densenet's inference rows at --precision bf16 (training stays f32:
# bf16 training is not built); OV=1 adds OpenVINO (made in bench/.venv like ORT=1's
# onnxruntime) at the same INFERENCE_PRECISION_HINT, on our ONNX export.
#
# With ROUNDS > 1 the two sides alternate (ours, theirs, ours, theirs, ...) and the line
# shows each side's median over the rounds and the median of the per-round ratios: on a
# shared 2-core machine single runs of either side vary by 20-40%, and PyTorch's OpenMP
# threads suffer most when another process takes a core, so compare on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-3}
ROUNDS=${ROUNDS:-1}
WORK=${WORK:-all}
PRECISION=${PRECISION:-f32}
case ${ISA:-native} in
  native) cargo build --release -q; bin=target/release/densenet ;;
  avx2) CARGO_TARGET_DIR=target/isa-avx2 cargo build --release -q --no-default-features
    bin=target/isa-avx2/release/densenet
    export DENSENET_KERNELS=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ;;
  *) echo "ISA=$ISA: only avx2 (or native, the default) is known" >&2; exit 2 ;;
esac
venv=${VENV:-bench/.venv}
# the Python that runs PyTorch: the bench's venv when it has torch, else the system's
py=python3
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  py=$venv/bin/python
fi
have_torch=0
if "$py" -c "import torch, torchvision" 2>/dev/null; then have_torch=1; fi
json_get() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d.get(sys.argv[2], d.get(sys.argv[3], '')))" "$1" "$2" "${3:-$2}"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(v) for v in sys.argv[1:]))" "$@"; }

[ "${ISA:-native}" = native ] || echo "ISA=avx2: densenet (its table and gemm's micro-kernels) and PyTorch held to AVX2; ONNX Runtime still runs AVX-512 where the CPU has it"
echo "threads: $THREADS, rounds: $ROUNDS, cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-34s %10s %13s %8s   %s\n' "work" "densenet" "other" "ratio" "per-round ratios"

# compare NAME OURS_CMD THEIRS_CMD OURS_KEY THEIRS_KEY HAVE_THEIRS [THEIRS_NAME]
compare() {
  local name=$1 ours_cmd=$2 theirs_cmd=$3 okey=$4 tkey=$5 have=$6 label=${7:-pytorch}
  local os=() ts=() rs=()
  [[ $name == *"${ONLY:-}"* ]] || return 0
  for _ in $(seq "$ROUNDS"); do
    o=$(json_get "$(eval "$ours_cmd")" "$okey")
    os+=("$o")
    if [ "$have" = 1 ]; then
      t=$(json_get "$(eval "$theirs_cmd" 2>/dev/null | tail -1)" median_s "$tkey")
      ts+=("$t")
      rs+=("$(python3 -c "print(f'{$o/$t:.2f}')")")
    fi
  done
  local om tm="-" rm="-"
  om=$(median "${os[@]}")
  if [ "$have" = 1 ]; then
    tm=$(printf '%.3fs %s' "$(median "${ts[@]}")" "$label")
    rm=$(printf '%.2fx' "$(median "${rs[@]}")")
  fi
  printf '%-34s %9.3fs %13s %8s   %s\n' "$name" "$om" "$tm" "$rm" "${rs[*]:-}"
}

[ "$WORK" = infer ] || compare "BC-100-12 train step, batch 64" \
  "$bin --threads $THREADS bench train --model densenet-bc-100-12 --batch-size 64 --steps $STEPS --json" \
  "$py bench/pytorch/bench_train.py --depth 100 --k 12 --bc --batch 64 --threads $THREADS --steps $STEPS" \
  median_step_s median_step_s $have_torch
[ "$WORK" = infer ] || compare "densenet121 train step, batch 16" \
  "$bin --threads $THREADS bench train --model densenet121 --batch-size 16 --steps $STEPS --json" \
  "$py bench/pytorch/bench_train.py --model densenet121 --batch 16 --threads $THREADS --steps $STEPS" \
  median_step_s median_step_s $have_torch
[ "$WORK" = train ] || for b in 16 1; do
  compare "densenet121 eval, batch $b" \
    "$bin --threads $THREADS --precision $PRECISION bench infer --model densenet121 --batch-size $b --steps $STEPS --json" \
    "$py bench/pytorch/bench_infer.py --model densenet121 --batch $b --threads $THREADS --iters $STEPS" \
    median_s median $have_torch
done
# our ONNX export of densenet121 (or torch.onnx.export's, ORT_EXPORT=torch), once
onnx=
export_onnx() {
  [ -z "$onnx" ] || return 0
  onnx=$(mktemp -d)/densenet121.onnx
  if [ "${ORT_EXPORT:-ours}" = torch ]; then
    # torchvision's densenet121 through torch.onnx.export (the TorchScript exporter, which
    # needs the `onnx` package: pip install onnx). ONNX Runtime ran it at the same speed as
    # our export (b1, 20 runs × 3: 45–47 ms both, on this project's Zen 3).
    "$py" -W ignore::DeprecationWarning -c "import sys, torch, torchvision
torch.onnx.export(torchvision.models.densenet121().eval(), torch.randn(1, 3, 224, 224), sys.argv[1],
    input_names=['input'], output_names=['logits'], dynamic_axes={'input': {0: 'batch'}}, dynamo=False)" "$onnx"
  else
    # the weights do not change the time, but export wants some: the reference ones
    weights=${REF:-../shared/reference}/torchvision_densenet121.weights.safetensors
    [ -f "$weights" ] || { echo "no $weights: set REF to the reference directory" >&2; exit 1; }
    $bin export --model densenet121 --weights "$weights" --out "$onnx" --batch dynamic >/dev/null
  fi
}
# peer NAME PYTHON_MODULE PIP_PACKAGE SCRIPT_AND_ARGS: densenet121 inference against a peer
peer() {
  local name=$1 module=$2 package=$3 script=$4
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import $module" 2>/dev/null; then
    { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } && "$venv/bin/pip" install -q "$package" numpy
  fi
  export_onnx
  for b in 16 1; do
    compare "densenet121 eval, batch $b" \
      "$bin --threads $THREADS --precision $PRECISION bench infer --model densenet121 --batch-size $b --steps $STEPS --json" \
      "$venv/bin/python $script $onnx --batch $b --threads $THREADS --iters $STEPS" \
      median_s median_s 1 "$name"
  done
}
if [ "${ORT:-0}" = 1 ] && [ "$WORK" != train ]; then
  peer onnxruntime onnxruntime onnxruntime bench/ort_infer.py
fi
if [ "${OV:-0}" = 1 ] && [ "$WORK" != train ]; then
  peer "openvino-$PRECISION" openvino openvino "bench/ov_infer.py --precision $PRECISION"
fi
[ $have_torch = 1 ] || echo "(PyTorch not installed: $venv/bin/pip install torch torchvision to compare)"
