"""Optional engine paths: TensorBoard, torch.compile (slow), CUDA AMP / channels_last (GPU)."""

from __future__ import annotations

import pytest
import torch

from bnnkit.runs import load_checkpoint, train

RECIPE = {
    "data": {"name": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_classes": 4,
             "synthetic_train": 128, "synthetic_val": 64, "batch_size": 32},
    "model": {"name": "mlp", "in_features": 192, "hidden": 32},
    "method": {"name": "reactnet"},
    "optimizer": {"name": "adam", "lr": 0.01},
    "training": {"epochs": 1},
    "logging": {"progress": "off", "tensorboard": False},
}  # fmt: skip


def with_(**sections):
    return {k: {**v, **sections.get(k, {})} for k, v in RECIPE.items()}


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra")
    train(with_(logging={"tensorboard": True}), out=tmp_path / "run")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_fp16_on_cpu_is_ignored_with_a_note_and_bf16_is_used(tmp_path, capsys):
    result = train(with_(training={"amp": "fp16"}), out=tmp_path / "run")
    assert result.final_top1 > 0
    assert (
        "amp=fp16 ignored: fp16 autocast is used on CUDA only (use bf16" in capsys.readouterr().err
    )
    train(with_(training={"amp": "bf16"}), out=tmp_path / "bf16")
    assert "amp=bf16 ignored" not in capsys.readouterr().err


@pytest.mark.slow
def test_torch_compile_run(tmp_path):
    result = train(with_(training={"compile": True}), out=tmp_path / "run")
    assert result.final_top1 > 40
    assert not any(k.startswith("_orig_mod") for k in load_checkpoint(tmp_path / "run").model)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_and_channels_last(tmp_path, amp):
    recipe = with_(training={"amp": amp, "channels_last": True, "device": "cuda", "epochs": 2})
    recipe["model"] = {"name": "resnet20"}
    recipe["data"] = {**recipe["data"], "synthetic_shape": [3, 32, 32]}
    result = train(recipe, out=tmp_path / "run")
    assert result.best_top1 > 25
    ckpt = load_checkpoint(tmp_path / "run")
    assert (ckpt.scaler is not None) == (amp == "fp16")
