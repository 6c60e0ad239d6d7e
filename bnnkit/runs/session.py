"""Where a run trains and what it continues from, decided once and agreed by every rank.

Rank 0 alone touches the file system here: it picks or creates the run directory, takes its
lock (:mod:`bnnkit.runs.lock`), removes the temp files a killed process left, and picks the
checkpoint to continue from: the one ``--resume`` names, or, for a run directory (``--resume
RUN`` or an automatic resume), its newest complete checkpoint (:func:`newest_checkpoint`).
It broadcasts the decision, or its error, so that every rank either starts together or
stops: the rank that failed says why, the others exit quietly (:class:`PeerFailedError`).

Automatic resume (``training.auto_resume``, on by default under torchrun): a run started with
an ``--out`` that already holds checkpoints continues from the newest, which is what an
elastic restart (``torchrun --max-restarts N``) needs, since it reruns the same command.
Without ``--out`` a torchrun job's default directory is named after its ``--rdzv-id``
(``TORCHELASTIC_RUN_ID``), so that its restarts find it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch.distributed as td

from bnnkit.config import RunConfig, load_recipe
from bnnkit.errors import BnnkitError, PeerFailedError
from bnnkit.runs.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from bnnkit.runs.lock import RunLock
from bnnkit.runs.rundir import LAST, RunDirectory, RunDirectoryError
from bnnkit.training import Dist


def under_torchrun() -> bool:
    """Whether this process was started by torchrun (its elastic agent sets these)."""
    return "TORCHELASTIC_RESTART_COUNT" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ


Position = tuple[int, int]  # (stage index, global step)


def checkpoint_positions(run: RunDirectory) -> tuple[dict[Path, Position], list[str]]:
    """Where each complete checkpoint of the run stands (each file loaded once, mapped), and a
    note for each file that does not load (a cut or corrupt file is skipped, never resumed)."""
    positions: dict[Path, Position] = {}
    notes = []
    for path in run.checkpoint_files():
        try:
            ckpt = load_checkpoint(path, mmap=True)
        except CheckpointError as err:
            notes.append(f"skipped {path.name}: {err}")
            continue
        positions[path] = (ckpt.stage_index, int(ckpt.progress.get("step", 0)))
    return positions, notes


def _newest(positions: dict[Path, Position]) -> Path | None:
    """The newest of them: highest stage, then step; ``last.pt`` on a tie."""
    return max(positions, key=lambda p: (*positions[p], p.name == LAST), default=None)


def newest_checkpoint(run: RunDirectory) -> tuple[Path | None, list[str]]:
    """The run's newest complete checkpoint among all its checkpoint files, and the notes of
    :func:`checkpoint_positions`."""
    positions, notes = checkpoint_positions(run)
    return _newest(positions), notes


def _check_newest(run: RunDirectory, source: Path) -> None:
    """In place, only the run's newest checkpoint continues it: continuing an older one there
    would leave the newer checkpoints of the abandoned steps for a later resume to pick."""
    positions, _ = checkpoint_positions(run)
    newest = _newest(positions)
    if newest is None:
        return
    mine = positions.get(source.resolve())
    if mine is None:  # not a complete checkpoint: loading it says why
        ckpt = load_checkpoint(source, mmap=True)
        mine = (ckpt.stage_index, int(ckpt.progress.get("step", 0)))
    if positions[newest] <= mine:
        return
    raise CheckpointError(
        f"{source} is older than {newest}, the newest checkpoint of {run.path}: continuing it "
        f"in place would mix two histories. Continue it in a new run directory with --out DIR, "
        f"or resume the run itself with --resume {run.path}"
    )


@dataclass
class Session:
    """The agreed decision: the run directory, the checkpoint to continue from (or None), the
    lock (rank 0), and notes to print."""

    run: RunDirectory
    checkpoint: Path | None
    lock: RunLock | None = None
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _default_out(name: str) -> Path:
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    stamp = run_id if under_torchrun() and run_id != "none" else f"{datetime.now():%Y%m%d-%H%M%S}"
    return Path("runs") / f"{name.replace('/', '_')}-{stamp}"


def _lock(path: Path, notes: list[str]) -> RunLock:
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"--out {path} is a file, not a folder; choose another --out")
    path.mkdir(parents=True, exist_ok=True)
    lock = RunLock(path).acquire()
    if lock.took_over:
        notes.append(lock.took_over)
    return lock


def _decide(cfg: RunConfig | None, out: str | Path | None, resume: str | Path | None,
            name: str) -> Session:  # fmt: skip
    """Rank 0's decision (see the module docstring); raises a BnnkitError when it cannot."""
    notes: list[str] = []
    if resume is not None:
        source = Path(resume)
        if not source.exists():
            raise CheckpointError(f"--resume {source}: no such run directory or checkpoint")
        run = RunDirectory(Path(out)) if out is not None else RunDirectory.of_checkpoint(source)
        lock = _lock(run.path, notes)
        try:
            if out is not None:  # continue a checkpoint in a new run directory
                RunDirectory.create(run.path, name)
            elif source.is_file():
                _check_newest(run, source)
        except BnnkitError:
            lock.release()
            raise
        checkpoint = source
        if source.is_dir():
            checkpoint, skipped = newest_checkpoint(RunDirectory(source))
            notes += skipped
            if checkpoint is None:
                lock.release()
                raise CheckpointError(
                    f"{source} holds no complete checkpoint to resume (it stopped before its "
                    f"first); start it again with --out {source}"
                )
        return Session(run, checkpoint, lock, notes)
    assert cfg is not None
    run = RunDirectory(Path(out) if out is not None else _default_out(name))
    lock = _lock(run.path, notes)
    auto = cfg.stages[0].training.auto_resume
    if auto is None:
        auto = under_torchrun()
    files = run.checkpoint_files()
    positions, skipped = checkpoint_positions(run) if files else ({}, [])
    checkpoint = _newest(positions) if auto else None
    if auto:
        notes += skipped
    if checkpoint is None:
        if files and not positions:
            notes += _set_aside_broken(run, files)
        try:
            RunDirectory.create(run.path, name)
        except BnnkitError:
            lock.release()
            raise
    else:
        notes.append(f"resuming automatically from {checkpoint} (training.auto_resume)")
    return Session(run, checkpoint, lock, notes)


