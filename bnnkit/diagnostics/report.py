"""``report.md`` for a run: its results, its final training dynamics per layer, the figures
(:mod:`bnnkit.diagnostics.figures`) and the definitions. ``bnnkit report RUN_DIR`` writes it.

Reads a parsed run (:class:`~bnnkit.diagnostics.rundata.RunData`), never files it does not
name; writes ``report.md`` and ``figures/*.png`` into the run directory (or ``out``). Without
matplotlib the report holds the tables only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnnkit._io import atomic_write_text
from bnnkit.diagnostics import names as N
from bnnkit.diagnostics.figures import FIGURES, pyplot, silent_split, tracked_stage
from bnnkit.diagnostics.rundata import ReportError, RunData, finite

METRICS = (N.OSCILLATION, N.BACKFORTH, N.SILENT, N.DEAD, N.QERR, N.ENTROPY)
LABELS = {
    N.OSCILLATION: "oscillation (epoch mean flip rate)",
    N.BACKFORTH: "back-and-forth rate",
    N.SILENT: "silent (never flipped)",
    N.DEAD: "dead (zero gradient)",
    N.QERR: "quantization error",
    N.ENTROPY: "Laplace entropy",
    N.FLIP: "flip rate (last log window)",
}
PERCENT = {N.OSCILLATION, N.BACKFORTH, N.SILENT, N.DEAD, N.FLIP}

__all__ = ["LABELS", "METRICS", "PERCENT", "ReportError", "RunData", "fmt", "write_report"]


def fmt(metric: str, value: Any) -> str:
    """A metric value as the report prints it (percent for fractions)."""
    if not finite(value):
        return "-"
    if metric in PERCENT:
        return f"{100 * value:.3g}%" if abs(100 * value) < 0.1 else f"{100 * value:.2f}%"
    return f"{value:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def write_report(run: RunData, out: str | Path | None = None) -> tuple[Path, list[Path]]:
    """Write ``report.md`` and the figures of a parsed run (:meth:`bnnkit.runs.RunDirectory.load`)
    into ``out`` (default: the run directory); returns ``(report path, figure paths)``."""
    out_dir = Path(out) if out is not None else run.path
    fig_dir = out_dir / "figures"
    plt = pyplot()
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
    stage = tracked_stage(run)
    lines.append("")
    if stage is None:
        lines += ["No dynamics were tracked (no binary-weight layer, or `diagnostics.enabled: false`)."]  # fmt: skip
    else:
        last = [e for e in run.epochs if e["stage"] == stage][-1]
        lines += [f"## Final dynamics (stage `{stage}`, epoch {last['epoch'] + 1})", ""]
        metrics = [m for m in METRICS if N.dyn_key(m) in last]
        table = [[N.ALL, *[fmt(m, last.get(N.dyn_key(m))) for m in metrics]]]
        table += [[n, *[fmt(m, last.get(N.dyn_key(m, n))) for m in metrics]] for n in run.layers(stage)]  # fmt: skip
        lines += _table(["layer", *metrics], table)
        split = silent_split(run)
        if split is not None:
            lines += ["", f"Never-flipped weights of `{split['layer']}` (OvSW's silent weights): "
                      f"{split['percent']:.2f}%."]  # fmt: skip
        methods = sorted({k for t in run.train for k in t if k.startswith(N.METHOD_PREFIX)})
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
