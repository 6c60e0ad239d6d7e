"""The ``dynamics/`` folder of a run directory: what the trackers write and the report reads.

::

    dynamics/<stage>-init.safetensors    latent weights of the tracked layers at the stage start
                                         (float32, one tensor per layer; the OvSW figure)
    dynamics/<stage>-flips.safetensors   per weight: <layer>/flips (int16 flip count),
                                         <layer>/last_flip (int64 step, -1 never),
                                         <layer>/sign (int8), as of the last finished epoch;
                                         metadata: stage, epoch, step, every, resolution
    dynamics/<stage>-epochNNN-flips.safetensors   the same per epoch (diagnostics.keep_dumps)
    dynamics/histograms.jsonl            one line per histogram: stage, epoch (epochs done,
                                         0 = start), step, layer, kind (layer | channel0),
                                         range [lo, hi], counts

Files are written atomically (temp file + rename); a histogram line cut by a crash is skipped
when read. Reading never executes code (safetensors and JSON only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from bnnkit._io import atomic_write_bytes
from bnnkit.diagnostics.dynamics import Dynamics

HISTOGRAMS = "histograms.jsonl"


def _atomic_bytes(data: bytes, path: Path) -> None:
    atomic_write_bytes(data, path)


def _safe_stage(stage: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stage)


def init_path(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / "dynamics" / f"{_safe_stage(stage)}-init.safetensors"


def flips_path(run_dir: Path, stage: str, epoch: int | None = None) -> Path:
    suffix = "" if epoch is None else f"-epoch{epoch:03d}"
    return Path(run_dir) / "dynamics" / f"{_safe_stage(stage)}{suffix}-flips.safetensors"


def write_init(run_dir: Path, stage: str, dyn: Dynamics) -> Path:
    """The tracked layers' latent weights now (call at the start of a stage)."""
    tensors = {
        n: m.weight.detach().float().cpu().contiguous()
        for n, m in zip(dyn.layer_names, dyn._modules_tracked, strict=True)
    }
    path = init_path(run_dir, stage)
    _atomic_bytes(save(tensors, {"stage": stage}), path)
    return path


def write_flips(
    run_dir: Path, stage: str, epoch: int, step: int, dyn: Dynamics, *, keep: bool, every: int
) -> Path:
    """The per-weight flip state after ``epoch`` epochs (0-based index of the finished epoch)."""
    meta = {
        "stage": stage,
        "epoch": str(epoch + 1),
        "step": str(step),
        "every": str(every),
        "resolution": str(2**dyn.shift),
        "layers": json.dumps(dyn.layer_names),
    }
    data = save(dyn.dump(), meta)
    path = flips_path(run_dir, stage)
    _atomic_bytes(data, path)
    if keep:
        _atomic_bytes(data, flips_path(run_dir, stage, epoch + 1))
    return path


def append_histograms(
    run_dir: Path, stage: str, epoch: int, step: int, dyn: Dynamics, bins: int
) -> list[dict[str, Any]]:
    """Append the current histograms (``epoch`` = epochs done) to ``histograms.jsonl``."""
    records = [{"stage": stage, "epoch": epoch, "step": step, **r} for r in dyn.histograms(bins)]
    path = Path(run_dir) / "dynamics" / HISTOGRAMS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
    return records


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file; a malformed (cut) line is skipped."""
    out = []
    if not Path(path).is_file():
        return out
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_histograms(run_dir: Path) -> list[dict[str, Any]]:
    """Histogram records, the last one kept where a resumed run wrote one twice."""
    latest: dict[tuple, dict[str, Any]] = {}
    for r in read_jsonl(Path(run_dir) / "dynamics" / HISTOGRAMS):
        latest[(r.get("stage"), r.get("epoch"), r.get("layer"), r.get("kind"))] = r
    return list(latest.values())


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a dynamics file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return load_file(str(path)), meta
