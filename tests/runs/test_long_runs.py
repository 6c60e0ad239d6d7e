"""Long runs (issue 14): step checkpoints and exact mid-epoch resume, stop signals, the newest
complete checkpoint, finished runs, reusable failed folders, ``--resume FILE``, the run lock,
failed saves and a non-finite state. The subprocess tests (a real SIGTERM, torchrun's elastic
restart) are in ``test_preemption.py``."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from _helpers import SYNTHETIC_MLP, events, merged, write_fake
from safetensors.torch import load_file

from bnnkit.cli.main import main
from bnnkit.runs import CheckpointError, load_checkpoint, train
from bnnkit.runs.lock import RunLock, RunLockedError
from bnnkit.runs.preempt import EXIT_PREEMPTED, RunPreempted, StopSignals
from bnnkit.runs.run import RunInterrupted
from bnnkit.runs.rundir import RunDirectoryError
from bnnkit.runs.stages import CheckpointWriteError
from bnnkit.training import NonFiniteLossError, Trainer

BASE = SYNTHETIC_MLP


def recipe(**sections):
    return merged(BASE, **sections)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake(root, n=40)  # 40..44 images per train file: 210 train, 45 test
    return root


def cifar_recipe(root, **training):
    """Augmented uint8 images (crop + flip drawn per epoch), ReCU with every tracker on."""
    return merged(
        BASE,
        data={"name": "cifar10", "root": str(root), "batch_size": 16, "augment": True},
        model={"name": "mlp", "in_features": 3072, "hidden": 32, "depth": 2},
        method={"name": "recu"},
        training={"epochs": 2, "seed": 5, **training},
    )


def same_events(full, part, kind, skip=("seconds", "images_per_s", "time")):
    """Every event of ``part`` equals the event of ``full`` at the same step (timings aside)."""
    by_step = {(e["stage"], e["step"]): e for e in events(full, kind)}
    got = events(part, kind)
    assert got
    for e in got:
        ref = by_step[(e["stage"], e["step"])]
        assert {k: v for k, v in e.items() if k not in skip} == {
            k: v for k, v in ref.items() if k not in skip
        }, e["step"]
    return got


def same_weights(a, b):
    wa, wb = load_checkpoint(a).model, load_checkpoint(b).model
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# -- step checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("log_every", [1, 5])  # 5: log windows that straddle the checkpoints
def test_a_run_resumed_from_a_step_checkpoint_continues_exactly(tmp_path, cifar_root, log_every):
    cfg = merged(cifar_recipe(cifar_root, checkpoint_every_steps=4, keep_checkpoints=100),
                 logging={"log_every": log_every})  # fmt: skip
    train(cfg, out=tmp_path / "full")
    steps = sorted((tmp_path / "full" / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in steps] == [f"step-{s:09d}.pt" for s in (4, 8, 12, 16, 20, 24)]
    for path in (steps[1], steps[4]):  # inside epoch 1 (batch 8 of 13) and epoch 2 (11 of 13)
        ckpt = load_checkpoint(path)
        assert 0 < ckpt.progress["batch"] < 13 and ckpt.progress["partial"]
        out = tmp_path / f"from-{path.stem}"
        train(resume=path, out=out)
        got = same_events(tmp_path / "full", out, "train")
        assert got[0]["step"] == ckpt.progress["step"] + (
            log_every - ckpt.progress["step"] % log_every
        )
        same_events(tmp_path / "full", out, "epoch")  # epoch means, trackers, accuracy
        same_weights(tmp_path / "full", out)
        a = load_file(str(tmp_path / "full" / "dynamics" / "stage1-flips.safetensors"))
        b = load_file(str(out / "dynamics" / "stage1-flips.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_only_the_newest_step_checkpoints_are_kept(tmp_path):
    train(recipe(training={"checkpoint_every_steps": 3, "keep_checkpoints": 2}), out=tmp_path / "r")
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert names == [
        "best.pt",
        "last.pt",
        "step-000000018.pt",
        "step-000000021.pt",
    ]  # 8 steps/epoch,
    # step 24 ends the run: its checkpoint is last.pt


def test_resume_takes_the_newest_complete_checkpoint_and_removes_temp_files(tmp_path, capsys):
    cfg = recipe(training={"checkpoint_every_steps": 5, "keep_checkpoints": 100})
    train(cfg, out=tmp_path / "full")
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    ckpts = cut / "checkpoints"
    for path in ckpts.glob("*.pt"):  # as if killed in step 16: nothing after step 15 was written
        if path.name in ("last.pt", "best.pt") or int(path.stem.split("-")[1]) > 15:
            path.unlink()
    step15 = ckpts / "step-000000015.pt"
    step15.write_bytes(step15.read_bytes()[: step15.stat().st_size // 2])  # cut in the middle
    (ckpts / ".last.pt.x1y2.tmp").write_bytes(b"\0" * 1000)  # a write the kill interrupted
    lines = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    (cut / "metrics.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in lines if e["step"] <= 10)
    )
    train(resume=cut)
    err = capsys.readouterr().err
    assert "skipped step-000000015.pt" in err and "step-000000010.pt" in err
    assert "removed 1 temp file(s)" in err
    assert not list(ckpts.glob(".*.tmp"))
    same_events(tmp_path / "full", cut, "train")
    same_weights(tmp_path / "full", cut)


def test_a_run_with_no_complete_checkpoint_says_how_to_start_again(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no complete checkpoint.*--out"):
        train(resume=run)
    train(recipe(training={"epochs": 1}), out=run)  # the folder is reusable: no good checkpoint
    assert load_checkpoint(run).progress["epoch"] == 1
    assert (run / "checkpoints" / "last.pt.broken").read_bytes() == b""  # kept aside, not lost


# -- finished runs, reusable failed folders --------------------------------------------------------


def test_resuming_a_finished_run_reports_it_and_leaves_its_files(tmp_path, capsys):
    first = train(recipe(), out=tmp_path / "run")
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    again = train(resume=tmp_path / "run")
    assert "already finished" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in files} == files
    assert again.best_top1 == first.best_top1 and again.stages == first.stages
    assert main(["report", str(tmp_path / "run")]) == 0
    longer = train(resume=tmp_path / "run", overrides=["training.epochs=4"])
    assert longer.stages[0]["epochs"] == 4
    assert [e["epoch"] for e in events(tmp_path / "run", "epoch")] == [0, 1, 2, 3]


def test_a_failure_before_the_first_checkpoint_leaves_a_reusable_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    bad = merged(BASE, data={"name": "cifar10", "root": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError):
        train(bad, out=out)
    calls = []

    def interrupted(self, x, y, state):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, x, y, state)

    original = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(RunInterrupted, match=f"nothing was saved.*--out {out}") as info:
        train(recipe(), out=out)
    assert "RUN_DIR" not in str(info.value) and info.value.exit_status == 130
    monkeypatch.setattr(Trainer, "train_step", original)
    train(recipe(training={"epochs": 1}), out=out)
    assert [e["epoch"] for e in events(out, "epoch")] == [0]  # the old log was cleared


def test_ctrl_c_after_a_checkpoint_names_it(tmp_path):
    def stop(result):
        raise KeyboardInterrupt

    with pytest.raises(RunInterrupted, match=r"newest checkpoint is .*last\.pt.*--resume"):
        train(recipe(), out=tmp_path / "run", callbacks=[stop])


# -- --resume FILE, --out ---------------------------------------------------------------------------


def test_resume_from_a_checkpoint_file(tmp_path, monkeypatch):
    train(recipe(training={"epochs": 2, "checkpoint_every_steps": 5, "keep_checkpoints": 1}),
          out=tmp_path / "run")  # fmt: skip
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    shutil.copy(tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "loose.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunDirectoryError, match=r"not inside a run directory.*--out"):
        train(resume="loose.pt", overrides=["training.epochs=3"])
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "config.yaml").exists()
    # --resume RUN --out OTHER: the checkpoint continues in OTHER, RUN is left as it was
    train(resume=tmp_path / "run", out=tmp_path / "other", overrides=["training.epochs=3"])
    assert load_checkpoint(tmp_path / "other").progress["epoch"] == 3
    assert {p: p.read_bytes() for p in before} == before
    train(resume="loose.pt", out="from-loose", overrides=["training.epochs=3"])
    same_weights(tmp_path / "other", tmp_path / "from-loose")
    # a file inside a run's checkpoints/ continues that run, if it is the newest
    older = tmp_path / "run" / "checkpoints" / "step-000000015.pt"
    with pytest.raises(CheckpointError, match=r"older than .*last\.pt.*--out DIR"):
        train(resume=older, overrides=["training.epochs=3"])
    train(resume=tmp_path / "run" / "checkpoints" / "last.pt", overrides=["training.epochs=3"])
    same_weights(tmp_path / "other", tmp_path / "run")


def test_out_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirectoryError, match="is a file"):
        train(recipe(), out=tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"
    assert main(["train", "training.epochs=1", "--out", str(tmp_path / "f")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_resume_keeps_the_run_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(recipe(training={"epochs": 1})))
    train(str(path), out=tmp_path / "run")
    train(resume=tmp_path / "run", overrides=["training.epochs=2"])
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["name"] == "mine"


# -- stop signals ---------------------------------------------------------------------------------


def test_a_stop_signal_inside_an_epoch_checkpoints_that_step_and_resume_is_exact(
    tmp_path, monkeypatch
):
    full = train(recipe(logging={"log_every": 1}), out=tmp_path / "full")
    original, calls = Trainer.train_step, []

    def signalled(self, x, y, state):
        calls.append(1)
        if len(calls) == 11:  # epoch 2, batch 3 of 8
            signal.raise_signal(signal.SIGUSR1)
        return original(self, x, y, state)

    monkeypatch.setattr(Trainer, "train_step", signalled)
    with pytest.raises(RunPreempted, match=r"SIGUSR1 after step 11.*step-000000011\.pt") as info:
        train(recipe(logging={"log_every": 1}), out=tmp_path / "cut")
    assert info.value.exit_status == EXIT_PREEMPTED == 75
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored
    assert (
        load_checkpoint(tmp_path / "cut" / "checkpoints" / "step-000000011.pt").progress["batch"]
        == 3
    )
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = train(resume=tmp_path / "cut")
    a, b = events(tmp_path / "full", "train"), events(tmp_path / "cut", "train")
    assert [(e["step"], e["loss"], e["lr"]) for e in a] == [
        (e["step"], e["loss"], e["lr"]) for e in b
    ]
    same_weights(tmp_path / "full", tmp_path / "cut")
    assert resumed.final_top1 == full.final_top1


def test_a_stop_signal_at_an_epoch_end_stops_after_its_checkpoint(tmp_path):
    def stop(result):
        if result.epoch == 0:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(RunPreempted, match="SIGTERM") as info:
        train(recipe(), out=tmp_path / "cut", callbacks=[stop])
    assert str(tmp_path / "cut" / "checkpoints" / "last.pt") in str(info.value)
    assert load_checkpoint(tmp_path / "cut").progress["epoch"] == 1
    train(resume=tmp_path / "cut")
    train(recipe(), out=tmp_path / "full")
    same_weights(tmp_path / "full", tmp_path / "cut")


def test_a_second_signal_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    with StopSignals() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested == "SIGTERM" and exits == []
        signal.raise_signal(signal.SIGUSR1)
    assert exits == [128 + signal.SIGUSR1]


# -- one writer -----------------------------------------------------------------------------------


def test_a_run_directory_in_use_is_refused_naming_its_holder(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from bnnkit.runs.lock import RunLock
            lock = RunLock({str(run)!r}).acquire()
            print("held", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"in use by pid {holder.pid}"):
            train(recipe(), out=run)
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            train(resume=run)
    finally:
        holder.kill()
        holder.wait()
    result = train(recipe(training={"epochs": 1}), out=run)  # the kernel dropped the lock
    assert result.best_top1 > 0


def test_a_stale_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 99999999, "host": "h", "started": 0,
                                            "command": "bnnkit train"}))  # fmt: skip
    train(recipe(training={"epochs": 1}), out=run)
    assert "took over the lock of a stopped run (pid 99999999" in capsys.readouterr().err
    with RunLock(run) as lock:  # released at the end of the run
        assert lock.previous == {}


# -- faults while saving, a non-finite state ----------------------------------------------------


def test_a_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_one(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def disk_full(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 3:  # epoch 1's last.pt and best.pt are written; epoch 2's last.pt fails
            f.write(b"partial data")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    seen = []
    with pytest.raises(CheckpointWriteError, match=r"last\.pt: No space left on device") as info:
        train(recipe(), out=tmp_path / "run", callbacks=[seen.append])
    assert info.value.exit_status == 1 and "--resume" in str(info.value)
    assert [r.epoch for r in seen] == [0]  # it did not train on without a checkpoint
    monkeypatch.setattr(torch, "save", real_save)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt"]  # no temp file
    assert load_checkpoint(tmp_path / "run").progress["epoch"] == 1
    train(resume=tmp_path / "run")  # and it resumes from it
    assert load_checkpoint(tmp_path / "run").progress["epoch"] == 3


def test_a_failed_write_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(training={"epochs": 1})))

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bnnkit: error: could not write the checkpoint ")
    assert "Permission denied" in err[-1]


def test_a_non_finite_model_state_never_reaches_a_checkpoint(tmp_path, monkeypatch):
    cfg = recipe(model={"batch_norm": True}, training={"checkpoint_every_steps": 4})
    original, calls = Trainer.train_step, []

    def overflow(self, x, y, state):
        out = original(self, x, y, state)
        calls.append(1)
        if len(calls) == 10:  # the loss stays finite, a statistic overflows
            bn = next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm1d))
            bn.running_var[3] = float("inf")
        return out

    monkeypatch.setattr(Trainer, "train_step", overflow)
    with pytest.raises(NonFiniteLossError, match=r"running_var"):
        train(cfg, out=tmp_path / "run")
    for path in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        state = load_checkpoint(path).model
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")] == [
        "step-000000004.pt"
    ]
    assert (
        load_checkpoint(tmp_path / "run").progress["step"] == 8
    )  # the end of epoch 1; step 12 failed


def test_a_diverging_loss_is_warned_about(tmp_path, capsys):
    train(recipe(optimizer={"lr": 1e3}, training={"epochs": 2}), out=tmp_path / "run")
    err = capsys.readouterr().err
    assert err.count("warning: epoch") == 1 and "training is diverging" in err
    train(recipe(training={"epochs": 1}), out=tmp_path / "ok")
    assert "training is diverging" not in capsys.readouterr().err
