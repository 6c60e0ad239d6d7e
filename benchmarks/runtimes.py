"""Runtimes on this CPU: every binary conv of ResNet-18 and whole models, batch 1.

Usage::

    python benchmarks/runtimes.py                    # 1 and 2 threads, 9 rounds
    python benchmarks/runtimes.py --threads 1 --rounds 5 --skip-layers

For each configuration (alternating, ``--rounds`` rounds, median):

1. Every binary convolution of ``resnet18`` (224 px, batch 1) on the input it really receives:
   torch fp32 (bnnkit's float eval of the ``BinaryConv2d``: sign of the shifted input, scaled
   weight signs, ``conv2d``) and the bare fp32 ``F.conv2d`` of the same shape, torch bf16
   (channels_last, bf16 tensors: oneDNN's AVX-512 BF16 / AMX path), bnnkit's packed numba layer, OpenVINO
   binary (FakeQuantize + BinaryConvolution + scale/bias, exported by bnnkit), OpenVINO float
   (the same conv at f32 and at the plugin's default precision, recorded), and LCE's interpreter
   (correctness only on x86: its fast kernels are ARM's).
2. Whole ``resnet18`` and ``reactnet_resnet18``: torch fp32 of the binary model simulated in
   float (bnnkit's eval), the float network (every binary layer a plain ``nn.Conv2d``) in torch
   fp32 and bf16 and in OpenVINO at f32 and at its default precision, bnnkit packed (numba),
   OpenVINO binary (float ops at f32, and at the default precision), LCE's interpreter.
   Per stage (``layer1`` .. ``layer4``) the sums of part 1 are printed and recorded.
3. Sizes of the ``.tflite`` and the OpenVINO ``.bin`` of ``resnet18`` against the float state_dict.

The record goes to ``benchmarks/results/runtimes.jsonl``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's and OpenVINO's threads share 2 cores

import numpy as np
import torch
from _common import alternate, append_record, trained_like
from torch.nn import functional as F

import bnnkit
from bnnkit.export import convert, export_model, file_bytes, lower
from bnnkit.export.files import float_state_bytes
from bnnkit.export.graph import Graph, Op, _run_op
from bnnkit.export.lce import to_tflite
from bnnkit.export.openvino import to_openvino
from bnnkit.export.runtimes import LCEModel, OpenVINOModel, lce_interpreter_class


def float_network(name: str) -> torch.nn.Module:
    """``name`` with every binary layer replaced by the plain ``nn.Conv2d``/``nn.Linear`` of its
    shape: the float network the binary one is compared with."""
    model = trained_like(name, "float")
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, bnnkit.nn.BinaryConv2d):
                plain = torch.nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                        child.stride, child.padding, bias=child.bias is not None)  # fmt: skip
            elif isinstance(child, bnnkit.nn.BinaryLinear):
                plain = torch.nn.Linear(
                    child.in_features, child.out_features, child.bias is not None
                )
            else:
                continue
            plain.load_state_dict(
                {k: v for k, v in child.state_dict().items() if k in plain.state_dict()}
            )
            setattr(parent, child_name, plain)
    return model.eval()


def lce_ok() -> bool:
    try:
        lce_interpreter_class()
        return True
    except Exception:
        return False


def layer_rows(threads: int, rounds: int) -> list[dict]:
    torch.set_num_threads(threads)
    model = trained_like("resnet18", "reactnet")
    graph = lower(convert(model, check=False), (1, 3, 224, 224))
    values = {graph.input: torch.randn(1, 3, 224, 224)}
    for op in graph.ops[1:]:
        values[op.name] = _run_op(op, [values[i] for i in op.inputs])
    packed = convert(model, kernel="numba", check=False)
    return [
        _layer_row(op, values[op.inputs[0]], model, packed, threads, rounds)
        for op in graph.ops
        if op.kind == "bconv2d"
    ]


def _layer_row(op: Op, x: torch.Tensor, model: torch.nn.Module, packed: torch.nn.Module,
               threads: int, rounds: int) -> dict:  # fmt: skip
    name = op.attrs["source"]
    w = torch.from_numpy(op.tensors["signs"])
    stride, pad = op.attrs["stride"], op.attrs["padding"]
    xb16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    wb16 = w.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    layer = packed.get_submodule(name)
    binary_eval = model.get_submodule(
        name
    )  # the BinaryConv2d in eval: sign(x + b), sign(W) * alpha
    ov_bin = OpenVINOModel(to_openvino(Graph.of_op(op, tuple(x.shape))), num_threads=threads)
    float_op = Op("conv2d", op.name, ["x"], op.shape, {"stride": stride, "padding": pad, "groups": 1},
                  {"weight": op.tensors["signs"], "bias": None})  # fmt: skip
    ov_f32 = OpenVINOModel(to_openvino(Graph.of_op(float_op, tuple(x.shape))), num_threads=threads)
    ov_def = OpenVINOModel(
        to_openvino(Graph.of_op(float_op, tuple(x.shape))), num_threads=threads, precision=None
    )
    xn = x.numpy()
    fns = {
        "torch_fp32": lambda: binary_eval(x),  # bnnkit's float eval of the binary layer
        "torch_fp32_conv": lambda: F.conv2d(x, w, stride=stride, padding=pad),  # the bare conv
        "torch_bf16": lambda: F.conv2d(xb16, wb16, stride=stride, padding=pad),
        "bnnkit_numba": lambda: layer(x),
        "openvino_binary": lambda: ov_bin.predict(xn),
        "openvino_f32": lambda: ov_f32.predict(xn),
        "openvino_default": lambda: ov_def.predict(xn),
    }
    if lce_ok():
        lce = LCEModel(to_tflite(Graph.of_op(op, tuple(x.shape))), num_threads=threads)
        fns["lce_x86"] = lambda: lce.predict(xn)
    with torch.inference_mode():
        t = alternate(fns, rounds, reps=5, warmups=2)
    row = {"layer": name, "threads": threads, "shape": list(x.shape[1:]), "stride": list(stride)}
    row |= {f"{k}_ms": 1e3 * v for k, v in t.items()}
    row |= {f"{k}_speedup": t["torch_fp32"] / v for k, v in t.items() if k != "torch_fp32"}
    print(
        f"{name:22s} {threads}t " + "  ".join(f"{k} {1e3 * v:7.3f}" for k, v in t.items()),
        flush=True,
    )
    return row


def openvino_node_times(threads: int, runs: int = 30) -> dict[str, float]:
    """ms per node of the whole binary ``resnet18`` in OpenVINO (f32, ``PERF_COUNT``), by the
    friendly names bnnkit gives them (``layer1.0.conv1/binary_conv``, ``.../sign``)."""
    import openvino as ov

    model = trained_like("resnet18", "reactnet")
    graph = lower(convert(model, check=False), (1, 3, 224, 224))
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": threads,
        "PERF_COUNT": True,
    }
    request = ov.Core().compile_model(to_openvino(graph), "CPU", config).create_infer_request()
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    for _ in range(10):
        request.infer([x])
    times: dict[str, float] = {}
    for _ in range(runs):
        request.infer([x])
        for p in request.profiling_info:
            if p.status == p.Status.EXECUTED:
                times[p.node_name] = (
                    times.get(p.node_name, 0.0) + p.real_time.total_seconds() * 1e3 / runs
                )
    return times


def stage_rows(layers: list[dict]) -> list[dict]:
    """Per stage and thread count: the sums of its binary convs' times, and the best binary
    path's speed-up over torch fp32 (bnnkit's eval) and over the bare fp32 conv."""
    rows = []
    keys = [k for k in layers[0] if k.endswith("_ms")] if layers else []
    for threads in sorted({r["threads"] for r in layers}):
        nodes = openvino_node_times(threads)
        whole = sum(nodes.values())
        print(f"OpenVINO resnet18 {threads}t in-graph: {whole:.2f} ms, of which the float stem "
              f"{nodes.get('bn1/mul', 0.0):.2f} ms", flush=True)  # fmt: skip
        for stage in sorted({r["layer"].split(".")[0] for r in layers}):
            group = [
                r for r in layers if r["threads"] == threads and r["layer"].startswith(stage + ".")
            ]
            row = {
                "stage": stage,
                "threads": threads,
                **{k: sum(r[k] for r in group) for k in keys},
            }
            best = min(row["bnnkit_numba_ms"], row["openvino_binary_ms"])
            row["binary_vs_torch_fp32"] = row["torch_fp32_ms"] / best
            row["binary_vs_fp32_conv"] = row["torch_fp32_conv_ms"] / best
            # the same convs inside OpenVINO's whole-model graph: no Python call, no float
            # input / output crossing the API per layer (BinaryConvolution + its FakeQuantize)
            in_graph = sum(v for k, v in nodes.items() if k.startswith(stage + ".")
                           and k.endswith(("/binary_conv", "/sign")))  # fmt: skip
            row["openvino_in_graph_ms"] = in_graph
            row["in_graph_vs_torch_fp32"] = row["torch_fp32_ms"] / in_graph
            row["in_graph_vs_fp32_conv"] = row["torch_fp32_conv_ms"] / in_graph
            print(f"{stage} {threads}t: best binary {best:.3f} ms: {row['binary_vs_torch_fp32']:.2f}x "
                  f"torch fp32 (eval), {row['binary_vs_fp32_conv']:.2f}x the bare fp32 conv | "
                  f"OpenVINO in-graph {in_graph:.3f} ms: {row['in_graph_vs_torch_fp32']:.2f}x, "
                  f"{row['in_graph_vs_fp32_conv']:.2f}x", flush=True)  # fmt: skip
            rows.append(row)
    return rows


def model_rows(name: str, threads: int, rounds: int) -> dict:
    torch.set_num_threads(threads)
    model = trained_like(name, "reactnet")
    x = torch.randn(1, 3, 224, 224)
    xn = x.numpy()
    packed = convert(model, kernel="numba", check=False)
    graph = lower(packed, tuple(x.shape))
    float_model = float_network(name)
    float_graph = lower(float_model, tuple(x.shape))
    float_bf16 = float_network(name).to(torch.bfloat16).to(memory_format=torch.channels_last)
    xb16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    ov_bin = OpenVINOModel(to_openvino(graph), num_threads=threads)
    ov_f32 = OpenVINOModel(to_openvino(float_graph), num_threads=threads)
    ov_def = OpenVINOModel(to_openvino(float_graph), num_threads=threads, precision=None)
    ov_bin_def = OpenVINOModel(to_openvino(graph), num_threads=threads, precision=None)
    fns = {
        "torch_fp32": lambda: model(x),  # the binary model simulated in float (bnnkit's eval)
        "torch_float_fp32": lambda: float_model(x),  # the float network
        "torch_float_bf16": lambda: float_bf16(xb16),
        "bnnkit_numba": lambda: packed(x),
        "openvino_binary": lambda: ov_bin.predict(xn),
        # binary convs exact, the float ops around them (stem, shortcuts) at the default precision
        "openvino_binary_default": lambda: ov_bin_def.predict(xn),
        "openvino_float_f32": lambda: ov_f32.predict(xn),
        "openvino_float_default": lambda: ov_def.predict(xn),
    }
    if lce_ok():
        lce = LCEModel(to_tflite(graph), num_threads=threads)
        fns["lce_x86"] = lambda: lce.predict(xn)
    with torch.inference_mode():
        t = alternate(fns, rounds, reps=3, warmups=2)
    row = {"model": name, "threads": threads, **{f"{k}_ms": 1e3 * v for k, v in t.items()}}
    best_float = min(t["torch_float_fp32"], t["torch_float_bf16"], t["openvino_float_f32"],
                     t["openvino_float_default"])  # fmt: skip
    best_binary = min(t["bnnkit_numba"], t["openvino_binary"], t["openvino_binary_default"])
    row |= {
        "openvino_default_precision": ov_def.precision,
        "binary_vs_torch_fp32": t["torch_fp32"] / best_binary,
        "binary_vs_best_float": best_float / best_binary,
    }
    print(f"{name} {threads}t " + "  ".join(f"{k} {1e3 * v:.2f}" for k, v in t.items())
          + f" | best binary vs torch fp32 {row['binary_vs_torch_fp32']:.2f}x, vs best float {row['binary_vs_best_float']:.2f}x",
          flush=True)  # fmt: skip
    return row


def size_rows() -> dict:
    model = trained_like("resnet18", "reactnet")
    float_bytes = float_state_bytes(model)  # without the sign history, as `bnnkit export` reports
    out = {"float_state_bytes": float_bytes}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, name in (("bnn", "m.bnn"), ("openvino", "m.xml"), ("lce", "m.tflite")):
            path = export_model(model, Path(tmp) / name, format=fmt)
            out[f"{fmt}_bytes"] = file_bytes(path)
            out[f"{fmt}_ratio"] = file_bytes(path) / float_bytes
    print(
        "sizes (resnet18): "
        + ", ".join(f"{k} {v:.4f}" for k, v in out.items() if k.endswith("ratio"))
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--skip-layers", action="store_true")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    layers = [] if args.skip_layers else [r for n in threads for r in layer_rows(n, args.rounds)]
    stages = stage_rows(layers)
    models = [
        model_rows(m, n, args.rounds) for m in ("resnet18", "reactnet_resnet18") for n in threads
    ]
    sizes = size_rows()
    append_record("runtimes.jsonl", "runtimes", layers + stages + models, sizes=sizes, rounds=args.rounds,
                  numpy=np.__version__, lce=lce_ok())  # fmt: skip


if __name__ == "__main__":
    main()
