"""``bnnkit report RUN_DIR``: the papers' training-dynamics figures and a ``report.md`` for a run.

Reads only files (``metrics.jsonl``, ``summary.json``, ``config.yaml``, ``dynamics/``); writes
``report.md`` and ``figures/*.png`` into the run directory (or ``out``). Figures need
matplotlib (``pip install "bnnkit[plot]"``); without it the report holds the tables only.

Figures:

- ``weight_distribution.png``: latent weights of output channel 0 of the first binary layer at
  evenly spaced epochs (ReBNN Fig. 3.29);
- ``oscillation.png``: epoch-wise oscillation ratio of the first, middle and last binary
  layers (ReBNN Fig. 3.28a / 3.30a);
- ``silent_weights.png``: initial weights of the last binary layer with the never-flipped
  ones overlaid and their percentage (OvSW Fig. 1a/b);
- ``flip_accuracy.png``: flip rate and top-1 per epoch (OvSW Fig. 1c);
- ``dead_tau.png``: dead fraction per epoch, and ReCU's τ and clamped fraction if present;
- ``flip_heatmap.png``: layer x epoch heat map of the oscillation ratio.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bnnkit._io import atomic_write_text
from bnnkit.diagnostics import files as dynfiles

METRICS = ("oscillation", "backforth", "silent", "dead", "qerr", "entropy")
LABELS = {
    "oscillation": "oscillation (epoch mean flip rate)",
    "backforth": "back-and-forth rate",
    "silent": "silent (never flipped)",
    "dead": "dead (zero gradient)",
    "qerr": "quantization error",
    "entropy": "Laplace entropy",
    "flip": "flip rate (last log window)",
}
PERCENT = {"oscillation", "backforth", "silent", "dead", "flip"}


class ReportError(ValueError):
    """A folder that is not a bnnkit run directory (or holds no training events yet)."""


@dataclass
class RunData:
    """What a run directory holds, parsed (epoch events de-duplicated across resumes)."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    epochs: list[dict[str, Any]]  # epoch events in order, each with "index" (global epoch)
    train: list[dict[str, Any]]
    histograms: list[dict[str, Any]]
    stages: list[str] = field(default_factory=list)

    def layers(self, stage: str | None = None) -> list[str]:
        """Tracked layer names, in forward order, from the epoch events."""
        for e in self.epochs:
            if stage is None or e["stage"] == stage:
                names = [k.split("/", 2)[2] for k in e if k.startswith("dyn/oscillation/")]
                if names:
                    return [n for n in names if n != "all"]
        return []

    def series(self, key: str, stage: str | None = None) -> tuple[list[int], list[float]]:
        """``(global epoch numbers (1-based), values)`` of an epoch-event key."""
        xs, ys = [], []
        for e in self.epochs:
            if key in e and (stage is None or e["stage"] == stage) and _finite(e[key]):
                xs.append(e["index"] + 1)
                ys.append(float(e[key]))
        return xs, ys

    def method_series(self, key: str) -> tuple[list[int], list[float]]:
        """Per-epoch mean of a train-event key (e.g. ``method/recu/tau``)."""
        sums: dict[tuple[str, int], list[float]] = defaultdict(list)
        for t in self.train:
            if key in t and _finite(t[key]):
                sums[(t["stage"], t["epoch"])].append(float(t[key]))
        xs, ys = [], []
        for e in self.epochs:
            vals = sums.get((e["stage"], e["epoch"]))
            if vals:
                xs.append(e["index"] + 1)
                ys.append(sum(vals) / len(vals))
        return xs, ys


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def load_run(run_dir: str | Path) -> RunData:
    """Parse a run directory; a clear :class:`ReportError` if it is not one."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"{path} is not a directory; pass a run directory (runs/<name>-<time>)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(
            f"{path} has no metrics.jsonl, so it is not a bnnkit run directory "
            "(bnnkit train writes one; pass its run directory)"
        )
    events = dynfiles.read_jsonl(metrics)
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for e in events:
        if e.get("event") == "epoch":
            latest[(e["stage"], e["epoch"])] = e  # a resumed run may repeat an epoch
    stages: list[str] = []
    for stage, _ in latest:
        if stage not in stages:
            stages.append(stage)
    ordered = sorted(latest.values(), key=lambda e: (stages.index(e["stage"]), e["epoch"]))
    for i, e in enumerate(ordered):
        e["index"] = i
    if not ordered:
        raise ReportError(f"{metrics} holds no finished epoch yet; train at least one epoch")
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}  # fmt: skip
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}  # fmt: skip
    train = [e for e in events if e.get("event") == "train"]
    return RunData(path, config or {}, summary, ordered, train, dynfiles.read_histograms(path), stages)  # fmt: skip


# -- figures ----------------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _evenly(items: list[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return items
    idx = sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})
    return [items[i] for i in idx]


def _binary_stage(run: RunData) -> str | None:
    """The last stage with trackers (the one the figures describe)."""
    for stage in reversed(run.stages):
        if run.layers(stage):
            return stage
    return None


def figure_weight_distribution(run: RunData, plt: Any, out: Path) -> Path | None:
    stage = _binary_stage(run)
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
    return _save(fig, plt, out / "weight_distribution.png")


def figure_oscillation(run: RunData, plt: Any, out: Path) -> Path | None:
    stage = _binary_stage(run)
    layers = run.layers(stage)
    if not layers:
        return None
    picks = list(dict.fromkeys([layers[0], layers[len(layers) // 2], layers[-1]]))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for pos, name in zip(("first", "middle", "last"), picks, strict=False):
        xs, ys = run.series(f"dyn/oscillation/{name}", stage)
        ax.plot(xs, [100 * y for y in ys], marker=".", label=f"{name} ({pos})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("oscillation ratio (%)")
    ax.set_title("Epoch-wise weight oscillation (mean per-step flip rate)")
    ax.legend(fontsize=8)
    return _save(fig, plt, out / "oscillation.png")


def silent_split(run: RunData) -> dict[str, Any] | None:
    """Initial weights of the last tracked layer split by never-flipped, from ``dynamics/``."""
    stage = _binary_stage(run)
    if stage is None:
        return None
    init_file = dynfiles.init_path(run.path, stage)
    flips_file = dynfiles.flips_path(run.path, stage)
    if not (init_file.is_file() and flips_file.is_file()):
        return None
    init, _ = dynfiles.read_safetensors(init_file)
    flips, meta = dynfiles.read_safetensors(flips_file)
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
    return _save(fig, plt, out / "silent_weights.png")


def figure_flip_accuracy(run: RunData, plt: Any, out: Path) -> Path | None:
    xs, ys = run.series("dyn/oscillation/all")
    ax_x, acc = run.series("top1")
    if not xs and not ax_x:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(xs, [100 * y for y in ys], "--", color="tab:red", label="flip rate (mean per step)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("flip rate (%)", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(ax_x, acc, "-", color="tab:blue", label="top-1")
    ax2.set_ylabel("val top-1 (%)", color="tab:blue")
    ax.set_title("Flip rate and accuracy")
    return _save(fig, plt, out / "flip_accuracy.png")


def figure_dead_tau(run: RunData, plt: Any, out: Path) -> Path | None:
    xs, ys = run.series("dyn/dead/all")
    tx, tau = run.method_series("method/recu/tau")
    cx, clamped = run.method_series("method/recu/clamped")
    if not xs and not tx:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(xs, [100 * y for y in ys], marker=".", color="tab:gray", label="dead (zero gradient)")
    if cx:
        ax.plot(cx, [100 * c for c in clamped], marker=".", color="tab:purple",
                label="ReCU clamped (|w1| > Q(tau))")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("% of binary weights")
    ax.legend(fontsize=8, loc="upper left")
    if tx:
        ax2 = ax.twinx()
        ax2.plot(tx, tau, color="tab:green", label="tau")
        ax2.set_ylabel("ReCU tau", color="tab:green")
    ax.set_title("Dead weights" + (" and ReCU's tau" if tx else ""))
    return _save(fig, plt, out / "dead_tau.png")


def figure_heatmap(run: RunData, plt: Any, out: Path) -> Path | None:
    stage = _binary_stage(run)
    layers = run.layers(stage)
    if not layers:
        return None
    epochs = [e for e in run.epochs if e["stage"] == stage]
    grid = [
        [100 * float(e.get(f"dyn/oscillation/{n}", float("nan"))) for e in epochs] for n in layers
    ]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.25 * len(epochs) + 3), max(3.0, 0.28 * len(layers) + 1.5)))  # fmt: skip
    im = ax.imshow(grid, aspect="auto", cmap="magma", interpolation="nearest",
                   extent=(epochs[0]["index"] + 0.5, epochs[-1]["index"] + 1.5, len(layers) - 0.5, -0.5))  # fmt: skip
    ax.set_yticks(range(len(layers)))
    ax.set_yticklabels(layers, fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_title("Flip rate per layer and epoch (%)")
    fig.colorbar(im, ax=ax)
    return _save(fig, plt, out / "flip_heatmap.png")


def _save(fig: Any, plt: Any, path: Path) -> Path:
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


# -- report.md --------------------------------------------------------------------------------------


def fmt(metric: str, value: Any) -> str:
    """A metric value as the report prints it (percent for fractions)."""
    if not _finite(value):
        return "-"
    if metric in PERCENT:
        return f"{100 * value:.3g}%" if abs(100 * value) < 0.1 else f"{100 * value:.2f}%"
    return f"{value:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def write_report(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, list[Path]]:
    """Write ``report.md`` and the figures; returns ``(report path, figure paths)``."""
    run = load_run(run_dir)
    out_dir = Path(out) if out is not None else run.path
    fig_dir = out_dir / "figures"
    plt = _pyplot()
    figures = []
    if plt is not None:
        figures = [p for f in FIGURES if (p := f(run, plt, fig_dir)) is not None]
    lines = [f"# Training dynamics: {run.config.get('name', run.path.name)}", ""]
    model = run.config.get("model", {}).get("name", "?")
    data = run.config.get("data", {}).get("name", "?")
    lines += [f"Run directory `{run.path}`; model `{model}`, data `{data}`.", ""]
    rows = []
    for s in run.summary.get("stages", []):
        rows.append([s["stage"], s["method"], str(s["epochs"]), fmt("", s["best_top1"]),
                     fmt("", s.get("final_top1")), str(s["best_epoch"])])  # fmt: skip
    if rows:
        lines += _table(["stage", "method", "epochs", "best top-1", "final top-1", "best epoch"], rows)  # fmt: skip
    else:
        lines.append("(no summary.json yet: the run has not finished)")
    stage = _binary_stage(run)
    lines.append("")
    if stage is None:
        lines += ["No dynamics were tracked (no binary-weight layer, or `diagnostics.enabled: false`)."]  # fmt: skip
    else:
        last = [e for e in run.epochs if e["stage"] == stage][-1]
        lines += [f"## Final dynamics (stage `{stage}`, epoch {last['epoch'] + 1})", ""]
        metrics = [m for m in METRICS if f"dyn/{m}/all" in last]
        table = [["all", *[fmt(m, last.get(f"dyn/{m}/all")) for m in metrics]]]
        table += [[n, *[fmt(m, last.get(f"dyn/{m}/{n}")) for m in metrics]] for n in run.layers(stage)]  # fmt: skip
        lines += _table(["layer", *metrics], table)
        split = silent_split(run)
        if split is not None:
            lines += ["", f"Never-flipped weights of `{split['layer']}` (OvSW's silent weights): "
                      f"{split['percent']:.2f}%."]  # fmt: skip
        methods = sorted({k for t in run.train for k in t if k.startswith("method/")})
        if methods:
            lines += ["", "Method metrics (the methods' own statistics, last logged value): "
                      + ", ".join(f"`{k}` = {run.train[-1].get(k, '-')!s:.6}" for k in methods) + "."]  # fmt: skip
    lines += ["", "## Figures", ""]
    if plt is None:
        lines.append('Figures need matplotlib: `pip install "bnnkit[plot]"`, then run `bnnkit report` again.')  # fmt: skip
    for p in figures:
        rel = p.relative_to(out_dir) if p.is_relative_to(out_dir) else p
        lines += [f"![{p.stem}]({rel})", ""]
    lines += ["", "## Definitions", ""]
    lines += [
        "- flip rate: fraction of a layer's weights whose sign changed since the previous tracker update; "
        "oscillation: its epoch mean (ReBNN's epoch-wise ratio);",
        "- back-and-forth: weights that flipped at an update and at the previous one (a flip undone);",
        "- silent: weights whose sign never changed since the stage start (OvSW Fig. 1);",
        "- dead: weights whose gradient was exactly 0 after backward, before the method's gradient rules;",
        "- qerr: mean (w - alpha_c sign(w))^2 with alpha_c = mean|w| per output channel; "
        "entropy: 1 + ln(2 mean|w|), on the weight the sign sees.",
    ]
    report = out_dir / "report.md"
    out_dir.mkdir(parents=True, exist_ok=True)

    atomic_write_text("\n".join(lines) + "\n", report)
    return report, figures
