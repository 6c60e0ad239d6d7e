"""Real processes (slow; `.ci/run` runs them as their own step): a SIGTERM sent to `bnnkit
train` (exit 75, then an exact resume), a second signal, and torchrun's elastic restart after
one rank of a 2-process gloo run is killed (the restart resumes by itself from the newest
checkpoint and ends with the weights of an uninterrupted run); under torchrun a user error
on one rank is one line, not a gloo traceback from the other."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from _helpers import events

from bnnkit.runs import load_checkpoint

pytestmark = pytest.mark.slow

RECIPE = {
    "data": {"name": "synthetic", "synthetic_shape": [12], "synthetic_classes": 4,
             "synthetic_train": 8192, "synthetic_val": 64, "batch_size": 32},
    "model": {"name": "mlp", "in_features": 12, "hidden": 64, "depth": 2, "batch_norm": False},
    "method": {"name": "reactnet"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "training": {"epochs": 3, "seed": 1},
    "logging": {"log_every": 1, "progress": "off", "tensorboard": False},
}  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _recipe_file(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run has logged ``step`` (it is mid-training), or fail."""
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        log = run / "metrics.jsonl"
        if log.is_file():
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
            if any(e.get("step", 0) >= step for e in lines):
                return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnnkit", "train", *args]


def test_sigterm_checkpoints_exits_75_and_resume_is_exact(tmp_path):
    path = _recipe_file(tmp_path, RECIPE)
    full = subprocess.run(_cli(str(path), "--out", str(tmp_path / "full")), env=ENV,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]
    proc = subprocess.Popen(_cli(str(path), "--out", str(tmp_path / "cut")), env=ENV,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_step(tmp_path / "cut", 300, proc)  # inside epoch 2 (256 steps per epoch)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert "SIGTERM received: checkpointing after this step" in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("bnnkit: stopped: stopped on SIGTERM after step ")
    step = int(line.split("after step ")[1].split()[0])
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoints" / f"step-{step:09d}.pt")
    assert ckpt.progress["step"] == step and ckpt.progress["batch"] == step - 256
    again = subprocess.run(_cli("--resume", str(tmp_path / "cut")), env=ENV,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = events(tmp_path / "full", "train"), events(tmp_path / "cut", "train")
    assert [(e["step"], e["loss"], e["lr"]) for e in a] == [
        (e["step"], e["loss"], e["lr"]) for e in b
    ]
    wa, wb = load_checkpoint(tmp_path / "full").model, load_checkpoint(tmp_path / "cut").model
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_kill_9_at_random_moments_then_resume_ends_as_an_uninterrupted_run(tmp_path):
    recipe = {**RECIPE, "training": {**RECIPE["training"], "checkpoint_every_steps": 40}}
    path = _recipe_file(tmp_path, recipe)
    full = subprocess.run(_cli(str(path), "--out", str(tmp_path / "full")), env=ENV,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert full.returncode == 0, full.stderr[-3000:]
    rng = random.Random(0)
    again = _cli(str(path), "--out", str(tmp_path / "cut"), "training.auto_resume=true")
    log = tmp_path / "cut" / "metrics.jsonl"
    targets = sorted(rng.sample(range(5, 760), 6))  # steps at which to kill, across the run
    reached = []
    for target in [None, *targets]:  # None: during start-up, before any checkpoint
        proc = subprocess.Popen(again, env=ENV, stderr=subprocess.PIPE, text=True)
        if target is None:
            time.sleep(0.5)
        else:  # kill -9 as soon as the step is logged: inside a step or a checkpoint write
            _wait_for_step(tmp_path / "cut", target, proc)
        proc.kill()
        proc.communicate()
        steps = (
            [json.loads(x)["step"] for x in log.read_text().splitlines()] if log.exists() else []
        )
        reached.append(max(steps, default=0))
    assert len(set(reached[1:])) >= 4 and max(reached) < 768, reached  # killed at many places
    done = subprocess.run(again, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = events(tmp_path / "full", "train"), events(tmp_path / "cut", "train")
    assert [(e["step"], e["loss"]) for e in a] == [(e["step"], e["loss"]) for e in b]
    wa, wb = load_checkpoint(tmp_path / "full").model, load_checkpoint(tmp_path / "cut").model
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not list((tmp_path / "cut").rglob(".*.tmp"))


def test_a_second_signal_exits_at_once(tmp_path):
    path = _recipe_file(tmp_path, RECIPE)
    proc = subprocess.Popen(_cli(str(path), "--out", str(tmp_path / "run")), env=ENV,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_step(tmp_path / "run", 10, proc)
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGUSR1)  # before the step ends
    _, err = proc.communicate(timeout=120)
    # both pending at once: Python runs their handlers in signal-number order
    assert proc.returncode in (128 + signal.SIGUSR1, 128 + signal.SIGTERM), err[-3000:]
    assert "second signal (" in err and "exiting now, without a checkpoint" in err
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(path: Path, out: Path, *extra: str) -> list[str]:
    # the c10d rendezvous (torchrun --standalone's): restarts form a new group on it
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
            "--rdzv-id=bnnkit-test", *extra, "-m", "bnnkit", "train", str(path),
            "--out", str(out)]  # fmt: skip


def _rank_pid(rank: int, parent: int) -> int | None:
    """The pid of the torchrun worker with ``RANK=rank`` under the agent ``parent``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_an_elastic_restart_resumes_by_itself_and_ends_with_the_uninterrupted_weights(tmp_path):
    recipe = {**RECIPE, "training": {**RECIPE["training"], "checkpoint_every_steps": 50}}
    path = _recipe_file(tmp_path, recipe)
    whole = subprocess.run(_torchrun(path, tmp_path / "whole"), env=ENV, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    proc = subprocess.Popen(_torchrun(path, tmp_path / "two", "--max-restarts=1"), env=ENV,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_step(tmp_path / "two", 160, proc)  # inside epoch 2, after step 150's checkpoint
    victim = _rank_pid(1, proc.pid)
    assert victim is not None, "rank 1 not found under the torchrun agent"
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    assert "resuming automatically from" in err  # the restart, without --resume
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "two")
    assert b.progress["epoch"] == 3 and a.model.keys() == b.model.keys()
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)  # bit for bit
    la, lb = events(tmp_path / "whole", "train"), events(tmp_path / "two", "train")
    assert [(e["step"], e["loss"]) for e in la] == [(e["step"], e["loss"]) for e in lb]


def test_a_user_error_on_rank_0_is_one_line_under_torchrun(tmp_path):
    path = _recipe_file(tmp_path, {**RECIPE, "training": {"epochs": 1}})
    (tmp_path / "file").write_text("x")  # --out naming a file: only rank 0 looks at it
    proc = subprocess.run(_torchrun(path, tmp_path / "file"), env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("bnnkit:")]
    assert lines == [f"bnnkit: error: --out {tmp_path / 'file'} is a file, not a folder; "
                     "choose another --out"], proc.stderr[-3000:]  # fmt: skip
    assert "Connection reset by peer" not in proc.stderr
    assert "Connection closed by peer" not in proc.stderr


def test_a_nan_under_torchrun_is_printed_once(tmp_path):
    recipe = {
        **RECIPE,
        "method": {"name": "float"},
        "training": {"epochs": 1},
        "optimizer": {"name": "sgd", "lr": 1e38, "momentum": 0.9},
    }  # overflows at step 2
    path = _recipe_file(tmp_path, recipe)
    proc = subprocess.run(_torchrun(path, tmp_path / "nan"), env=ENV, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.startswith("bnnkit: error:")]
    assert len(lines) == 1 and "NaN or inf" in lines[0], proc.stderr[-3000:]
