"""Training-step time of every method against float, with and without the dynamics trackers.

Usage::

    python benchmarks/train_step.py                          # resnet20, batch 128, CPU
    python benchmarks/train_step.py --methods ste,recu --rounds 5
    python benchmarks/train_step.py --fused off,on --amp none,bf16   # eager vs fused kernels
    python benchmarks/train_step.py --device cuda --model resnet18_cifar --batch 256

Precisions (``--amp``: fp32 = ``none``, ``bf16``: ``training.amp``) are measured side by side,
each against float at the same precision; ``--fused`` runs the binarizers' eager and/or
generated kernels (``training.fused_kernels``), and trackers on are measured with the last
``--fused`` setting. Each configuration (method x trackers x precision x kernels) gets its own
model and optimizer and runs the
engine's own step (:meth:`bnnkit.training.Trainer.train_step`: method hooks, trackers,
SGD) on one fixed random batch. Configurations are measured **alternately**: every round runs
``--steps`` timed steps of each configuration in turn, so slow phases of a noisy machine hit
all of them alike; the figure is the median step time over all rounds. Ratios are against
``float`` (the same network with float convolutions, the ``float`` method) and, for trackers,
against the same method with trackers off. Rows are appended to
``benchmarks/results/train_step.jsonl``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _common import append_record

from bnnkit.methods import list_methods
from bnnkit.training import Trainer, trainer_for

DEFAULT_METHODS = ("ste", "xnor", "bireal", "irnet", "reactnet", "recu", "rebnn", "ovsw")


def make_trainer(
    method: str,
    model_name: str,
    trackers: bool,
    device: torch.device,
    amp: str = "none",
    fused: bool = False,
) -> Trainer:
    recipe = {
        "training": {"amp": amp, "fused_kernels": fused},
        "model": {"name": model_name},
        "method": {"name": method},
        "data": {"name": "synthetic", "synthetic_shape": [3, 32, 32], "synthetic_classes": 10},
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    }
    return trainer_for(recipe, device, trackers=trackers)


def timed_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    from bnnkit.methods import TrainState

    state = TrainState(trainer.progress.step, 0, 1, 0.5, 0.01, trainer.progress.step + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.train_step(x, y, state)
    if device.type == "cuda":
        torch.cuda.synchronize()
    trainer.progress.step += 1
    return time.perf_counter() - t0


def training_memory(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Bytes a training step holds at its peak, the end of the forward pass: parameters,
    gradients, optimizer state, trackers, and every tensor saved for the backward (unique
    storages, counted with ``saved_tensors_hooks``). Deterministic, so ratios need no repeats;
    on CUDA, ``max_memory_allocated`` is also reported."""
    model, opt = trainer.model, trainer.optimizer
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    opt.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = trainer.forward_model(x)
        loss = trainer.loss_fn(out, y, x)
    loss.backward()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(
        p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None
    )
    state = sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    dyn = (
        sum(b.numel() * b.element_size() for b in trainer.dynamics.buffers())
        if trainer.dynamics
        else 0
    )
    saved = sum(storages.values())
    return {"saved_bytes": saved, "state_bytes": params + grads + state + buffers + dyn,
            "total_bytes": saved + params + grads + state + buffers + dyn}  # fmt: skip


Config = tuple[str, bool, str, bool]  # method, trackers, amp, fused kernels


