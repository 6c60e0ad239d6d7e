"""ImageNet folder-loader throughput: training images per second, printed and logged.

Usage::

    python benchmarks/data_imagenet.py                      # workers 0 and 2, 5 timed epochs
    python benchmarks/data_imagenet.py --workers 0 4 8 --images 400 --device cuda
    python benchmarks/data_imagenet.py --threads 1   # 1 torch thread in the main process

Generates ~200 JPEGs of about 400x350 px (10 class folders, smooth colour fields plus noise,
quality 90) in a temporary folder, then times whole training epochs of the loader returned by
``build_imagenet``: Pillow decode, RandomResizedCrop(224, scale (0.08, 1)), PCA lighting 0.1 on
the uint8 image, flip, collate, and the normalization on ``--device``. The first epoch of each
worker count is a warm-up (it also starts the persistent workers). One JSON record per run is
appended to ``benchmarks/results/data.jsonl`` (the same record shape as ``benchmarks/data.py``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import append_record

from bnnkit.data.config import DataConfig
from bnnkit.data.imagenet import build_imagenet


def make_folder(root: Path, images: int, classes: int = 10, seed: int = 0) -> None:
    """``root/{train,val}/cNN/*.JPEG``: ``images`` training JPEGs of about 400x350 px."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", classes)):
        for i in range(count):
            folder = root / split / f"c{i % classes:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = int(rng.integers(330, 371)), int(rng.integers(380, 421))
            y, x = np.mgrid[0:h, 0:w] / max(h, w)
            base = rng.uniform(0, 255, 3) * (
                0.5 + 0.5 * np.sin(6 * x[..., None] + 4 * y[..., None])
            )
            noise = rng.normal(0, 12, (h, w, 3))
            arr = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"img{i:05d}.JPEG", quality=90)


def time_epochs(loader, epochs: int, device: torch.device) -> list[float]:
    """Images/s of each of ``epochs`` timed epochs, after one warm-up epoch."""
    rates = []
    for epoch in range(epochs + 1):
        loader.set_epoch(epoch)
        start = time.perf_counter()
        for _batch in loader:
            pass
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch > 0:
            rates.append(loader.num_samples / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--threads", type=int, help="torch threads of the main process")
    parser.add_argument("--no-record", action="store_true", help="do not append to the log")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bnnkit-imagenet-bench-") as tmp:
        make_folder(Path(tmp), args.images)
        for workers in args.workers:
            cfg = DataConfig(
                name="imagenet", root=tmp, batch_size=args.batch, workers=workers,
                image_size=224, rrc_scale=(0.08, 1.0), lighting=0.1, lighting_space="pil",
            )  # fmt: skip
            loader = build_imagenet(cfg, device=device).train
            rates = time_epochs(loader, args.epochs, device)
            loader.close()
            rows.append(
                {
                    "path": "imagenet folder loader (train, 224 px)",
                    "source": f"{args.images} generated JPEGs ~400x350",
                    "device": args.device,
                    "batch": args.batch,
                    "workers": workers,
                    "images_per_s": round(statistics.median(rates), 1),
                    "min": round(min(rates), 1),
                    "max": round(max(rates), 1),
                    "runs": len(rates),
                }
            )
    print(f"{'workers':>7} {'batch':>5} {'img/s (median)':>15} {'min':>8} {'max':>8}")
    for r in rows:
        print(
            f"{r['workers']:>7} {r['batch']:>5} {r['images_per_s']:>15,.1f} "
            f"{r['min']:>8,.1f} {r['max']:>8,.1f}"
        )
    if not args.no_record:
        import PIL

        append_record("data.jsonl", "data_imagenet", rows, pillow=PIL.__version__)


if __name__ == "__main__":
    main()
