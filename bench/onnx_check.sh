#!/usr/bin/env bash
# Runs the ONNX export of torchvision densenet121 in ONNX Runtime (Python) on the
# reference input and prints the largest absolute difference of its logits from
# `densenet forward` on the same input (and from PyTorch's, stored with the reference).
# Not part of the tests: it makes its own virtual environment (bench/.venv, git-ignored)
# and pip-installs onnxruntime and numpy there on first use.
#
#   bench/onnx_check.sh                  # opset 17, dynamic batch
#   OPSET=13 bench/onnx_check.sh
#   REF=/path/to/reference BIN=target/debug/densenet bench/onnx_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REF=${REF:-../shared/reference}
OPSET=${OPSET:-17}
weights=$REF/torchvision_densenet121.weights.safetensors
input=$REF/torchvision_densenet121.eval.safetensors
[ -f "$weights" ] || { echo "no $weights: set REF to the reference directory" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=target/release/densenet
fi
venv=bench/.venv
if [ ! -x $venv/bin/python ]; then
  python3 -m venv $venv
  $venv/bin/pip install -q onnxruntime numpy
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$BIN" export --model densenet121 --weights "$weights" --out "$work/densenet121.onnx" \
  --batch dynamic --opset "$OPSET"
"$BIN" forward --model densenet121 --weights "$weights" --input "$input" \
  --out "$work/ours.safetensors" 2>/dev/null
$venv/bin/python - "$work/densenet121.onnx" "$input" "$work/ours.safetensors" <<'PY'
import json, struct, sys
import numpy as np
import onnxruntime as ort

def read_safetensors(path):
    """name -> array, for the F32/F64 tensors of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "F64": np.float64}
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] not in dtypes:
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out

model, ref_file, ours_file = sys.argv[1:]
ref = read_safetensors(ref_file)
ours = read_safetensors(ours_file)["logits"]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = sess.get_modelmeta().custom_metadata_map
(theirs,) = sess.run(["logits"], {"input": ref["input"]})
print(f"onnxruntime {ort.__version__}, model {meta['model']}, input {list(ref['input'].shape)}")
print(f"preprocess: {meta.get('preprocess')}")
print(f"max |onnxruntime - densenet forward| = {np.abs(theirs - ours).max():.3e}")
print(f"max |onnxruntime - PyTorch|          = {np.abs(theirs - ref['logits']).max():.3e}")
print(f"max |densenet forward - PyTorch|     = {np.abs(ours - ref['logits']).max():.3e}")
PY
