"""The engine end to end on CPU: run directory, resume, NaN stop, stages, KD, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from _helpers import SYNTHETIC_MLP, events, merged
from torch import nn

import bnnkit
from bnnkit.cli.main import main
from bnnkit.runs import CheckpointError, load_checkpoint, model_from_checkpoint, train
from bnnkit.runs.checkpoint import Checkpoint, load_model_state, load_stage_init
from bnnkit.runs.run import RunInterrupted
from bnnkit.runs.stages import TeacherError
from bnnkit.training import NonFiniteLossError

BASE = SYNTHETIC_MLP


def recipe(**sections):
    return merged(BASE, **sections)


def test_run_directory_contents(tmp_path):
    result = train(recipe(), out=tmp_path / "run")
    run = tmp_path / "run"
    assert result.run_dir == run
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "metrics.jsonl",
        "checkpoints",
        "summary.json",
    }
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["versions"]["bnnkit"] == bnnkit.__version__ and "git" in config
    assert config["stages"][0]["method"] == {"name": "reactnet", "weights": "binary"}
    train_events = events(run, "train")
    assert train_events and all(
        {"step", "epoch", "loss", "lr", "images_per_s"} <= set(e) for e in train_events
    )
    epochs = events(run, "epoch")
    assert [e["epoch"] for e in epochs] == [0, 1, 2] and all(
        "top1" in e and "top5" in e for e in epochs
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_top1"] == max(e["top1"] for e in epochs)
    assert summary["final_top1"] == epochs[-1]["top1"] == result.final_top1
    assert result.best_top1 > 50  # 4 classes: chance is 25%
    ckpt = load_checkpoint(run)
    assert (
        ckpt.progress["epoch"] == 3
        and ckpt.config == load_checkpoint(run / "checkpoints" / "best.pt").config
    )


def test_existing_run_directory_is_not_overwritten(tmp_path):
    train(recipe(training={"epochs": 1}), out=tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train(recipe(training={"epochs": 1}), out=tmp_path / "run")


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one_step_for_step(tmp_path):
    full = train(recipe(), out=tmp_path / "full")

    def stop_after_two(result):
        if result.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        train(recipe(), out=tmp_path / "cut", callbacks=[stop_after_two])
    assert load_checkpoint(tmp_path / "cut").progress["epoch"] == 2
    resumed = train(resume=tmp_path / "cut")
    a, b = events(tmp_path / "full", "train"), events(tmp_path / "cut", "train")
    assert [(e["step"], e["loss"], e["lr"]) for e in a] == [
        (e["step"], e["loss"], e["lr"]) for e in b
    ]
    assert [e["top1"] for e in events(tmp_path / "full", "epoch")] == [
        e["top1"] for e in events(tmp_path / "cut", "epoch")
    ]
    wa, wb = load_checkpoint(tmp_path / "full").model, load_checkpoint(tmp_path / "cut").model
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.final_top1 == full.final_top1


class NaNAfter(nn.Module):
    """A KD teacher that starts returning NaN after ``n`` calls."""

    def __init__(self, n: int, classes: int = 4) -> None:
        super().__init__()
        self.n, self.calls, self.classes = n, 0, classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        out = torch.zeros(len(x), self.classes)
        return out + float("nan") if self.calls > self.n else out


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    # 8 steps per epoch: NaN from step 12 (epoch 2)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2: the loss became NaN or infinite"):
        train(recipe(), out=tmp_path / "run", teacher=NaNAfter(11))
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.progress["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt.model.values() if v.is_floating_point())


def test_nan_stop_exits_1_from_the_cli(tmp_path, capsys, monkeypatch):
    from bnnkit.cli.main import main
    from bnnkit.training import losses

    monkeypatch.setattr(
        losses.TaskLoss, "forward", lambda self, out, y, x: out.sum() * float("inf")
    )
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(training={"epochs": 2})))
    code = main(["train", str(path), "--out", str(tmp_path / "run")])
    assert code == 1 and "NaN or infinite" in capsys.readouterr().err


def two_stage(**kw):
    return recipe(stages=[
        {"name": "step1", "method": {"name": "reactnet", "weights": "float"}, "training": {"epochs": 2}},
        {"name": "step2", "method": {"name": "reactnet"}, "training": {"epochs": 2}, "optimizer": {"weight_decay": 0.0}},
    ], **kw)  # fmt: skip


def test_two_stage_run(tmp_path):
    result = train(two_stage(), out=tmp_path / "run")
    assert [s["stage"] for s in result.stages] == ["step1", "step2"]
    files = {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert files == {"last.pt", "best.pt", "step1-best.pt"}
    assert (
        load_checkpoint(tmp_path / "run" / "checkpoints" / "step1-best.pt").method["weights"]
        == "float"
    )
    stages = [e["stage"] for e in events(tmp_path / "run", "epoch")]
    assert stages == ["step1", "step1", "step2", "step2"]


def test_stage_two_starts_from_stage_one_weights_and_fails_loudly_without_them():
    step1 = bnnkit.binarize_(
        bnnkit.create_model("resnet20"), bnnkit.get_method("reactnet", weights="float")
    )
    with torch.no_grad():
        for p in step1.parameters():
            p.add_(torch.randn_like(p))
    state = step1.state_dict()
    step2 = bnnkit.binarize_(bnnkit.create_model("resnet20"), "reactnet")
    assert load_stage_init(step2, state, "step1") == []
    assert all(torch.equal(step2.state_dict()[k], v) for k, v in state.items())
    broken = {k: v for k, v in state.items() if k != "layers.4.conv2.weight"}
    with pytest.raises(
        CheckpointError, match=r"layers\.4\.conv2\.weight.*Binary-layer weights must come"
    ):
        load_stage_init(
            bnnkit.binarize_(bnnkit.create_model("resnet20"), "reactnet"), broken, "step1"
        )
    # a parameter the new method adds (here a learnable scale) may be missing: it stays fresh
    learnable = bnnkit.create_model("resnet20")
    bnnkit.binarize_(learnable, "reactnet")
    for _, layer in bnnkit.binary_layers(learnable):
        layer.scale = bnnkit.binarize.LearnableScale(layer.out_channels)
    added = load_stage_init(learnable, state, "step1")
    assert len(added) == 18 and all(k.endswith("scale.alpha") for k in added)


def test_checkpoint_of_another_model_lists_the_mismatched_keys(tmp_path):
    train(recipe(training={"epochs": 1}), out=tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run")
    other = bnnkit.binarize_(
        bnnkit.create_model("mlp", in_features=12, hidden=16, num_classes=4), "reactnet"
    )
    with pytest.raises(
        # 19 parameters and buffers, and the 2 sign-history buffers of each of the 2 binary layers
        CheckpointError,
        match=r"shape mismatch \(23\): .*body\.0\.weight \(32, 32\) vs \(16, 16\)",
    ):
        load_model_state(other, ckpt.model, "that checkpoint")
    vgg = bnnkit.binarize_(bnnkit.create_model("vgg_small"), "reactnet")
    with pytest.raises(
        CheckpointError,
        # 41 parameters and buffers plus 2 sign-history buffers for each of vgg_small's 5
        # binary layers; 21 + 2 x 2 of the MLP's
        match=r"missing in the checkpoint \(51\): .*conv0\.weight.*not in the model \(25\): bn_in\.bias",
    ):
        load_model_state(vgg, ckpt.model, "that checkpoint")


def _checkpoint(stage_name: str) -> Checkpoint:
    return Checkpoint(recipe={}, config={}, stage_index=0, stage_name=stage_name, model_spec={},
                      method={"name": "ste"}, model={}, optimizer={}, progress={}, rng={})  # fmt: skip


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    _checkpoint("old").save(path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _checkpoint("new").save(path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["stage_name"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a bnnkit checkpoint") as info:
        load_checkpoint(tmp_path / "x.pt")
    text = str(info.value)  # torch's own advice (load unsafely, file an issue) is not passed on
    assert "not a torch checkpoint" in text and "file an issue" not in text
    assert "arbitrary code" not in text and "do not load it with pickle" in text
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "empty.pt")
    good = tmp_path / "good.pt"
    train(recipe(training={"epochs": 1}), out=tmp_path / "run")
    data = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    good.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut short"):
        load_checkpoint(good)

    class Code:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"model": Code()}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match=r"refers to Python code \(.*print\)"):
        load_checkpoint(tmp_path / "code.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="not a bnnkit checkpoint"):
        load_checkpoint(tmp_path / "y.pt")


def test_an_incompatible_kd_teacher_is_refused_before_training(tmp_path):
    other = tmp_path / "other"  # a teacher trained on 6 features and 3 classes
    train(merged(BASE, data={"synthetic_shape": [6], "synthetic_classes": 3},
                 model={"in_features": 6}, method={"name": "float"}, training={"epochs": 1}),
          out=other)  # fmt: skip
    with pytest.raises(
        TeacherError, match=r"kd\.teacher does not take this data's inputs \(shape \[12\]\)"
    ):
        train(recipe(kd={"teacher": str(other)}), out=tmp_path / "a")
    assert events(tmp_path / "a", "train") == []  # refused before the first step
    with pytest.raises(TeacherError, match=r"outputs of shape \[2, 3\].*needs \[2, 4\]"):
        train(recipe(), out=tmp_path / "b", teacher=nn.Linear(12, 3))
    assert (
        main(["train", "training.epochs=1", f"kd.teacher={other}", "--out", str(tmp_path / "c")])
        == 2
    )


def test_kd_teacher_from_a_checkpoint_and_from_a_module(tmp_path):
    teacher_run = tmp_path / "teacher"
    train(recipe(method={"name": "float"}, training={"epochs": 2}), out=teacher_run)
    teacher = model_from_checkpoint(load_checkpoint(teacher_run))
    x = torch.randn(5, 12)
    assert teacher(x).shape == (5, 4)
    train(recipe(kd={"teacher": str(teacher_run)}, training={"epochs": 1}), out=tmp_path / "a")
    train(recipe(training={"epochs": 1}), out=tmp_path / "b", teacher=teacher)
    la, lb = events(tmp_path / "a", "train"), events(tmp_path / "b", "train")
    assert [e["loss"] for e in la] == pytest.approx([e["loss"] for e in lb])
    ce = events(tmp_path / "a", "train")[0]["loss"]
    plain = train(recipe(training={"epochs": 1}), out=tmp_path / "c")
    assert plain.run_dir and ce != events(tmp_path / "c", "train")[0]["loss"]


def test_per_step_schedule_and_label_smoothing_and_clipping_run(tmp_path):
    result = train(
        recipe(
            schedule={"name": "linear", "per_step": True},
            training={"epochs": 2, "label_smoothing": 0.1, "grad_clip": 1.0},
        ),
        out=tmp_path / "run",
    )
    lrs = [e["lr"] for e in events(tmp_path / "run", "train")]
    assert len(set(lrs)) == len(lrs)  # changes within epochs
    assert math.isfinite(result.final_top1)


def test_resume_at_a_stage_boundary_matches_the_uninterrupted_run(tmp_path):
    stages = [
        {
            "name": "step1",
            "method": {"name": "reactnet", "weights": "float"},
            "training": {"epochs": 1},
        },
        {
            "name": "step2",
            "method": {"name": "recu", "input_bias": True},
            "training": {"epochs": 1},
        },
    ]  # ReCU's alpha is drawn U[0, 1) when stage 2 is built: the RNG stream must continue
    train(recipe(stages=stages), out=tmp_path / "full")

    def stop_after_step1(result):
        if result.stage == "step1":
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        train(recipe(stages=stages), out=tmp_path / "cut", callbacks=[stop_after_step1])
    train(resume=tmp_path / "cut")
    a, b = load_checkpoint(tmp_path / "full").model, load_checkpoint(tmp_path / "cut").model
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = events(tmp_path / "full", "train"), events(tmp_path / "cut", "train")
    assert [e["loss"] for e in la] == [e["loss"] for e in lb]


def test_a_run_trained_with_pad_value_keeps_it_in_its_checkpoint(tmp_path):
    conv = {**recipe(training={"epochs": 1}), "model": {"name": "resnet20", "pad_value": 1}}
    conv["data"] = {**BASE["data"], "synthetic_shape": [3, 8, 8]}
    train(conv, out=tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.model_spec["pad_value"] == 1.0 and ckpt.config["model"]["pad_value"] == 1.0
    model = model_from_checkpoint(ckpt)
    assert {m.pad_value for _, m in bnnkit.binary_layers(model)} == {1.0}
