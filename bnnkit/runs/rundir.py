"""The run directory: its layout, and every writer and reader of its files (one module).

::

    <run>/config.yaml            the fully resolved recipe, versions, git revision
    <run>/metrics.jsonl          one JSON object per event (bnnkit.diagnostics.names)
    <run>/summary.json           best / final top-1 and top-5, time, final dynamics, per stage
    <run>/checkpoints/last.pt    every epoch; best.pt (final stage), <stage>-best.pt (others)
    <run>/checkpoints/step-NNNNNNNNN.pt   inside epochs, every training.checkpoint_every_steps
                                 steps and at a preemption (the newest keep_checkpoints kept)
    <run>/.lock                  held by the process training into the run (bnnkit.runs.lock)
    <run>/tensorboard/           event files (when tensorboard is installed)
    <run>/dynamics/<stage>-init.safetensors    latent weights of the tracked layers at the
                                 stage start (float32, one tensor per layer; the OvSW figure)
    <run>/dynamics/<stage>-flips.safetensors   per weight: <layer>/flips (int16 flip count),
                                 <layer>/last_flip (int64 step, -1 never), <layer>/sign (int8),
                                 as of the last finished epoch; metadata: stage, epoch, step,
                                 every, resolution, layers
    <run>/dynamics/<stage>-epochNNN-flips.safetensors   the same per epoch (keep_dumps)
    <run>/dynamics/histograms.jsonl   one line per histogram: stage, epoch (epochs done, 0 =
                                 start), step, layer, kind (layer | channel0), range, counts
    <run>/report.md, figures/    written by ``bnnkit report``

Files are written atomically (temp file + rename); a JSON line cut by a crash is skipped when
read. Reading never executes code (YAML safe load, JSON, safetensors).
"""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save

from bnnkit._io import atomic_write_bytes, atomic_write_text
from bnnkit._version import __version__
from bnnkit.diagnostics import Dynamics
from bnnkit.diagnostics import names as N
from bnnkit.diagnostics.rundata import ReportError, RunData
from bnnkit.errors import BnnkitError

CONFIG, METRICS, SUMMARY = "config.yaml", "metrics.jsonl", "summary.json"
CHECKPOINTS, LAST, BEST, STEP = "checkpoints", "last.pt", "best.pt", "step-"
DYNAMICS, HISTOGRAMS, TENSORBOARD = "dynamics", "histograms.jsonl", "tensorboard"


class RunDirectoryError(BnnkitError, FileExistsError):
    """A run directory that cannot be used as asked (it holds another run)."""


