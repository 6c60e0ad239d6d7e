"""Packed 1-bit inference on CPU: each binary conv of ResNet-18, whole models, file sizes.

Usage::

    python benchmarks/packed.py                      # resnet18 + reactnet_resnet18, batch 1
    python benchmarks/packed.py --rounds 5 --threads 1
    python benchmarks/packed.py --kernel reference   # the pure-torch reference kernels

1. Every binary convolution of ``resnet18`` (one-stage, 224 px, batch 1), on the input it
   really receives: the packed layer (binarize + pack the input, XNOR-popcount, folded scale
   and BN) against the same convolution in float torch (``F.conv2d`` with the ±alpha weight),
   same threads.
2. Whole ``resnet18`` and ``reactnet_resnet18``, batch 1: the packed model against the
   float-simulated bnnkit model in eval mode (``torch.inference_mode``).
3. Sizes: the packed file of ``resnet18`` against its float ``state_dict``.

Configurations alternate (``--rounds`` rounds, median), so machine noise hits both alike.
The record goes to ``benchmarks/results/packed.jsonl``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import alternate, append_record, trained_like

import bnnkit
from bnnkit.export import convert, packed_layers
from bnnkit.export.files import save_packed, size_report
from bnnkit.nn import BinaryConv2d


def layer_rows(kernel: str, rounds: int) -> list[dict]:
    model = trained_like("resnet18", "reactnet")
    packed = convert(model, kernel=kernel, fold_bn=True)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: inputs.__setitem__(n, i[0]))
             for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]  # fmt: skip
    with torch.inference_mode():
        model(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    rows = []
    for name, layer in packed_layers(packed):
        ref = model.get_submodule(name)
        x = inputs[name]
        with torch.inference_mode():
            xb, wb = ref.binarized_input(x), ref.binarized_weight()

            def float_conv(xb=xb, wb=wb, ref=ref):
                return torch.nn.functional.conv2d(xb, wb, None, ref.stride, ref.padding)

            def packed_layer(x=x, layer=layer):
                return layer(x)

            t = alternate({"float": float_conv, "packed": packed_layer}, rounds, reps=5)
        rows.append({"layer": name, "shape": f"{layer.in_channels}->{layer.out_channels} "
                     f"{x.shape[-1]}px s{layer.stride[0]}", "float_ms": 1e3 * t["float"],
                     "packed_ms": 1e3 * t["packed"], "speedup": t["float"] / t["packed"]})  # fmt: skip
    return rows


def model_rows(kernel: str, rounds: int) -> list[dict]:
    rows = []
    x = torch.randn(1, 3, 224, 224)
    for name in ("resnet18", "reactnet_resnet18"):
        model = trained_like(name, "reactnet")
        packed = convert(model, kernel=kernel)
        with torch.inference_mode():
            t = alternate({"float": lambda m=model: m(x), "packed": lambda p=packed: p(x)},
                          rounds, reps=2)  # fmt: skip
        rows.append({"model": name, "float_ms": 1e3 * t["float"], "packed_ms": 1e3 * t["packed"],
                     "speedup": t["float"] / t["packed"]})  # fmt: skip
    return rows


def size_rows() -> dict:
    model = trained_like("resnet18", "reactnet")
    with tempfile.TemporaryDirectory() as tmp:
        report = size_report(model, save_packed(model, Path(tmp) / "r18.bnn"))
    ratios = sorted({round(layer["ratio"], 6) for layer in report["layers"]})
    return {"float_state_bytes": report["float_state_bytes"],
            "packed_file_bytes": report["packed_file_bytes"], "ratio": report["ratio"],
            "binary_layer_weight_ratios": ratios}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kernel", default="auto")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-layers", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kernel = bnnkit.export.get_kernel(args.kernel).name
    print(f"kernel {kernel}, {torch.get_num_threads()} threads, batch 1, median of {args.rounds}")
    layers = [] if args.skip_layers else layer_rows(kernel, args.rounds)
    if layers:
        print(
            f"\n{'resnet18 binary conv':<18} {'shape':<20} {'float ms':>9} {'packed ms':>10} {'x':>6}"
        )
        for r in layers:
            print(f"{r['layer']:<18} {r['shape']:<20} {r['float_ms']:>9.3f} {r['packed_ms']:>10.3f} "
                  f"{r['speedup']:>6.2f}")  # fmt: skip
        print(f"min speedup {min(r['speedup'] for r in layers):.2f} (target >= 5)")
    models = model_rows(kernel, args.rounds)
    print(f"\n{'model (batch 1)':<20} {'float-sim ms':>12} {'packed ms':>10} {'x':>6}")
    for r in models:
        print(
            f"{r['model']:<20} {r['float_ms']:>12.2f} {r['packed_ms']:>10.2f} {r['speedup']:>6.2f}"
        )
    sizes = size_rows()
    print(f"\nresnet18 packed file {sizes['packed_file_bytes'] / 2**20:.2f} MiB vs float state_dict "
          f"{sizes['float_state_bytes'] / 2**20:.2f} MiB: ratio {sizes['ratio']:.4f} (target <= 0.1); "
          f"binary layer weights: {sizes['binary_layer_weight_ratios']} of float")  # fmt: skip
    append_record("packed.jsonl", "packed", layers + models + [sizes], kernel=kernel,
                         rounds=args.rounds)  # fmt: skip


if __name__ == "__main__":
    main()
