"""onnxruntime session settings on the benchmark model's architecture, timed interleaved.

Builds an ONNX graph shaped like nnU-Net's PlainConvUNet of ``bench`` (``make_matrix_models.py``: 5 stages,
features 8-16-32-64-64, kernels 1x3x3 then 3x3x3, strides 1, 1x2x2, 2, 2, 2; two conv + InstanceNorm +
LeakyReLU per stage, transposed-conv decoder, 3 classes, patch 48 x 64 x 64) with random weights (the weights do
not change the arithmetic's cost), then times ``session.run`` on one window per call under each setting, the
settings interleaved round by round so all see the same machine load. Prints the median and best ms per window.

    python benchmarks/bench_ort_settings.py [--rounds 15] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

PATCH = [48, 64, 64]
FEATURES = [8, 16, 32, 64, 64]
KERNELS = [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
STRIDES = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
CLASSES = 3


def build(path: str, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def name(p):
        count[0] += 1
        return f"{p}{count[0]}"

    def const(a):
        n = name("w")
        inits.append(numpy_helper.from_array(a.astype(np.float32), n))
        return n

    def conv_block(x, cin, cout, k, s):
        w = const(rng.normal(0, (2.0 / (cin * np.prod(k))) ** 0.5, (cout, cin, *k)))
        b = const(np.zeros(cout))
        y = name("c")
        nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=k, strides=s,
                                      pads=[kk // 2 for kk in k] * 2))
        z = name("n")
        nodes.append(helper.make_node("InstanceNormalization", [y, const(np.ones(cout)), const(np.zeros(cout))], [z],
                                      epsilon=1e-5))
        r = name("r")
        nodes.append(helper.make_node("LeakyRelu", [z], [r], alpha=0.01))
        return r

    x, cin, skips = "input", 1, []
    for f, k, s in zip(FEATURES, KERNELS, STRIDES, strict=True):
        x = conv_block(x, cin, f, k, s)
        x = conv_block(x, f, f, k, [1, 1, 1])
        skips.append((x, f))
        cin = f
    for i in range(len(FEATURES) - 2, -1, -1):
        f, s, k = FEATURES[i], STRIDES[i + 1], KERNELS[i]
        w = const(rng.normal(0, 0.1, (cin, f, *s)))
        u = name("u")
        nodes.append(helper.make_node("ConvTranspose", [x, w, const(np.zeros(f))], [u], kernel_shape=s, strides=s))
        c = name("cat")
        nodes.append(helper.make_node("Concat", [u, skips[i][0]], [c], axis=1))
        x = conv_block(c, 2 * f, f, k, [1, 1, 1])
        x = conv_block(x, f, f, k, [1, 1, 1])
        cin = f
    nodes.append(helper.make_node("Conv", [x, const(rng.normal(0, 0.3, (CLASSES, cin, 1, 1, 1))),
                                           const(np.zeros(CLASSES))], ["output"], kernel_shape=[1, 1, 1]))
    g = helper.make_graph(nodes, "plainconvunet_bench",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, *PATCH])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", CLASSES, *PATCH])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, path)


def settings(threads: int) -> dict:
    G = ort.GraphOptimizationLevel

    def base(level=G.ORT_ENABLE_ALL, n_threads=threads, **cfg):
        o = ort.SessionOptions()
        o.graph_optimization_level = level
        o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        o.inter_op_num_threads = 1
        o.intra_op_num_threads = n_threads
        o.log_severity_level = 3
        for k, v in cfg.items():
            o.add_session_config_entry(k, v)
        return o

    no_arena = base()
    no_arena.enable_cpu_mem_arena = False
    return {
        "IMAGIO now (ENABLE_ALL, sequential)": (base(), {}),
        "ENABLE_EXTENDED": (base(G.ORT_ENABLE_EXTENDED), {}),
        "ENABLE_BASIC": (base(G.ORT_ENABLE_BASIC), {}),
        "DISABLE_ALL": (base(G.ORT_DISABLE_ALL), {}),
        "ENABLE_BASIC, batch of 2": (base(G.ORT_ENABLE_BASIC), {"batch": 2}),
        "intra-op threads: onnxruntime's default (0)": (base(n_threads=0), {}),
        "intra-op threads: 1": (base(n_threads=1), {}),
        "no spinning": (base(**{"session.intra_op.allow_spinning": "0"}), {}),
        "denormals as zero": (base(**{"session.set_denormal_as_zero": "1"}), {}),
        "no CPU memory arena": (no_arena, {}),
        "IO binding (output preallocated)": (base(), {"io_binding": True}),
        "batch of 2 windows per call": (base(), {"batch": 2}),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=4, help="windows per setting per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="/tmp/plainconvunet_bench.onnx")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    build(a.model)
    rng = np.random.default_rng(1)
    x1 = rng.normal(0, 1, (1, 1, *PATCH)).astype(np.float32)
    sessions = {}
    for label, (opts, extra) in settings(a.threads).items():
        s = ort.InferenceSession(a.model, sess_options=opts, providers=["CPUExecutionProvider"])
        sessions[label] = (s, extra)
    try:  # the same graph on OpenVINO, as IMAGIO compiles it (fixed shape, float32), for reference
        import openvino as ov

        core = ov.Core()
        net = core.read_model(a.model)
        net.reshape([1, 1, *PATCH])
        req = core.compile_model(net, "CPU", {"INFERENCE_NUM_THREADS": a.threads,
                                              "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
        sessions["OpenVINO (reference, not onnxruntime)"] = (req, {"openvino": True})
    except ImportError:
        pass
    ref = sessions["IMAGIO now (ENABLE_ALL, sequential)"][0].run(None, {"input": x1})[0]
    times = {k: [] for k in sessions}
    maxdiff = {}
    for label, (s, extra) in sessions.items():  # warm-up, and the same answer
        b = extra.get("batch", 1)
        out = s.infer({0: x1})[0] if extra.get("openvino") else s.run(None, {"input": np.repeat(x1, b, axis=0)})[0][:1]
        maxdiff[label] = float(np.abs(out - ref).max())
    for r in range(a.rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for label in order:
            s, extra = sessions[label]
            b = extra.get("batch", 1)
            xb = np.repeat(x1, b, axis=0)
            n = max(1, a.calls // b)
            if extra.get("openvino"):
                t = time.perf_counter()
                for _ in range(n):
                    s.infer({0: xb})
            elif extra.get("io_binding"):
                io = s.io_binding()
                out = ort.OrtValue.ortvalue_from_numpy(np.empty((1, CLASSES, *PATCH), np.float32))
                t = time.perf_counter()
                for _ in range(n):
                    io.bind_cpu_input("input", xb)
                    io.bind_ortvalue_output("output", out)
                    s.run_with_iobinding(io)
                    out.numpy()
            else:
                t = time.perf_counter()
                for _ in range(n):
                    s.run(None, {"input": xb})
            times[label].append((time.perf_counter() - t) * 1000 / (n * b))
    res = {k: {"median_ms_per_window": statistics.median(v), "best_ms_per_window": min(v),
               "max_abs_diff_vs_now": maxdiff[k]} for k, v in times.items()}
    base_med = res["IMAGIO now (ENABLE_ALL, sequential)"]["median_ms_per_window"]
    print(f"onnxruntime {ort.__version__}, {a.threads} threads, {a.rounds} interleaved rounds x {a.calls} windows")
    print("| setting | median ms/window | best ms/window | median vs now | max abs diff |")
    print("|---|---|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {v['median_ms_per_window']:.1f} | {v['best_ms_per_window']:.1f} | "
              f"{v['median_ms_per_window'] / base_med:.3f} | {v['max_abs_diff_vs_now']:.1e} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "threads": a.threads, "rounds": a.rounds, "results": res}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
