"""Evaluation (top-1 / top-5 / loss over a sharded loader) and the autocast of ``training.amp``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from bnnkit.binarize.kernels import fused_kernels
from bnnkit.diagnostics import names as N
from bnnkit.training.distributed import Dist


def accuracy_counts(logits: Tensor, targets: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """Number of top-1 and top-k hits in a batch (device tensors, no sync)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top == targets.unsqueeze(1)
    return hits[:, 0].sum(), hits.any(dim=1).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    dist: Dist | None = None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%), mean cross-entropy and sample count over the (sharded) loader."""
    dist = dist or Dist()
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=dist.device)  # top1, top5, loss, n
    for x, y in loader:
        with autocast():
            out = model(x)
        t1, t5 = accuracy_counts(out, y)
        loss = nn.functional.cross_entropy(out.float(), y, reduction="sum")
        n = torch.tensor(float(len(y)), dtype=torch.float64, device=dist.device)
        totals += torch.stack([t1.double(), t5.double(), loss.double(), n])
    model.train(was_training)
    totals = dist.all_reduce_sum(totals)
    n = max(float(totals[3]), 1.0)
    return {
        N.TOP1: 100 * float(totals[0]) / n,
        N.TOP5: 100 * float(totals[1]) / n,
        N.LOSS: float(totals[2]) / n,
        "samples": int(n),
    }


def autocast_for(amp: str, device: torch.device, fused: bool = False) -> Callable[[], Any]:
    """The forward context of ``training.amp`` and ``training.fused_kernels`` on ``device``.

    ``fused``: the binarizers' generated kernels (:func:`bnnkit.binarize.kernels.fused_kernels`).
    Autocast: ``bf16`` on CUDA and on the CPU
    (no GradScaler: bf16 has fp32's exponent range), ``fp16`` on CUDA only (on another device
    it is ignored; the stage says so), ``none`` no autocast.

    A binary conv's ±1 x ±1 products are exact in bf16, and with the fp32 accumulation of the
    CPU's (oneDNN) and CUDA's bf16 kernels its integer sums are exact up to 2^24; the output is
    rounded to bf16 (8 significant bits), like a float conv's, and a weight scale α multiplied
    into the weight is rounded to bf16 first.
    """
    if amp == "none" or (amp == "fp16" and device.type != "cuda"):
        return fused_kernels if fused else contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    kind = device.type if device.type in ("cuda", "cpu") else "cpu"
    if not fused:
        return lambda: torch.autocast(device_type=kind, dtype=dtype)
    return lambda: _both(torch.autocast(device_type=kind, dtype=dtype), fused_kernels())


@contextlib.contextmanager
def _both(first: Any, second: Any) -> Any:
    with first, second:
        yield
