"""Data-pipeline throughput: augmented images per second, printed and appended to a JSON log.

Usage::

    python benchmarks/data.py                 # CPU, batch 256, median of 7 runs
    python benchmarks/data.py --device cuda --runs 11 --only cifar_memory

Each benchmark is one function ``bench_<name>(args) -> list[dict]`` registered in
:data:`BENCHMARKS`; every dict is one table row. The rows of a run are appended as one JSON
record to ``benchmarks/results/data.jsonl``. CIFAR uses the real CIFAR-10 excerpt when present
(``$BNNKIT_CIFAR10_EXCERPT`` or ``<repo>/../shared/data/cifar10-excerpt``), else random uint8
images of the same shape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _common import REPO, append_record

from bnnkit.data import DataConfig, ImageTransform, TensorLoader, load_cifar, normalization_stats


def excerpt_root() -> Path:
    env = os.environ.get("BNNKIT_CIFAR10_EXCERPT")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cifar10-excerpt"


def cifar_arrays() -> tuple[torch.Tensor, torch.Tensor, str]:
    """The excerpt's training split, or random images of its shape; plus a source label."""
    root = excerpt_root()
    if (root / "cifar-10-batches-py" / "data_batch_1").is_file():
        x, y = load_cifar("cifar10", root, split="train")
        return x, y, "cifar10-excerpt"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5085, 3, 32, 32), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, 10, (5085,), generator=g), "random-uint8"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], int], runs: int, device: torch.device) -> list[float]:
    """Images/s of ``fn`` (which returns the images it produced), one value per run."""
    fn()  # warm-up
    rates = []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        images = fn()
        sync(device)
        rates.append(images / (time.perf_counter() - start))
    return rates


def row(name: str, source: str, args: argparse.Namespace, rates: list[float]) -> dict:
    return {
        "path": name,
        "source": source,
        "device": args.device,
        "batch": args.batch,
        "images_per_s": round(statistics.median(rates)),
        "min": round(min(rates)),
        "max": round(max(rates)),
        "runs": len(rates),
    }


def bench_cifar_memory(args: argparse.Namespace) -> list[dict]:
    """CIFAR in-memory path: one training epoch of ``TensorLoader`` (index, crop, flip,
    normalize) and the augmentation alone on one batch."""
    device = torch.device(args.device)
    x, y, source = cifar_arrays()
    cfg = DataConfig(name="cifar10", batch_size=args.batch)
    mean, std = normalization_stats(cfg.normalize, "cifar10")
    tf = ImageTransform(mean, std, padding=cfg.crop_padding, flip=cfg.flip, device=device)
    loader = TensorLoader(x, y, batch_size=args.batch, train=True, transform=tf, device=device)
    epoch = [0]

    def one_epoch() -> int:
        loader.set_epoch(epoch[0])
        epoch[0] += 1
        for _batch in loader:
            pass
        return loader.num_samples

    batch = x[: args.batch].to(device)
    gen = torch.Generator().manual_seed(0)

    def augment_only() -> int:
        tf(batch, tf.draw(args.batch, gen, device))
        return args.batch

    return [
        row("cifar in-memory loader (epoch)", source, args, timed(one_epoch, args.runs, device)),
        row(
            "cifar augment only (crop+flip+norm)",
            source,
            args,
            timed(augment_only, args.runs * 5, device),
        ),
    ]


BENCHMARKS: dict[str, Callable[[argparse.Namespace], list[dict]]] = {
    "cifar_memory": bench_cifar_memory,
}
"""Name -> benchmark function; add a loader's benchmark here (e.g. an ImageNet folder)."""


def print_table(rows: list[dict]) -> None:
    head = f"{'path':38} {'source':16} {'device':6} {'batch':>5} {'img/s (median)':>15} {'min':>8} {'max':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['path']:38} {r['source']:16} {r['device']:6} {r['batch']:>5} "
            f"{r['images_per_s']:>15,} {r['min']:>8,} {r['max']:>8,}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--no-record", action="store_true", help="do not append to the log")
    args = parser.parse_args(argv)
    rows = [r for name in args.only or BENCHMARKS for r in BENCHMARKS[name](args)]
    print_table(rows)
    if not args.no_record:
        append_record("data.jsonl", "data", rows)


if __name__ == "__main__":
    main()
