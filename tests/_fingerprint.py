"""The behaviour fingerprint: per-step losses and final weights of short fixed-seed runs.

Recorded with ``python tests/_fingerprint.py --write`` at git e983b7e, before the upper half of
bnnkit was split into ``config/ training/ runs/`` (issue 12); ``tests/runs/test_fingerprint.py``
re-runs every recipe and asserts the same numbers. The runs go through the public
``bnnkit.train(recipe_dict, out=...)`` only, so the same script measured both sides.

Each run: resnet20 (or the quickstart MLP) on synthetic data, 2 epochs of 2 steps, trackers on,
one log event per step (so ``loss`` of a ``train`` event is that step's loss). The runs of
methods added later (``biper``, ``biper_sine``, ``bop``, ``adabin``, ``rbnn``: issue 15) were recorded when they were
added, by ``fingerprint()`` on the same machine, and added to the file without touching the
others.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

FILE = Path(__file__).parent / "fixtures" / "fingerprint.json"

_CONV = {
    "data": {"name": "synthetic", "synthetic_shape": [3, 16, 16], "synthetic_classes": 4,
             "synthetic_train": 64, "synthetic_val": 32, "batch_size": 32},
    "model": {"name": "resnet20"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "training": {"epochs": 2, "seed": 7},
    "logging": {"log_every": 1, "progress": "off", "tensorboard": False},
    "diagnostics": {"enabled": True, "hist_bins": 8},
}  # fmt: skip

_METHODS: dict[str, Any] = {
    "float": {"name": "float"},
    "ste": {"name": "ste"},
    "xnor": {"name": "xnor"},
    "bireal": {"name": "bireal"},
    "irnet": {"name": "irnet"},
    "reactnet": {"name": "reactnet"},
    "recu": {"name": "recu"},
    "rebnn": {"name": "rebnn"},
    "rebnn_fixed": {"name": "rebnn", "gamma_mode": "fixed", "gamma": 1e-2},
    "rebnn_code": {"name": "rebnn", "variant": "official_code"},
    "ovsw": {"name": "ovsw", "delta": 0.04, "lam": 9e-4},
    "ovsw_on_recu": {"name": "ovsw", "base": "recu", "delta": 0.04},
    "rebnn_on_bireal": {"name": "rebnn", "base": "bireal", "gamma_mode": "fixed", "gamma": 1e-2},
    # added later (issue 15), recorded when they were added: their behaviour from then on
    "biper": {"name": "biper", "reg": 0.037},
    "biper_sine": {"name": "biper", "weights": "sine", "reg": 0.037},
    "rbnn": {"name": "rbnn"},
}


def recipes() -> dict[str, dict[str, Any]]:
    """Name -> recipe dict of every fingerprinted run."""
    out = {name: {**_CONV, "method": method} for name, method in _METHODS.items()}
    out["bop"] = {**_CONV, "method": {"name": "bop"},
                  "optimizer": {"name": "adam", "lr": 0.01, "binary": {"gamma": 1e-3, "threshold": 1e-6,
                                "gamma_schedule": {"name": "linear", "final": 1e-5}}}}  # fmt: skip
    out["adabin"] = {**_CONV, "model": {"name": "resnet20", "variant": "adabin"},
                     "method": {"name": "adabin"}}  # fmt: skip
    out["two_stage_reactnet_ovsw"] = {
        **_CONV,
        "stages": [
            {"name": "step1", "method": {"name": "reactnet", "weights": "float"},
             "training": {"epochs": 1}},
            {"name": "step2", "method": {"name": "ovsw", "input_bias": True},
             "training": {"epochs": 2}, "optimizer": {"name": "adam", "lr": 2e-3}},
        ],
    }  # fmt: skip
    out["quickstart_mlp"] = {
        "data": {"name": "digits", "batch_size": 256},
        "model": {"name": "mlp", "hidden": 64, "depth": 2},
        "method": {"name": "reactnet"},
        "optimizer": {"name": "adam", "lr": 0.005},
        "schedule": {"name": "cosine"},
        "training": {"epochs": 2, "seed": 0},
        "logging": {"log_every": 1, "progress": "off", "tensorboard": False},
    }
    return out


# buffers that the split replaced by the shared sign history (previous signs / weights)
_GONE = ("prev_sign", "weight_prev", "primed")


def _key(name: str) -> str:
    """A state key in the layout before the split: ``method_state.<part>.x`` -> ``method_state.x``."""
    return re.sub(r"\.method_state\.[a-z0-9_+]+\.", ".method_state.", name)


def _parameters(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Float tensors of the model's state (parameters, BN statistics, method state), keyed in
    the layout before the split; the replaced sign records and the new sign history left out."""
    model = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    out = {}
    for name, value in model.items():
        if ".sign_history." in name or name.rsplit(".", 1)[-1] in _GONE:
            continue
        if value.is_floating_point() and value.ndim > 0:
            out[_key(name)] = value
    return dict(sorted(out.items()))


def fingerprint(recipe: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run ``recipe`` into ``out``; its per-step losses, final parameter sums and sha256."""
    import bnnkit

    bnnkit.train(recipe, out=out)
    losses = [
        r["loss"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r["event"] == "train"
    ]
    params = _parameters(out / "checkpoints" / "last.pt")
    digest = hashlib.sha256()
    for name, value in params.items():
        digest.update(name.encode())
        digest.update(value.contiguous().numpy().tobytes())
    return {
        "losses": losses,
        "sums": {k: float(v.double().sum()) for k, v in params.items()},
        "abs_sums": {k: float(v.double().abs().sum()) for k, v in params.items()},
        "sha256": digest.hexdigest(),
    }


def main(argv: list[str]) -> int:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in recipes().items():
            results[name] = fingerprint(recipe, Path(tmp) / name)
            print(name, results[name]["losses"][:3], results[name]["sha256"][:12], file=sys.stderr)
    if "--write" in argv:
        FILE.parent.mkdir(parents=True, exist_ok=True)
        FILE.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {FILE}", file=sys.stderr)
    else:
        old = json.loads(FILE.read_text())
        same = {n: old[n]["sha256"] == r["sha256"] and old[n]["losses"] == r["losses"]
                for n, r in results.items()}  # fmt: skip
        print(json.dumps(same, indent=1))
        return 0 if all(same.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
