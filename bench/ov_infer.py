"""Times an ONNX model in OpenVINO (CPU) at one batch size and precision: prints one JSON
object {"median_s": …, "times_s": […]}. Run by bench/compare.sh (OV=1) from its own
virtual environment.

    python bench/ov_infer.py MODEL.onnx --batch 16 --threads 2 --iters 5 --precision bf16

`--precision` is OpenVINO's INFERENCE_PRECISION_HINT: bf16 is what OpenVINO picks by
default on CPUs with AMX or AVX512-BF16; f32 holds it to f32.
"""
import argparse, json, statistics, time

import numpy as np
import openvino as ov

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--batch", type=int, default=1)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--iters", type=int, default=5)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--precision", choices=["f32", "bf16"], default="f32")
a = p.parse_args()
core = ov.Core()
model = core.read_model(a.model)
model.reshape({0: [a.batch, 3, 224, 224]})
compiled = core.compile_model(model, "CPU", {
    "INFERENCE_NUM_THREADS": a.threads,
    "PERFORMANCE_HINT": "LATENCY",
    "INFERENCE_PRECISION_HINT": a.precision,
})
req = compiled.create_infer_request()
x = np.random.default_rng(0).standard_normal((a.batch, 3, 224, 224), dtype=np.float32)
times = []
for i in range(a.warmup + a.iters):
    t = time.perf_counter()
    req.infer({0: x})
    if i >= a.warmup:
        times.append(time.perf_counter() - t)
print(json.dumps({"median_s": statistics.median(times), "times_s": times}))
