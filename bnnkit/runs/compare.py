"""``bnnkit compare``: train several methods on the same recipe, data, seeds and budget, then
tabulate accuracy and training dynamics side by side.

Every (method, seed) pair is one ordinary run, ``<out>/<method>-seed<seed>/``, trained in turn
with the recipe plus ``method.name=<method>`` and ``training.seed=<seed>`` (and the shared
``key=value`` overrides; an override ``<method>.<field>=v`` reaches only that method, as
``method.<field>=v``, and ``<method>.<section>.<key>=v`` that method's recipe section, e.g.
``bop.optimizer.binary.gamma=1e-3``; a latent-free method such as ``bop`` gets
``optimizer.binary`` (Bop's defaults) unless it is given). Running the same command again resumes: finished runs (with a
``summary.json``) are kept, an interrupted one continues from its ``last.pt``. The results
are ``compare.md`` (the table, the command, the settings), ``compare.json`` (the numbers),
``compare.png`` (the curves overlaid, mean over seeds) and a ``report.md`` per run.

Table columns (mean ± sample std over seeds): best and final top-1; silent % at the end (OvSW's
never-flipped weights); oscillation %, back-and-forth % and dead %, each the mean over all
epochs of the epoch values (the papers' claims are about the whole of training); median
seconds per epoch and training images/s.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bnnkit._io import atomic_write_text
from bnnkit.config import TOP_KEYS, load_recipe
from bnnkit.diagnostics import names as N
from bnnkit.diagnostics.figures import epoch_axis, pyplot, save_figure
from bnnkit.diagnostics.report import write_report
from bnnkit.errors import BnnkitError
from bnnkit.methods import get_method, list_methods
from bnnkit.runs.run import train
from bnnkit.runs.rundir import RunDirectory, load_run

COLUMNS = (
    ("best_top1", "best top-1"),
    ("final_top1", "final top-1"),
    ("silent", "silent %"),
    ("oscillation", "oscillation %"),
    ("backforth", "back-and-forth %"),
    ("dead", "dead %"),
    ("seconds_per_epoch", "s/epoch"),
    ("images_per_s", "images/s"),
)


class CompareError(BnnkitError, ValueError):
    """Bad compare arguments, or an output folder that holds a different comparison."""


@dataclass
class CompareResult:
    """What ``compare`` produced: per method, the per-seed values and their mean/std."""

    out: Path
    methods: list[str]
    seeds: list[int]
    runs: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)

    def stats(self, method: str, key: str) -> tuple[float, float, int]:
        """``(mean, sample std (0 for one seed), n)`` of a column over the method's seeds."""
        values = [r[key] for r in self.runs.get(method, {}).values() if r.get(key) is not None]
        if not values:
            return float("nan"), float("nan"), 0
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), std, len(values)

    def table(self) -> str:
        """The comparison as a Markdown table."""
        header = ["method", *[label for _, label in COLUMNS], "seeds"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in self.methods:
            cells = [m]
            n = 0
            for key, _ in COLUMNS:
                mean, std, n = self.stats(m, key)
                cells.append(_cell(key, mean, std, n))
            cells.append(str(n))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _cell(key: str, mean: float, std: float, n: int) -> str:
    if n == 0 or mean != mean:
        return "-"
    digits = 0 if key == "images_per_s" else (3 if key in ("backforth", "dead") else 2)
    text = f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if n > 1 else "")