def configurations(
    methods: list[str], trackers: bool, amps: list[str], fused: list[bool]
) -> list[Config]:
    """Float once per precision, then every method x fused (trackers off) x precision, and
    trackers on for the last ``fused`` setting given (the one a run would use)."""
    out: list[Config] = [("float", False, a, False) for a in amps]
    for m in methods:
        for f in fused:
            out += [(m, False, a, f) for a in amps]
        if trackers:
            out += [(m, True, a, fused[-1]) for a in amps]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--no-trackers", action="store_true", help="only trackers off")
    p.add_argument("--amp", default="none,bf16", help="precisions side by side: none (fp32), bf16")
    p.add_argument("--fused", default="on", help="fused kernels: on, off, or off,on (both)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels-last", action="store_true", help="NHWC model and batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    methods = [m for m in args.methods.split(",") if m and m != "float"]
    unknown = sorted(set(methods) - set(list_methods()))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; valid: {list_methods()}")
    amps = [a for a in args.amp.split(",") if a]
    if not amps or set(amps) - {"none", "bf16"}:
        raise SystemExit(f"--amp {args.amp!r}: give none, bf16 or none,bf16")
    fused_names = [f for f in args.fused.split(",") if f]
    if not fused_names or set(fused_names) - {"on", "off"}:
        raise SystemExit(f"--fused {args.fused!r}: give on, off or off,on")
    fused = [f == "on" for f in fused_names]
    configs = configurations(methods, not args.no_trackers, amps, fused)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    trainers = {c: make_trainer(c[0], args.model, c[1], device, c[2], c[3]) for c in configs}
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        for t in trainers.values():
            t.model.to(memory_format=torch.channels_last)
    times: dict[Config, list[float]] = {c: [] for c in configs}
    t_start = time.perf_counter()
    for t in trainers.values():  # the first fused step compiles its kernels
        for _ in range(args.warmup):
            timed_step(t, x, y, device)
    print(f"warm-up done ({time.perf_counter() - t_start:.0f}s)", flush=True)
    t_start = time.perf_counter()
    for r in range(args.rounds):
        for c, t in trainers.items():
            times[c] += [timed_step(t, x, y, device) for _ in range(args.steps)]
        print(f"round {r + 1}/{args.rounds} ({time.perf_counter() - t_start:.0f}s)", flush=True)
    median = {c: statistics.median(v) for c, v in times.items()}
    memory = {c: training_memory(t, x, y) for c, t in trainers.items()}
    rows: list[dict[str, Any]] = []
    for (m, tr, a, f), v in median.items():
        base = median[("float", False, a, False)]
        off = median[(m, False, a, f)]
        mem = memory[(m, tr, a, f)]
        base_mem = memory[("float", False, a, False)]["total_bytes"]
        rows.append({"method": m, "trackers": tr, "amp": a, "fused": f,
                     "ms_per_step": round(1000 * v, 2), "ratio_vs_float": round(v / base, 3),
                     "ratio_vs_trackers_off": round(v / off, 3), **mem,
                     "memory_vs_float": round(mem["total_bytes"] / base_mem, 3)})  # fmt: skip
    print(f"\n{args.model}, batch {args.batch}, {device}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps, median step time; ratios against float "
          "at the same precision")  # fmt: skip
    print_table(rows, amps)
    append_record(
        "train_step.jsonl", "train_step", rows, model=args.model, batch=args.batch,
        device=str(device), rounds=args.rounds, steps=args.steps,
    )  # fmt: skip


def print_table(rows: list[dict[str, Any]], amps: list[str]) -> None:
    """One line per method x trackers x fused, the precisions side by side."""
    label = {"none": "fp32", "bf16": "bf16"}
    head = f"{'method':10} {'trackers':8} {'fused':5}"
    for a in amps:
        head += f" {label[a] + ' ms':>9} {'vs float':>8} {'vs off':>7} {'mem':>5}"
    print(head)
    keyed = {(r["method"], r["trackers"], r["fused"], r["amp"]): r for r in rows}
    for m, tr, f in dict.fromkeys((r["method"], r["trackers"], r["fused"]) for r in rows):
        line = f"{m:10} {'on' if tr else 'off':8} {'on' if f else 'off':5}"
        for a in amps:
            r = keyed[(m, tr, f, a)]
            line += (f" {r['ms_per_step']:9.1f} {r['ratio_vs_float']:8.3f} "
                     f"{r['ratio_vs_trackers_off']:7.3f} {r['memory_vs_float']:5.2f}")  # fmt: skip
        print(line)


if __name__ == "__main__":
    main()
