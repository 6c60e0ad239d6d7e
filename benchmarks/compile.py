"""``torch.compile`` on the training step: graph breaks, compile time and step time.

Usage::

    python benchmarks/compile.py                                  # resnet20, batch 128, CPU
    python benchmarks/compile.py --methods ste,recu --rounds 3

For ``float`` and each method: ``torch._dynamo.explain`` of the model in training mode (graph
and graph-break counts, break reasons), the time of the first compiled step (compilation), and
the median eager and compiled step times, measured alternately as in ``train_step.py`` (the
engine's step with ``forward_model = torch.compile(model)``, as ``training.compile=true`` runs).
Rows are appended to ``benchmarks/results/compile.jsonl``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import append_record
from train_step import make_trainer, timed_step

DEFAULT = ("ste", "xnor", "bireal", "irnet", "reactnet", "recu", "rebnn", "ovsw")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--methods", default=",".join(DEFAULT))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    methods = ["float", *[m for m in args.methods.split(",") if m and m != "float"]]
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    eager, compiled, info = {}, {}, {}
    for m in methods:
        eager[m] = make_trainer(m, args.model, False, device)
        t = make_trainer(m, args.model, False, device)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(t.model)(x)
        t.forward_model = torch.compile(t.model)
        t0 = time.perf_counter()
        timed_step(t, x, y, device)
        info[m] = {
            "graphs": explained.graph_count,
            "graph_breaks": explained.graph_break_count,
            "break_reasons": [str(b.reason)[:200] for b in explained.break_reasons],
            "compile_s": round(time.perf_counter() - t0, 1),
        }
        compiled[m] = t
        print(
            f"{m}: compiled in {info[m]['compile_s']}s, {explained.graph_break_count} graph breaks",
            flush=True,
        )
    for t in [*eager.values(), *compiled.values()]:
        timed_step(t, x, y, device)
    times = {(m, k): [] for m in methods for k in ("eager", "compiled")}
    for r in range(args.rounds):
        for m in methods:
            times[(m, "eager")] += [timed_step(eager[m], x, y, device) for _ in range(args.steps)]
            times[(m, "compiled")] += [
                timed_step(compiled[m], x, y, device) for _ in range(args.steps)
            ]
        print(f"round {r + 1}/{args.rounds}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    print(f"\n{args.model}, batch {args.batch}, {device}, {torch.get_num_threads()} threads")
    print(
        f"{'method':10} {'breaks':>6} {'compile s':>9} {'eager ms':>9} {'compiled ms':>11} {'eager/float':>11} {'compiled/float':>14}"
    )
    for m in methods:
        e, c = med[(m, "eager")], med[(m, "compiled")]
        row = {"method": m, **info[m], "eager_ms": round(1000 * e, 1), "compiled_ms": round(1000 * c, 1),
               "eager_vs_float": round(e / med[("float", "eager")], 3),
               "compiled_vs_float_compiled": round(c / med[("float", "compiled")], 3)}  # fmt: skip
        rows.append(row)
        print(f"{m:10} {info[m]['graph_breaks']:6d} {info[m]['compile_s']:9.1f} {1000 * e:9.1f} {1000 * c:11.1f} "
              f"{row['eager_vs_float']:11.3f} {row['compiled_vs_float_compiled']:14.3f}")  # fmt: skip
    append_record(
        "compile.jsonl", "compile", rows, model=args.model, batch=args.batch, device=str(device)
    )


if __name__ == "__main__":
    main()
