"""A model trained on the real CIFAR-10 excerpt: the packed model's top-1 equals the checkpoint's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bnnkit.runs import evaluate_checkpoint, train
from bnnkit.runs.evaluate import evaluate_packed, export_checkpoint

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("BNNKIT_CIFAR10_EXCERPT", REPO.parent / "shared" / "data" / "cifar10-excerpt"))  # fmt: skip


@pytest.mark.skipif(
    not (ROOT / "cifar-10-batches-py" / "data_batch_1").is_file(),
    reason=f"real CIFAR-10 excerpt not found at {ROOT} (set BNNKIT_CIFAR10_EXCERPT)",
)
def test_trained_resnet20_packed_top1_equals_the_checkpoint(tmp_path):
    result = train(
        "cifar10/resnet20_reactnet",
        [f"data.root={ROOT}", "training.epochs=1", "schedule.warmup_epochs=0",
         "data.batch_size=128", "logging.progress=off", "logging.tensorboard=false"],
        out=tmp_path / "run",
    )  # fmt: skip
    want, _ = evaluate_checkpoint(result.run_dir, [f"data.root={ROOT}"])
    file, report = export_checkpoint(result.run_dir, tmp_path / "r20.bnn")
    got = evaluate_packed(file, [f"data.root={ROOT}"])
    assert got["samples"] == want["samples"] > 1000
    assert got["top1"] == want["top1"] and got["top5"] == want["top5"]
    assert want["top1"] > 15.0  # learned something (chance is 10%)
    assert report["ratio"] < 0.1