def _set_aside_broken(run: RunDirectory, files: list[Path]) -> list[str]:
    """A folder whose checkpoint files are all incomplete (cut, empty) holds no run: rename
    them to ``<name>.broken`` (kept, not deleted) so that the folder can be reused."""
    for path in files:
        path.replace(path.with_name(path.name + ".broken"))
    return [f"no complete checkpoint in {run.checkpoints}: set aside "
            f"{', '.join(p.name for p in files)} as *.broken and started afresh"]  # fmt: skip


def open_session(dist: Dist, cfg: RunConfig | None, *, out: str | Path | None,
                 resume: str | Path | None, name: str) -> Session:  # fmt: skip
    """Decide on rank 0, then agree: every rank gets the same :class:`Session` (its lock on
    rank 0), or raises: rank 0 its error, the others :class:`PeerFailedError`."""
    decision: list[Any] = [None]
    session, failure = None, None
    if dist.is_main:
        try:
            session = _decide(cfg, out, resume, name)
            cleaned = session.run.remove_temp_files()
            if cleaned:
                session.notes.append(f"removed {len(cleaned)} temp file(s) of an interrupted write")
            checkpoint = str(session.checkpoint) if session.checkpoint else None
            decision = [(str(session.run.path), checkpoint)]
        except BnnkitError as err:
            failure = err
    if dist.enabled:
        td.broadcast_object_list(decision, src=0, group=dist.control)
    if failure is not None:
        raise failure
    if decision[0] is None:
        raise PeerFailedError("rank 0 could not open the run (its message says why)")
    if session is None:  # ranks > 0
        path, checkpoint = decision[0]
        session = Session(RunDirectory(Path(path)), Path(checkpoint) if checkpoint else None)
    return session


def load_resumed(session: Session, flat: dict[str, Any]) -> tuple[Checkpoint, RunConfig] | None:
    """The session's checkpoint and its recipe with ``flat`` overrides (the run keeps its name)."""
    if session.checkpoint is None:
        return None
    ckpt = load_checkpoint(session.checkpoint)
    cfg = load_recipe(ckpt.recipe, flat, name=ckpt.config.get("name"))
    return ckpt, cfg
