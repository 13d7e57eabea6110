"""Benchmark: per-layer time of qcc's bit-serial TVM kernels against onnxruntime fp32 and int8 (QDQ).

Usage: python bench/bench_cpu.py [--threads N] [--json bench/results/cpu.json]

Layers (batch 1): dense 1024x1024, conv 3x3 64->64 at 56x56 (pad 1). qcc at W1A1 (bipolar
XNOR-popcount) and W2A2 (2-bit unsigned activations, 2-bit two's-complement weights); the qcc time
includes the run-time activation packing and the zero-point correction (not requantization, which
is the reference code). onnxruntime runs the same layer in fp32 and as QDQ int8 (which it fuses to
QLinearConv / QLinearMatMul-style kernels). All timings in one process, side by side, with the same
thread count (TVM_NUM_THREADS and intra_op_num_threads); median of repeated runs. qcc is timed by
TVM's time_evaluator (no Python call overhead), onnxruntime by session.run from Python (a few us of
call overhead included), which flatters qcc on the microsecond-sized dense layer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def _median_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def _onnx_layer(kind: str, int8: bool):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "dense":
        x_shape, w = [1, 1024], rng.normal(size=(1024, 1024)).astype(np.float32)
    else:
        x_shape, w = [1, 64, 56, 56], rng.normal(size=(64, 64, 3, 3)).astype(np.float32)
    inits, nodes, x_name, w_name = [numpy_helper.from_array(w, "w")], [], "x", "w"
    if int8:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "sx"),
                  numpy_helper.from_array(np.array(0, np.uint8), "zx"),
                  numpy_helper.from_array(np.array(0.02, np.float32), "sw"),
                  numpy_helper.from_array(np.array(0, np.int8), "zw")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
                  helper.make_node("QuantizeLinear", ["w", "sw", "zw"], ["wq"]),
                  helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"])]
        x_name, w_name = "xd", "wd"
    if kind == "dense":
        nodes.append(helper.make_node("MatMul", [x_name, w_name], ["y0"]))
    else:
        nodes.append(helper.make_node("Conv", [x_name, w_name], ["y0"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
    if int8:  # requantize the output too, as a real int8 layer would
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "sy"),
                  numpy_helper.from_array(np.array(0, np.uint8), "zy")]
        nodes += [helper.make_node("QuantizeLinear", ["y0", "sy", "zy"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["y0"], ["y"]))
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString(), x_shape


def _ort_time(kind: str, int8: bool, threads: int, repeat: int) -> float:
    import numpy as np
    import onnxruntime as ort

    blob, x_shape = _onnx_layer(kind, int8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(0, 1, x_shape).astype(np.float32)
    return _median_time(lambda: sess.run(None, {"x": x}), repeat)


def _qcc_time(kind: str, w_bits: int, a_bits: int, bipolar: bool, repeat: int) -> float:
    import numpy as np
    import tvm

    from qcc.targets.cpu.kernels import (
        ConvSpec,
        DenseSpec,
        build_conv,
        build_dense,
        conv_correction,
        dense_correction,
        pack_conv_weights,
        pack_dense_weights,
    )

    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    lo, hi = (-1, 2) if bipolar else (-(2 ** (w_bits - 1)), 2 ** (w_bits - 1))
    if kind == "dense":
        spec = DenseSpec(1, 1024, 1024, a_bits, w_bits, bipolar)
        wc = rng.integers(lo, hi, (1024, 1024))
        wc = np.where(wc >= 0, 1, -1) if bipolar else wc
        lib, wp, corr = build_dense(spec), pack_dense_weights(wc, w_bits, bipolar), dense_correction(wc, 0, bipolar)
        x_shape, out_shape = (1, 1024), (1, spec.n_pad)
    else:
        spec = ConvSpec(1, 64, 56, 56, 64, 3, 3, 1, (1, 1), (1, 1, 1, 1), (1, 1), a_bits, w_bits, bipolar)
        wc = rng.integers(lo, hi, (64, 64, 3, 3))
        wc = np.where(wc >= 0, 1, -1) if bipolar else wc
        attrs = {"group": 1, "kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1]}
        lib, wp = build_conv(spec), pack_conv_weights(wc, w_bits, bipolar)
        corr = conv_correction(wc, 0, bipolar, (56, 56), attrs)
        x_shape, out_shape = (1, 64, 56, 56), (1, spec.co_pad, *spec.out_hw)
    x = np.where(rng.random(x_shape) < 0.5, -1, 1) if bipolar else rng.integers(0, 2**a_bits, x_shape)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in
            (x.astype(np.int32), wp, corr, np.zeros(out_shape, np.int64))]
    evaluator = lib.mod.time_evaluator("main", dev, number=max(1, repeat // 10), repeat=10)
    results = sorted(evaluator(*args).results)
    return results[len(results) // 2]


def main(argv=None) -> int:
    args = _args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from qcc.targets.cpu.kernels import host_target

    rows = []
    for kind, label in (("dense", "dense 1024x1024"), ("conv", "conv 3x3 64->64 @56x56")):
        fp32 = _ort_time(kind, False, args.threads, args.repeat)
        int8 = _ort_time(kind, True, args.threads, args.repeat)
        for name, wb, ab, bip in (("W1A1", 1, 1, True), ("W2A2", 2, 2, False)):
            t = _qcc_time(kind, wb, ab, bip, args.repeat)
            rows.append({"layer": label, "config": name, "qcc_us": t * 1e6, "ort_fp32_us": fp32 * 1e6,
                         "ort_int8_us": int8 * 1e6, "vs_fp32": fp32 / t, "vs_int8": int8 / t})
    print(f"threads: {args.threads} (TVM_NUM_THREADS, onnxruntime intra_op_num_threads); "
          f"TVM target: {host_target()}")
    print(f"{'layer':26} {'cfg':5} {'qcc us':>9} {'ort fp32':>9} {'ort int8':>9} {'x fp32':>7} {'x int8':>7}")
    for r in rows:
        print(f"{r['layer']:26} {r['config']:5} {r['qcc_us']:9.1f} {r['ort_fp32_us']:9.1f} {r['ort_int8_us']:9.1f} "
              f"{r['vs_fp32']:7.2f} {r['vs_int8']:7.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": args.threads, "target": str(host_target()), "rows": rows},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
