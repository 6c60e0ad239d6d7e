"""The papers' training-dynamics figures, drawn from a parsed run (:class:`RunData`).

- ``weight_distribution.png``: latent weights of output channel 0 of the first binary layer at
  evenly spaced epochs (ReBNN Fig. 3.29);
- ``oscillation.png``: epoch-wise oscillation ratio of the first, middle and last binary
  layers (ReBNN Fig. 3.28a / 3.30a);
- ``silent_weights.png``: initial weights of the last binary layer with the never-flipped
  ones overlaid and their percentage (OvSW Fig. 1a/b);
- ``flip_accuracy.png``: flip rate and top-1 per epoch (OvSW Fig. 1c);
- ``dead_tau.png``: dead fraction per epoch, and ReCU's τ and clamped fraction if present;
- ``flip_heatmap.png``: layer x epoch heat map of the oscillation ratio.

They need matplotlib (``pip install "bnnkit[plot]"``); :func:`pyplot` is ``None`` without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bnnkit.diagnostics import names as N
from bnnkit.diagnostics.rundata import RunData


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (nothing in it is executed)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return load_file(str(path)), meta


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def epoch_axis(*axes: Any) -> None:
    """Label the x axis "epoch" with whole-number ticks (matplotlib would put 0.5 steps on a
    short run)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _evenly(items: list[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return items
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


def tracked_stage(run: RunData) -> str | None:
    """The last stage with trackers (the one the figures describe)."""
    for stage in reversed(run.stages):
        if run.layers(stage):
            return stage
    return None


def figure_weight_distribution(run: RunData, plt: Any, out: Path) -> Path | None:
    stage = tracked_stage(run)
    hists = sorted(
        (h for h in run.histograms if h["stage"] == stage and h["kind"] == "channel0"),
        key=lambda h: h["epoch"],
    )
    if not hists:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    cmap = plt.get_cmap("viridis")
    chosen = _evenly(hists, 6)
    for i, h in enumerate(chosen):
        lo, hi = h["range"]
        n = len(h["counts"])
        width = (hi - lo) / n
        centers = [lo + (j + 0.5) * width for j in range(n)]
        total = max(sum(h["counts"]), 1)
        ax.plot(centers, [c / total / width for c in h["counts"]], drawstyle="steps-mid",
                color=cmap(i / max(len(chosen) - 1, 1)), label=f"epoch {h['epoch']}")  # fmt: skip
    ax.set_xlabel(f"latent weight ({chosen[0]['layer']}, output channel 0)")
    ax.set_ylabel("density")
    ax.set_title("Latent weight distribution over training")
    ax.legend(fontsize=8)
    return save_figure(fig, plt, out / "weight_distribution.png")


def figure_oscillation(run: RunData, plt: Any, out: Path) -> Path | None:
    stage = tracked_stage(run)
    layers = run.layers(stage)
    if not layers:
        return None
    picks = list(dict.fromkeys([layers[0], layers[len(layers) // 2], layers[-1]]))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for pos, name in zip(("first", "middle", "last"), picks, strict=False):
        xs, ys = run.series(N.dyn_key(N.OSCILLATION, name), stage)
        ax.plot(xs, [100 * y for y in ys], marker=".", label=f"{name} ({pos})")
    epoch_axis(ax)
    ax.set_ylabel("oscillation ratio (%)")
    ax.set_title("Epoch-wise weight oscillation (mean per-step flip rate)")
    ax.legend(fontsize=8)
    return save_figure(fig, plt, out / "oscillation.png")


def silent_split(run: RunData) -> dict[str, Any] | None:
    """Initial weights of the last tracked layer split by never-flipped, from ``dynamics/``."""
    stage = tracked_stage(run)
    if stage is None:
        return None
    init_file, flips_file = run.init_files.get(stage), run.flip_files.get(stage)
    if init_file is None or flips_file is None:
        return None
    init, _ = read_safetensors(init_file)
    flips, meta = read_safetensors(flips_file)
    layer = run.layers(stage)[-1]
    if layer not in init or f"{layer}/flips" not in flips:
        return None
    w0 = init[layer].flatten()
    silent = flips[f"{layer}/flips"].flatten() == 0
    return {
        "layer": layer,
        "w0": w0,
        "silent": silent,
        "percent": 100.0 * float(silent.float().mean()),
        "epoch": meta.get("epoch"),
    }


def figure_silent(run: RunData, plt: Any, out: Path) -> Path | None:
    split = silent_split(run)
    if split is None:
        return None
    w0, silent = split["w0"].numpy(), split["silent"].numpy()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    r = float(abs(w0).max()) or 1.0
    bins = [-r + 2 * r * i / 60 for i in range(61)]
    ax.hist(w0, bins=bins, color="tab:blue", alpha=0.7, label="all weights at initialization")
    ax.hist(w0[silent], bins=bins, color="tab:orange", alpha=0.9,
            label=f"never flipped ({split['percent']:.2f}%)")  # fmt: skip
    ax.set_xlabel(f"initial latent weight ({split['layer']})")
    ax.set_ylabel("count")
    ax.set_title(f"Silent weights after {split['epoch']} epoch(s)")
    ax.legend(fontsize=8)
    return save_figure(fig, plt, out / "silent_weights.png")


def figure_flip_accuracy(run: RunData, plt: Any, out: Path) -> Path | None:
    xs, ys = run.series(N.dyn_key(N.OSCILLATION))
    ax_x, acc = run.series(N.TOP1)
    if not xs and not ax_x:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(xs, [100 * y for y in ys], "--", marker="o", markersize=4, color="tab:red",
            label="oscillation (mean per-step flip rate)")  # fmt: skip
    epoch_axis(ax)
    ax.set_ylabel("oscillation (%)", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(ax_x, acc, "-", marker="o", markersize=4, color="tab:blue", label="top-1")
    ax2.set_ylabel("val top-1 (%)", color="tab:blue")
    epoch_axis(ax, ax2)  # after twinx, which sets its own x ticker
    ax2.set_xlabel("")
    ax.set_title("Oscillation and accuracy")
    return save_figure(fig, plt, out / "flip_accuracy.png")


def figure_dead_tau(run: RunData, plt: Any, out: Path) -> Path | None:
    xs, ys = run.series(N.dyn_key(N.DEAD))
    tx, tau = run.method_series(N.method_key("recu/tau"))
    cx, clamped = run.method_series(N.method_key("recu/clamped"))
    if not xs and not tx:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(xs, [100 * y for y in ys], marker=".", color="tab:gray", label="dead (zero gradient)")
    if cx:
        ax.plot(cx, [100 * c for c in clamped], marker=".", color="tab:purple",
                label="ReCU clamped (|w1| > Q(τ))")  # fmt: skip
    epoch_axis(ax)
    ax.set_ylabel("% of binary weights")
    handles, labels = ax.get_legend_handles_labels()
    if tx:
        ax2 = ax.twinx()
        ax2.plot(tx, tau, marker=".", color="tab:green", label="ReCU τ")
        ax2.set_ylabel("ReCU τ", color="tab:green")
        more, more_labels = ax2.get_legend_handles_labels()
        handles, labels = handles + more, labels + more_labels
        epoch_axis(ax, ax2)
        ax2.set_xlabel("")
    ax.legend(handles, labels, fontsize=8, loc="upper left")
    ax.set_title("Dead weights" + (" and ReCU's τ" if tx else ""))
    return save_figure(fig, plt, out / "dead_tau.png")


def figure_heatmap(run: RunData, plt: Any, out: Path) -> Path | None:
    stage = tracked_stage(run)
    layers = run.layers(stage)
    if not layers:
        return None
    epochs = [e for e in run.epochs if e["stage"] == stage]
    grid = [
        [100 * float(e.get(N.dyn_key(N.OSCILLATION, n), float("nan"))) for e in epochs]
        for n in layers
    ]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.25 * len(epochs) + 3), max(3.0, 0.28 * len(layers) + 1.5)))  # fmt: skip
    im = ax.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest",
                   extent=(epochs[0]["index"] + 0.5, epochs[-1]["index"] + 1.5, len(layers) - 0.5, -0.5))  # fmt: skip
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels(layers, fontsize=7)
    epoch_axis(ax)
    ax.set_title("Oscillation per layer and epoch (%, mean per-step flip rate)")
    fig.colorbar(im, ax=ax)
    return save_figure(fig, plt, out / "flip_heatmap.png")


def save_figure(fig: Any, plt: Any, path: Path) -> Path:
    """Save ``fig`` to ``path`` atomically (temp file + rename) and close it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


FIGURES = (
    figure_weight_distribution,
    figure_oscillation,
    figure_silent,
    figure_flip_accuracy,
    figure_dead_tau,
    figure_heatmap,
)
