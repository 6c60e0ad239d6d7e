"""The checkpoint format (one dataclass, format version 2) and checkpoints written before it.

``tests/fixtures/v1-<method>.pt`` are ``last.pt`` files written by bnnkit before issue 12
(format 1: one ``method_state`` module per layer, ReBNN's ``prev_sign``, OvSW's float
``weight_prev``) after epoch 1 of 2; ``v1-expected.json`` holds the per-step losses of the same
runs done without interruption by that bnnkit (``tests/fixtures/make_v1_checkpoints.py``).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from _helpers import events

import bnnkit
from bnnkit.runs import FORMAT_VERSION, Checkpoint, CheckpointError, load_checkpoint, train

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EXPECTED = json.loads((FIXTURES / "v1-expected.json").read_text())


def _v1_run(tmp_path: Path, name: str) -> Path:
    run = tmp_path / name
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / f"v1-{name}.pt", run / "checkpoints" / "last.pt")
    return run


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_format_1_checkpoint_loads_with_its_state_renamed(name):
    raw = torch.load(FIXTURES / f"v1-{name}.pt", weights_only=True)
    assert raw["format_version"] == 1
    ckpt = load_checkpoint(FIXTURES / f"v1-{name}.pt")
    assert ckpt.upgraded_from == 1 and ckpt.progress["epoch"] == 1
    old_state = [k for k in raw["model"] if ".method_state." in k]
    for key in old_state:
        layer, buf = key.split(".method_state.")
        if buf in ("prev_sign", "weight_prev", "primed"):  # replaced by the sign history
            assert not any(
                k.startswith(f"{layer}.method_state.") and k.endswith(buf) for k in ckpt.model
            )
        else:
            assert torch.equal(ckpt.model[f"{layer}.method_state.{name}.{buf}"], raw["model"][key])
    assert (name != "reactnet") == bool(old_state)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_resuming_a_format_1_run_continues_its_curve(tmp_path, name):
    """Epoch 2 of the resumed old checkpoint has the losses of the old uninterrupted run."""
    run = _v1_run(tmp_path, name)
    result = train(resume=run)
    losses = [e["loss"] for e in events(run, "train")]
    assert len(losses) == 4 and math.isfinite(result.final_top1)  # the 4 steps of epoch 2
    assert losses == pytest.approx(EXPECTED[name][4:], rel=1e-5, abs=1e-6)
    assert load_checkpoint(run).upgraded_from is None  # what it writes now is format 2


def test_ovsw_format_1_weight_prev_becomes_the_last_steps_flips():
    raw = torch.load(FIXTURES / "v1-ovsw.pt", weights_only=True)["model"]
    ckpt = load_checkpoint(FIXTURES / "v1-ovsw.pt")
    model = bnnkit.create_model("mlp", in_features=12, hidden=32, depth=2, num_classes=4)
    bnnkit.binarize_(model, bnnkit.get_method(ckpt.method))
    ckpt.load_model(model, "v1-ovsw.pt")
    for name, layer in bnnkit.binary_layers(model):
        w, prev = raw[f"{name}.weight"], raw[f"{name}.method_state.weight_prev"]
        flips = (w < 0) != (prev < 0)
        assert flips.any()  # the fixture's last step flipped some signs
        assert torch.equal(layer.sign_history.flipped, flips)
        assert torch.equal(layer.sign_history.negative, w < 0)


def _checkpoint() -> Checkpoint:
    return Checkpoint(recipe={"method": "ste"}, config={}, stage_index=0, stage_name="s",
                      model_spec={"name": "mlp", "options": {}, "num_classes": 10},
                      method={"name": "ste", "clip_value": 1.0}, model={"w": torch.ones(2)},
                      optimizer={}, progress={"epoch": 1, "step": 3}, rng={})  # fmt: skip


def test_the_format_round_trips_and_states_its_version(tmp_path):
    path = _checkpoint().save(tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "bnnkit-checkpoint" and raw["format_version"] == FORMAT_VERSION == 3
    back, want = load_checkpoint(path), _checkpoint()
    assert torch.equal(back.model["w"], want.model["w"]) and back.upgraded_from is None
    assert {**vars(back), "model": None} == {**vars(want), "model": None}


def test_a_newer_format_is_refused_with_what_to_do(tmp_path):
    data = _checkpoint().to_dict() | {"format_version": FORMAT_VERSION + 1, "bnnkit_version": "9.0"}
    torch.save(data, tmp_path / "new.pt")
    with pytest.raises(
        CheckpointError, match=r"format 4, written by a newer bnnkit \(9\.0\).*upgrade bnnkit"
    ):
        load_checkpoint(tmp_path / "new.pt")


def test_foreign_and_incomplete_files_are_refused(tmp_path):
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a bnnkit checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    data = _checkpoint().to_dict()
    del data["optimizer"]
    torch.save(data, tmp_path / "cut.pt")
    with pytest.raises(
        CheckpointError, match=r"not a complete bnnkit checkpoint \(missing \['optimizer'\]\)"
    ):
        load_checkpoint(tmp_path / "cut.pt")


def test_a_format_2_checkpoint_resumes_as_it_did(tmp_path):
    """Format 2 (epoch-end checkpoints only): no progress.batch / partial, and the trackers'
    state without their running sums (zero at an epoch end): it loads and continues."""
    recipe = {
        "data": {"name": "synthetic", "synthetic_shape": [12], "synthetic_classes": 4,
                 "synthetic_train": 128, "synthetic_val": 32, "batch_size": 32},
        "model": {"name": "mlp", "in_features": 12, "hidden": 16, "depth": 2},
        "method": {"name": "recu"},
        "training": {"epochs": 2, "seed": 0},
        "logging": {"progress": "off", "tensorboard": False},
    }  # fmt: skip
    train(recipe, out=tmp_path / "full")
    train({**recipe, "training": {"epochs": 1, "seed": 0}}, out=tmp_path / "old")
    path = tmp_path / "old" / "checkpoints" / "last.pt"
    data = torch.load(path, weights_only=True)
    sums = ("win_sums", "win_counts", "ep_sums", "ep_counts")
    assert set(sums) <= set(data["dynamics"]) and "batch" in data["progress"]  # format 3 has them
    data["format_version"] = 2
    data["progress"] = {k: v for k, v in data["progress"].items() if k not in ("batch", "partial")}
    data["dynamics"] = {k: v for k, v in data["dynamics"].items() if k not in sums}
    torch.save(data, path)
    assert load_checkpoint(path).upgraded_from is None
    train(resume=tmp_path / "old", overrides=["training.epochs=2"])
    a, b = load_checkpoint(tmp_path / "full").model, load_checkpoint(tmp_path / "old").model
    assert all(torch.equal(a[k], b[k]) for k in a)
