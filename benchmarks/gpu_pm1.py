"""The ±1 x ±1 forward of a binary conv on a GPU's low-precision units: exactness and speed of
bf16 conv vs fp8 (``torch._scaled_mm`` on an im2col; e4m3 holds ±1 exactly) vs int8
(``torch._int_mm``), against the exact integer result.

Usage (on a machine with CUDA; issue 16 part 3)::

    python benchmarks/gpu_pm1.py                 # ResNet-18 layer shapes, 3x3 and 1x1
    python benchmarks/gpu_pm1.py --device cpu    # the int8 and bf16 paths only, to check the script

Every shape is a conv of ±1 activations (N, C, H, W) with ±1 weights (O, C, k, k), stride 1,
zero padding k // 2, so K = C·k² products per output: 3x3 with C up to 512 (K up to 4608)
and 1x1 with C up to 2048. The exact result is the integer sum (the im2col matrix product in
float64, exact for these K, the reference). Each path is checked against it:

* ``bf16``: ``F.conv2d`` on bf16 operands, fp32 accumulation, output rounded to bf16; exact
  means equal to the exact sum rounded to bf16 (a sum of K ±1 terms has K's parity, so it is
  representable up to 512 for even K: beyond that bf16's 8 significant bits round it);
* ``fp8``: ``torch._scaled_mm`` of the e4m3 im2col (unit scales) with fp32 output: exact
  means bit-equal to the integer sum (it tests whether the tensor cores' fp8 accumulation keeps
  every bit of sums up to K);
* ``int8``: ``torch._int_mm`` with int32 output: exact means equal.

Speed: the median of ``--reps`` timed calls (CUDA-synchronised) per path, of the matrix
product or conv alone (the im2col of the fp8/int8 paths timed separately), alternating the
paths. Rows go to ``benchmarks/results/gpu_pm1.jsonl``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from _common import append_record
from torch.nn import functional as F

# (C, O, k, H): ResNet-18 3x3 stages at 56/28/14/7 px, the widest 3x3 (K = 4608) and 1x1 up to
# C = 2048 (ResNet-50-like bottleneck widths)
SHAPES = [
    (64, 64, 3, 56), (128, 128, 3, 28), (256, 256, 3, 14), (512, 512, 3, 7),
    (256, 256, 1, 14), (1024, 256, 1, 14), (2048, 512, 1, 7),
]  # fmt: skip


def pm1(shape: tuple[int, ...], device: str, bias: float = 0.0) -> torch.Tensor:
    """A ±1 float32 tensor; ``bias`` > 0 makes +1 more frequent (larger sums, to expose any
    rounding of the accumulation)."""
    return torch.where(torch.randn(shape, device=device) + bias < 0, -1.0, 1.0)


def im2col(a: torch.Tensor, k: int) -> torch.Tensor:
    """(N·H·W, C·k²) rows of the zero-padded receptive fields (stride 1, padding k // 2)."""
    cols = F.unfold(a, k, padding=k // 2)  # (N, C·k², L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def timed(fn: Callable[[], torch.Tensor], device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def paths(
    a: torch.Tensor, w: torch.Tensor, k: int, device: str
) -> dict[str, Callable[[], torch.Tensor]]:
    """The candidate forwards, each returning (N·H·W, O) in its own output dtype."""
    o = w.shape[0]
    n, _, h, wd = a.shape
    a16, w16 = a.bfloat16(), w.bfloat16()
    cols = im2col(a, k)
    wmat = w.reshape(o, -1)
    out: dict[str, Callable[[], torch.Tensor]] = {
        "bf16": lambda: (
            F.conv2d(a16, w16, padding=k // 2).permute(0, 2, 3, 1).reshape(n * h * wd, o)
        ),
    }
    # _int_mm wants M > 16 and K, N multiples of 8
    c8, w8 = cols.to(torch.int8), wmat.to(torch.int8).t().contiguous().t()
    out["int8"] = lambda: torch._int_mm(c8, w8.t())
    if device.startswith("cuda") and hasattr(torch, "float8_e4m3fn"):
        ce4 = cols.to(torch.float8_e4m3fn)
        we4 = wmat.to(torch.float8_e4m3fn)  # (O, K) row-major = column-major (K, O)
        one = torch.ones((), device=device)
        out["fp8"] = lambda: torch._scaled_mm(ce4, we4.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)  # fmt: skip
    return out


def check(name: str, got: torch.Tensor, exact: torch.Tensor) -> bool:
    if name == "bf16":
        return torch.equal(got, exact.to(torch.float32).to(torch.bfloat16))
    return torch.equal(got.to(torch.int64), exact)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--device", default="cuda")
    p.add_argument("--bias", type=float, default=1.0, help="skew towards +1: sums near K")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --device cpu to check the script")
    torch.manual_seed(0)
    rows = []
    for c, o, k, h in SHAPES:
        a = pm1((args.batch, c, h, h), args.device, args.bias)
        w = pm1((o, c, k, k), args.device, args.bias)
        cols = im2col(a, k)
        exact = (cols.double() @ w.reshape(o, -1).double().t()).to(torch.int64)  # exact in fp64
        fns = paths(a, w, k, args.device)
        row = {"C": c, "O": o, "k": k, "H": h, "K": c * k * k, "max_sum": int(exact.abs().max())}
        for name, fn in fns.items():
            try:
                got = fn()
            except RuntimeError as err:  # an unsupported shape or dtype on this device
                row[f"{name}_error"] = str(err).splitlines()[0][:120]
                continue
            row[f"{name}_exact"] = check(name, got, exact)
        times = {name: [] for name in fns if f"{name}_error" not in row}
        for _ in range(args.reps):
            for name in times:
                times[name].append(timed(fns[name], args.device))
        for name, ts in times.items():
            row[f"{name}_ms"] = round(1000 * statistics.median(ts), 4)
        base = row.get("bf16_ms")
        for name in times:
            if base and name != "bf16":
                row[f"{name}_vs_bf16"] = round(row[f"{name}_ms"] / base, 3)
        rows.append(row)
        print(row, flush=True)
    append_record("gpu_pm1.jsonl", "gpu_pm1", rows, device=args.device, batch=args.batch)


if __name__ == "__main__":
    main()
