"""Times an ONNX model in ONNX Runtime (CPU) at one batch size: prints one JSON object
{"median_s": …, "times_s": […]}. Run by bench/compare.sh from its own virtual environment.

    python bench/ort_infer.py MODEL.onnx --batch 16 --threads 2 --iters 5
"""
import argparse, json, statistics, time

import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--batch", type=int, default=1)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--iters", type=int, default=5)
p.add_argument("--warmup", type=int, default=1)
a = p.parse_args()
so = ort.SessionOptions()
so.intra_op_num_threads = a.threads
so.inter_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
shape = [a.batch if isinstance(d, str) else d for d in sess.get_inputs()[0].shape]
x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
times = []
for i in range(a.warmup + a.iters):
    t = time.perf_counter()
    sess.run(None, {"input": x})
    if i >= a.warmup:
        times.append(time.perf_counter() - t)
print(json.dumps({"median_s": statistics.median(times), "times_s": times, "onnxruntime": ort.__version__}))