class EventLog:
    """``metrics.jsonl``: appends each event record as one JSON line (line-buffered, so a
    crash cuts at most the last line, which the reader skips)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the run's life)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


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


def _safe_stage(stage: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stage)


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parents[2]  # the checkout, for a source install
    if not (root / ".git").exists():
        raise OSError("not a git checkout (an installed wheel)")
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=True
    )
    return done.stdout.strip()


def _git_revision() -> str:
    """The source's git revision (``-dirty`` with uncommitted changes), or ``unknown``."""
    try:
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return _git("rev-parse", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class RunDirectory:
    """One run's folder: where each file goes, and how each is written and read."""

    path: Path

    # -- layout ---------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST

    def step_checkpoint(self, step: int) -> Path:
        """``step-<step>.pt``: a checkpoint written inside an epoch, after optimizer step ``step``."""
        return self.checkpoints / f"{STEP}{step:09d}.pt"

    def step_checkpoints(self) -> list[Path]:
        """The step checkpoints, oldest first."""
        return sorted(self.checkpoints.glob(f"{STEP}*.pt")) if self.checkpoints.is_dir() else []

    def checkpoint_files(self) -> list[Path]:
        """Every checkpoint file of the run (last, best, per-stage best, step)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.glob("*.pt") if p.is_file())

    def prune_step_checkpoints(self, keep: int) -> None:
        """Delete all but the newest ``keep`` step checkpoints."""
        for path in self.step_checkpoints()[:-keep]:
            path.unlink(missing_ok=True)

    def remove_temp_files(self) -> list[Path]:
        """Delete the temp files of writes a killed process left behind (``.<name>.*.tmp``;
        call while holding the run's lock); returns them."""
        found = []
        for folder in (self.path, self.checkpoints, self.path / DYNAMICS):
            if folder.is_dir():
                found += [p for p in folder.glob(".*.tmp") if p.is_file()]
        for path in found:
            path.unlink(missing_ok=True)
        return found

    def best_checkpoint(self, stage: str | None = None) -> Path:
        """``best.pt`` (the final stage, ``stage=None``) or ``<stage>-best.pt``."""
        return self.checkpoints / (BEST if stage is None else f"{_safe_stage(stage)}-best.pt")

    def dynamics_init(self, stage: str) -> Path:
        return self.path / DYNAMICS / f"{_safe_stage(stage)}-init.safetensors"

    def dynamics_flips(self, stage: str, epoch: int | None = None) -> Path:
        suffix = "" if epoch is None else f"-epoch{epoch:03d}"
        return self.path / DYNAMICS / f"{_safe_stage(stage)}{suffix}-flips.safetensors"

    @property
    def histograms(self) -> Path:
        return self.path / DYNAMICS / HISTOGRAMS

    # -- creating -------------------------------------------------------------------------------
    @classmethod
    def create(cls, out: str | Path | None, name: str) -> RunDirectory:
        """A new run directory (default ``./runs/<name>-<YYYYmmdd-HHMMSS>``); one that already
        holds a checkpoint is refused (resume it instead). A folder an earlier attempt left
        without any checkpoint (it failed or was stopped before its first) is reused: its
        event log, summary and dynamics are cleared. ``--out`` naming a file is refused."""
        if out is None:
            out = Path("runs") / f"{name.replace('/', '_')}-{datetime.now():%Y%m%d-%H%M%S}"
        run = cls(Path(out))
        if run.path.exists() and not run.path.is_dir():
            raise RunDirectoryError(
                f"--out {run.path} is a file, not a folder; choose another --out"
            )
        if run.checkpoint_files():
            raise RunDirectoryError(
                f"{run.path} already holds a run; resume it with --resume {run.path} or choose "
                "another --out"
            )
        for stale in (run.metrics, run.summary):
            stale.unlink(missing_ok=True)
        dumps = run.path / DYNAMICS
        for stale in [*dumps.glob("*-flips.safetensors"), *dumps.glob("*-init.safetensors"),
                      dumps / HISTOGRAMS]:  # fmt: skip
            stale.unlink(missing_ok=True)
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        return run

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDirectory:
        """The run a checkpoint file (``<run>/checkpoints/x.pt``) or run directory belongs to;
        a :class:`RunDirectoryError` for a file outside a run's ``checkpoints/`` folder."""
        path = Path(checkpoint)
        if path.is_dir():
            return cls(path)
        if path.resolve().parent.name != CHECKPOINTS:
            raise RunDirectoryError(
                f"{path} is not inside a run directory's {CHECKPOINTS}/ folder, so there is no "
                f"run to continue in; pass --out DIR to continue it in a new run directory"
            )
        return cls(path.resolve().parents[1])

    # -- writers --------------------------------------------------------------------------------
    def event_log(self) -> EventLog:
        """The sink of the run's log events (``metrics.jsonl``, appended on resume)."""
        return EventLog(self.metrics)

    def rewind_events(self, step: int) -> int:
        """Drop the events logged after optimizer step ``step`` (a run resumed from a checkpoint
        of that step logs them again), so the log reads as an uninterrupted run's; returns how
        many were dropped. Rewrites ``metrics.jsonl`` atomically."""
        if not self.metrics.is_file():
            return 0
        events = read_jsonl(self.metrics)  # a line cut by a kill is dropped with the rest
        kept = [e for e in events if int(e.get("step", 0)) <= step]
        atomic_write_text("".join(json.dumps(e) + "\n" for e in kept), self.metrics)
        return len(events) - len(kept)

    def write_config(self, resolved: dict[str, Any]) -> Path:
        """``config.yaml``: the resolved recipe, the versions and the git revision."""
        versions = {"bnnkit": __version__, "torch": str(torch.__version__),
                    "python": platform.python_version()}  # fmt: skip
        doc = {**resolved, "versions": versions, "git": _git_revision()}
        return atomic_write_text(yaml.safe_dump(doc, sort_keys=False), self.config)

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return atomic_write_text(json.dumps(summary, indent=2), self.summary)

    def write_init(self, stage: str, dyn: Dynamics) -> Path:
        """The tracked layers' latent weights now (at the start of a stage)."""
        tensors = {n: w.float().cpu().contiguous() for n, w in dyn.weights().items()}
        return atomic_write_bytes(save(tensors, {"stage": stage}), self.dynamics_init(stage))

    def write_flips(self, stage: str, epoch: int, step: int, dyn: Dynamics, *, keep: bool,
                    every: int) -> Path:  # fmt: skip
        """The per-weight flip state after ``epoch`` (0-based index of the finished epoch)."""
        meta = {"stage": stage, "epoch": str(epoch + 1), "step": str(step), "every": str(every),
                "resolution": str(2**dyn.shift), "layers": json.dumps(dyn.layer_names)}  # fmt: skip
        data = save(dyn.dump(), meta)
        path = atomic_write_bytes(data, self.dynamics_flips(stage))
        if keep:
            atomic_write_bytes(data, self.dynamics_flips(stage, epoch + 1))
        return path

    def append_histograms(
        self, stage: str, epoch: int, step: int, dyn: Dynamics, bins: int
    ) -> list[dict[str, Any]]:
        """Append the current histograms (``epoch`` = epochs done) to ``histograms.jsonl``."""
        records = [
            {"stage": stage, "epoch": epoch, "step": step, **r} for r in dyn.histograms(bins)
        ]
        self.histograms.parent.mkdir(parents=True, exist_ok=True)
        with open(self.histograms, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
        return records

    # -- readers --------------------------------------------------------------------------------
    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text()) if self.summary.is_file() else {}

    def read_histograms(self) -> list[dict[str, Any]]:
        """Histogram records, the last one kept where a resumed run wrote one twice."""
        latest: dict[tuple, dict[str, Any]] = {}
        for r in read_jsonl(self.histograms):
            latest[(r.get("stage"), r.get("epoch"), r.get("layer"), r.get("kind"))] = r
        return list(latest.values())

    def load(self) -> RunData:
        """Parse the run for the report and compare; a clear :class:`ReportError` if it is not one."""
        if not self.path.is_dir():
            raise ReportError(f"{self.path} is not a directory; pass a run directory (runs/<name>-<time>)")  # fmt: skip
        if not self.metrics.is_file():
            raise ReportError(f"{self.path} has no {METRICS}, so it is not a bnnkit run directory "
                              "(bnnkit train writes one; pass its run directory)")  # fmt: skip
        events = read_jsonl(self.metrics)
        latest: dict[tuple[str, int], dict[str, Any]] = {}
        for e in events:
            if e.get("event") == N.EPOCH_EVENT:
                latest[(e[N.STAGE], e[N.EPOCH])] = e  # a resumed run may repeat an epoch
        stages: list[str] = list(dict.fromkeys(stage for stage, _ in latest))
        ordered = sorted(latest.values(), key=lambda e: (stages.index(e[N.STAGE]), e[N.EPOCH]))
        for i, e in enumerate(ordered):
            e["index"] = i
        if not ordered:
            raise ReportError(
                f"{self.metrics} holds no finished epoch yet; train at least one epoch"
            )
        config = yaml.safe_load(self.config.read_text()) if self.config.is_file() else {}
        return RunData(
            path=self.path, config=config or {}, summary=self.read_summary(), epochs=ordered,
            train=[e for e in events if e.get("event") == N.TRAIN_EVENT],
            histograms=self.read_histograms(), stages=stages,
            init_files={s: p for s in stages if (p := self.dynamics_init(s)).is_file()},
            flip_files={s: p for s in stages if (p := self.dynamics_flips(s)).is_file()},
        )  # fmt: skip


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's ``best.pt`` (else its ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        run = RunDirectory(path)
        best = run.best_checkpoint()
        return best if best.is_file() else run.last_checkpoint
    return path


def load_run(run_dir: str | Path) -> RunData:
    """:meth:`RunDirectory.load` of ``run_dir``."""
    return RunDirectory(Path(run_dir)).load()