def parse_list(text: str, kind: type = str) -> list[Any]:
    """``"a,b,c"`` -> ``["a", "b", "c"]`` (``kind`` converts each item)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [kind(t) for t in items]
    except ValueError:
        raise CompareError(f"cannot read {text!r} as a comma-separated list of {kind.__name__}") from None  # fmt: skip


def _split_overrides(
    overrides: Sequence[str], methods: Sequence[str]
) -> tuple[list[str], dict[str, list[str]]]:
    shared: list[str] = []
    per: dict[str, list[str]] = {m: [] for m in [*methods, *list_methods()]}
    for o in overrides:
        key = o.split("=", 1)[0]
        head = key.split(".", 1)[0]
        if head in per and "." in key:  # kept for a method not compared now (a later run may)
            rest = o.split(".", 1)[1]  # <method>.<section>.<key>=v: that method's recipe section
            per[head].append(rest if rest.split(".", 1)[0] in TOP_KEYS else "method." + rest)
        elif key in ("method.name", "training.seed"):
            raise CompareError(f"{key} is set by compare itself (--methods / --seeds); drop {o!r}")
        else:
            shared.append(o)
    for m in per:  # a latent-free method's ±1 weights take Bop, with its defaults unless set
        if get_method(m).latent_free and not any(o.startswith("optimizer.binary") for o in per[m]):
            per[m].append("optimizer.binary.name=bop")
    return shared, per


def _check_same_settings(out: Path, recipe: str, overrides: Sequence[str]) -> None:
    """Refuse to add runs to ``out`` under other settings than its runs were trained with: the
    recipe and the shared overrides must match, and so must every trained method's own
    ``<method>.<key>`` overrides (a method not trained there yet may bring new ones)."""
    spec_file = out / "compare.json"
    if not spec_file.is_file():
        return
    old = json.loads(spec_file.read_text()).get("spec", {})
    if not old:
        return
    shared_old, per_old = _split_overrides(old.get("overrides", []), [])
    shared_new, per_new = _split_overrides(overrides, [])
    trained = {p.name.rsplit("-seed", 1)[0] for p in out.glob("*-seed*") if p.is_dir()}
    changed = sorted(m for m in trained if per_old.get(m, []) != per_new.get(m, []))
    if old.get("recipe") != recipe or shared_old != shared_new or changed:
        what = f" (the overrides of {', '.join(changed)})" if changed else ""
        raise CompareError(
            f"{out} holds a comparison of {old.get('recipe')!r} with overrides "
            f"{old.get('overrides')}{what}; use another --out for different settings"
        )


def _run_values(run_dir: Path) -> dict[str, float]:
    run = load_run(run_dir)
    summary = run.summary
    stage = run.stages[-1]
    epochs = [e for e in run.epochs if e["stage"] == stage]

    def mean_of(key: str) -> float | None:
        vals = [e[key] for e in epochs if isinstance(e.get(key), (int, float))]
        return 100 * statistics.fmean(vals) if vals else None

    seconds = [e["seconds"] for e in epochs if "seconds" in e]
    ips = [e["images_per_s"] for e in epochs if "images_per_s" in e]
    silent = summary.get("dynamics", {}).get(N.dyn_key(N.SILENT))
    return {
        "best_top1": summary.get("best_top1"),
        "final_top1": summary.get("final_top1"),
        "silent": 100 * silent if silent is not None else None,
        "oscillation": mean_of(N.dyn_key(N.OSCILLATION)),
        "backforth": mean_of(N.dyn_key(N.BACKFORTH)),
        "dead": mean_of(N.dyn_key(N.DEAD)),
        "seconds_per_epoch": statistics.median(seconds) if seconds else None,
        "images_per_s": statistics.median(ips) if ips else None,
    }


def compare(
    recipe: str,
    methods: Sequence[str],
    seeds: Sequence[int] = (0,),
    overrides: Sequence[str] = (),
    *,
    out: str | Path | None = None,
    train_fn: Callable[..., Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> CompareResult:
    """Train every method x seed (skipping finished runs, resuming interrupted ones) and write
    ``compare.md`` / ``compare.json`` / ``compare.png``.

    Args:
        recipe: a recipe name or path (as ``bnnkit train`` takes).
        methods: registered method names.
        seeds: training seeds; each method is trained once per seed.
        overrides: ``key=value`` overrides for every run; ``<method>.<field>=v`` for one method.
        out: the comparison folder (default ``runs/compare-<recipe>-<date-time>``).
        train_fn: the training function (default :func:`bnnkit.train`).
        log: where progress lines go (default stderr).
    """
    log = log or (lambda text: print(text, file=sys.stderr))
    methods = list(dict.fromkeys(methods))
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not methods:
        raise CompareError("give at least one method, e.g. --methods ste,reactnet,recu,rebnn,ovsw")
    if not seeds:
        raise CompareError("give at least one seed, e.g. --seeds 0,1,2")
    unknown = [m for m in methods if m not in list_methods()]
    if unknown:
        raise CompareError(f"unknown method(s) {unknown}; valid: {list_methods()}")
    shared, per = _split_overrides(overrides, methods)
    for m in methods:  # validate every configuration before training anything
        load_recipe(recipe, [*shared, f"method.name={m}", *per[m]])
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = (
            Path("runs") / f"compare-{str(recipe).replace('/', '_').removesuffix('.yaml')}-{stamp}"
        )
    out = Path(out)
    spec = {"recipe": str(recipe), "overrides": list(overrides)}
    _check_same_settings(out, str(recipe), overrides)
    out.mkdir(parents=True, exist_ok=True)
    train_fn = train_fn or train
    result = CompareResult(out, methods, seeds)
    total = len(methods) * len(seeds)
    for i, (m, s) in enumerate(((m, s) for m in methods for s in seeds), start=1):
        run_dir = out / f"{m}-seed{s}"
        label = f"[compare {i}/{total}] {m} seed {s}"
        if (run_dir / "summary.json").is_file():
            log(f"{label}: done before, kept ({run_dir})")
        elif RunDirectory(run_dir).last_checkpoint.is_file():
            log(f"{label}: resuming {run_dir}")
            train_fn(resume=run_dir)
        else:
            if run_dir.exists():  # started but not one epoch finished: nothing to keep
                shutil.rmtree(run_dir)
            log(f"{label}: training into {run_dir}")
            train_fn(recipe, [*shared, f"method.name={m}", f"training.seed={s}", *per[m]], out=run_dir)  # fmt: skip
        result.runs.setdefault(m, {})[s] = _run_values(run_dir)
        write_report(load_run(run_dir))
    _write_outputs(result, spec)
    return result


def _write_outputs(result: CompareResult, spec: dict[str, Any]) -> None:

    out = result.out
    figure = compare_figure(result)
    seeds = ",".join(map(str, result.seeds))
    command = (
        f"bnnkit compare {spec['recipe']} --methods {','.join(result.methods)} --seeds {seeds}"
        + "".join(f" {o}" for o in spec["overrides"])
        + f" --out {out}"
    )
    lines = [
        f"# Comparison: {spec['recipe']}",
        "",
        "```bash",
        command,
        "```",
        "",
        result.table(),
        "",
        "Mean ± sample std over seeds. silent: weights never flipped since the stage start, "
        "at the end; oscillation (mean per-step flip rate), back-and-forth (flip undone at the "
        "next step) and dead (zero gradient): means over all epochs; s/epoch and images/s: "
        "medians over epochs. Per-run reports: `<method>-seed<seed>/report.md`.",
    ]
    if figure is not None:
        lines += ["", f"![comparison]({figure.name})"]
    atomic_write_text("\n".join(lines) + "\n", out / "compare.md")
    doc = {
        "spec": spec,
        "methods": result.methods,
        "seeds": result.seeds,
        "runs": {m: {str(s): v for s, v in r.items()} for m, r in result.runs.items()},
    }
    atomic_write_text(json.dumps(doc, indent=2), out / "compare.json")


def compare_figure(result: CompareResult) -> Path | None:
    """Curves of every method (mean over seeds), overlaid: top-1, loss and the dynamics."""
    plt = pyplot()
    if plt is None:
        return None
    panels = [
        ("top1", "val top-1 (%)", 1.0),
        ("train_loss", "train loss", 1.0),
        (N.dyn_key(N.OSCILLATION), "oscillation (%)", 100.0),
        (N.dyn_key(N.BACKFORTH), "back-and-forth (%)", 100.0),
        (N.dyn_key(N.SILENT), "silent (%)", 100.0),
        (N.dyn_key(N.DEAD), "dead (%)", 100.0),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    cmap = plt.get_cmap("tab10" if len(result.methods) <= 10 else "tab20")
    for i, m in enumerate(result.methods):  # one colour per method in every panel (a method
        color = cmap(i % cmap.N)  # without a curve, e.g. float's dynamics, must not shift them)
        runs = [load_run(result.out / f"{m}-seed{s}") for s in result.runs.get(m, {})]
        for ax, (key, label, k) in zip(axes.flat, panels, strict=True):
            curves = [run.series(key) for run in runs]
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            n = min(len(c[0]) for c in curves)
            xs = curves[0][0][:n]
            ys = [k * statistics.fmean(c[1][j] for c in curves) for j in range(n)]
            ax.plot(xs, ys, marker="o", markersize=3, label=m, color=color)  # one epoch: a point
            ax.set_title(label, fontsize=10)
            epoch_axis(ax)
    axes.flat[0].legend(fontsize=8)
    return save_figure(fig, plt, result.out / "compare.png")
