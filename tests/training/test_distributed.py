"""torchrun + DDP on CPU (gloo), two processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from bnnkit.runs import load_checkpoint, train
from bnnkit.training import distributed

RECIPE = {
    "data": {"name": "synthetic", "synthetic_shape": [12], "synthetic_classes": 4,
             "synthetic_train": 256, "synthetic_val": 60, "batch_size": 32},
    "model": {"name": "mlp", "in_features": 12, "hidden": 32, "depth": 2, "batch_norm": False},
    "method": {"name": "reactnet"},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "training": {"epochs": 2, "seed": 1},
    "logging": {"log_every": 4, "progress": "off", "tensorboard": False},
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(tmp_path, recipe: dict, out, nproc: int = 2) -> subprocess.CompletedProcess:
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={_free_port()}", "-m", "bnnkit", "train", str(path), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_two_processes_give_the_same_weights_as_one_with_the_same_global_batch(tmp_path):
    single = train(RECIPE, out=tmp_path / "one")
    proc = torchrun(tmp_path, RECIPE, tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "one").model, load_checkpoint(tmp_path / "two").model
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # rank 0 alone logs: the same events as the single run, once each
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    one_lines = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [json.loads(x)["step"] for x in one_lines]
    epochs = [json.loads(x) for x in lines if json.loads(x)["event"] == "epoch"]
    assert epochs[-1]["top1"] == pytest.approx(single.final_top1)  # sharded eval reduces exactly
    assert "2 process(es)" in proc.stderr


def test_two_processes_with_batch_norm_complete(tmp_path):
    recipe = {**RECIPE, "model": {**RECIPE["model"], "batch_norm": True},
              "training": {"epochs": 1, "sync_bn": True}}  # fmt: skip
    proc = torchrun(tmp_path, recipe, tmp_path / "bn")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "bn" / "checkpoints" / "last.pt").is_file()
    assert "run directory" in proc.stdout


def test_batch_not_divisible_by_processes_is_a_clear_error(tmp_path):
    recipe = {**RECIPE, "data": {**RECIPE["data"], "batch_size": 33}, "training": {"epochs": 1}}
    proc = torchrun(tmp_path, recipe, tmp_path / "odd")
    assert proc.returncode != 0
    assert "data.batch_size" in proc.stderr and "33" in proc.stderr


class _FakeGroup:
    """Stands in for ``torch.distributed`` to record what :func:`shutdown` calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def is_initialized(self) -> bool:
        return True

    def barrier(self) -> None:
        self.calls.append("barrier")

    def destroy_process_group(self) -> None:
        self.calls.append("destroy")


@pytest.mark.parametrize(("completed", "expected"), [(True, ["barrier", "destroy"]), (False, ["destroy"])])  # fmt: skip
def test_shutdown_meets_at_a_barrier_only_after_a_completed_run(monkeypatch, completed, expected):
    # the barrier keeps a rank that finished early from exiting while gloo still releases its
    # last all-reduce (an abort at interpreter exit); after a failure it could wait forever
    fake = _FakeGroup()
    monkeypatch.setattr(distributed, "td", fake)
    distributed.shutdown(distributed.Dist(rank=1, world_size=2), completed=completed)
    assert fake.calls == expected


def test_shutdown_of_a_single_process_touches_no_group(monkeypatch):
    fake = _FakeGroup()
    monkeypatch.setattr(distributed, "td", fake)
    distributed.shutdown(distributed.Dist(), completed=True)
    assert fake.calls == []


def test_process_group_leaves_completed_after_a_normal_block(monkeypatch):
    fake = _FakeGroup()
    monkeypatch.setattr(distributed, "td", fake)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with distributed.process_group("cpu") as dist:
        assert (dist.rank, dist.world_size) == (1, 2)
        assert fake.calls == []
    assert fake.calls == ["barrier", "destroy"]


def test_process_group_leaves_without_a_barrier_when_the_block_raises(monkeypatch):
    fake = _FakeGroup()
    monkeypatch.setattr(distributed, "td", fake)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="boom"), distributed.process_group("cpu"):
        raise RuntimeError("boom")
    assert fake.calls == ["destroy"]
