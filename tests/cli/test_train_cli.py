"""``bnnkit train`` / ``eval`` / ``list recipes`` end to end."""

from __future__ import annotations

import json

import pytest
import yaml

from bnnkit.cli.main import main

RECIPE = {
    "data": {"name": "synthetic", "synthetic_shape": [12], "synthetic_classes": 4,
             "synthetic_train": 128, "synthetic_val": 64, "batch_size": 32},
    "model": {"name": "mlp", "in_features": 12, "hidden": 32},
    "method": {"name": "bireal"},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 1},
    "logging": {"progress": "off", "tensorboard": False},
}  # fmt: skip


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def test_train_eval_resume(recipe_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(recipe_file), "training.epochs=1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best top-1" in printed and f"run directory: {out}" in printed
    assert main(["eval", str(out)]) == 0
    line = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert f"top-1 {summary['best_top1']:.2f}%" in line and "(64 images)" in line
    assert main(["eval", str(out), "data.val_limit=10"]) == 0
    assert "(10 images)" in capsys.readouterr().out
    assert main(["train", "--resume", str(out), "training.epochs=2"]) == 0
    epochs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e["event"] == "epoch"] == [0, 1]


def test_train_errors_exit_2(recipe_file, tmp_path, capsys):
    assert main(["train", "no/such/recipe"]) == 2
    assert "neither a file nor a shipped recipe" in capsys.readouterr().err
    assert main(["train", str(recipe_file), "training.epoch=3"]) == 2
    assert "training.epoch: not a key of training; allowed: epochs" in capsys.readouterr().err
    assert main(["train", str(recipe_file), "--resume", str(tmp_path)]) == 2
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_list_recipes(capsys):
    assert main(["list", "recipes"]) == 0
    out = capsys.readouterr().out
    assert (
        "quickstart" in out and "cifar10/resnet20_reactnet" in out and "_recu_settings" not in out
    )


def test_quickstart_default_run(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the quickstart's digits data set needs scikit-learn")
    # the shipped quickstart, shortened (its full 30-epoch time is a figure in RESULTS.md)
    assert (
        main(["train", "training.epochs=8", "logging.progress=off", "--out", str(tmp_path / "q")])
        == 0
    )
    summary = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert summary["best_top1"] > 90.0  # 10 classes: chance is 10%
    assert "reactnet" in capsys.readouterr().out
