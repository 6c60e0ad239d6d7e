"""Training throughput on an NVIDIA GPU: images/s of float and every method in bf16 autocast,
channels_last and ``torch.compile``, on ``resnet18_cifar`` (32 px) and ``resnet18`` (224 px).

Usage (on a machine with CUDA)::

    python benchmarks/gpu.py                               # both models, every method
    python benchmarks/gpu.py --models resnet18 --methods ste,recu --no-compile

Each configuration: the engine's step (``Trainer.train_step``) with ``training.amp=bf16`` and
``channels_last``, compiled unless ``--no-compile``; warm-up steps (compilation), then the
median of ``--steps`` timed steps (CUDA-synchronised), alternating configurations over
``--rounds``; images/s = batch / median step time; ratio = method step / float step. Rows go
to ``benchmarks/results/gpu.jsonl``. ``--device cpu`` runs the same code path on the CPU
(only to check the script; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import append_record

from bnnkit.methods import TrainState, list_methods
from bnnkit.training import trainer_for

SIZES = {"resnet18_cifar": (32, 10, 256), "resnet18": (224, 1000, 256)}


def build(model: str, method: str, device: str, compile_: bool):
    size, classes, _ = SIZES[model]
    recipe = {
        "model": {"name": model},
        "method": {"name": method},
        "data": {
            "name": "synthetic",
            "synthetic_shape": [3, size, size],
            "synthetic_classes": classes,
        },
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "training": {"amp": "bf16", "channels_last": True, "device": device},
    }
    t = trainer_for(recipe, device)
    if torch.device(device).type == "cuda":
        t.model = t.model.to(memory_format=torch.channels_last)
    if compile_:
        t.forward_model = torch.compile(t.model)
    return t


def step(t, x, y) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    t.train_step(x, y, TrainState(t.progress.step, 0, 1, 0.5, 0.01, t.progress.step + 1))
    if x.is_cuda:
        torch.cuda.synchronize()
    t.progress.step += 1
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18_cifar,resnet18")
    p.add_argument("--methods", default=",".join(m for m in list_methods() if m != "float"))
    p.add_argument("--batch", type=int, default=None, help="default 256")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA device here: this benchmark needs an NVIDIA GPU (or --device cpu to check the script)"
        )
    methods = ["float", *[m for m in args.methods.split(",") if m and m != "float"]]
    rows = []
    for model in args.models.split(","):
        size, classes, batch = SIZES[model]
        batch = args.batch or batch
        x = torch.randn(batch, 3, size, size, device=args.device)
        if args.device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, classes, (batch,), device=args.device)
        trainers = {m: build(model, m, args.device, not args.no_compile) for m in methods}
        for m, t in trainers.items():
            for _ in range(args.warmup):
                step(t, x, y)
            print(f"{model} {m}: warmed up", flush=True)
        times = {m: [] for m in methods}
        for _ in range(args.rounds):
            for m, t in trainers.items():
                times[m] += [step(t, x, y) for _ in range(args.steps)]
        base = statistics.median(times["float"])
        for m in methods:
            med = statistics.median(times[m])
            rows.append({"model": model, "method": m, "batch": batch, "ms_per_step": round(1000 * med, 2),
                         "images_per_s": round(batch / med, 1), "ratio_vs_float": round(med / base, 3)})  # fmt: skip
            print(
                f"{model:15} {m:10} {1000 * med:8.1f} ms {batch / med:9.0f} img/s {med / base:6.3f}"
            )
        del trainers
    append_record(
        "gpu.jsonl", "gpu", rows, device=args.device, compile=not args.no_compile, amp="bf16"
    )


if __name__ == "__main__":
    main()
