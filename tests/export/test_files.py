"""save_packed / load_packed, the header, errors, and `bnnkit export` / `bnnkit predict`."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from _helpers import sample_input, trained_like
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import bnnkit
from bnnkit.cli.main import main
from bnnkit.export import ExportError, PackedConv2d, convert
from bnnkit.export.files import load_packed, read_header, save_packed, size_report


def _model(name="resnet20", method="reactnet"):
    torch.manual_seed(0)
    model = bnnkit.binarize_(bnnkit.create_model(name), bnnkit.get_method(method))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_round_trip_gives_the_same_outputs_and_header(tmp_path):
    model = _model()
    path = save_packed(model, tmp_path / "m.bnn", extra={"note": "x"})
    header = read_header(path)
    assert header["format"] == "bnnkit-packed" and header["method"] == "reactnet"
    assert header["model"] == {"name": "resnet20", "num_classes": 10, "options": {}}
    assert header["extra"] == {"note": "x"} and header["bnnkit_version"] == bnnkit.__version__
    first = header["layers"][0]
    assert first == {"name": "layers.0.conv1", "has_shift": True, "folded_bn": "layers.0.bn1",
                     "pad_value": 0.0,
                     "type": "conv2d", "in": 16, "out": 16, "kernel_size": [3, 3],
                     "stride": [1, 1], "padding": [1, 1]}  # fmt: skip
    loaded = load_packed(path, kernel="reference")
    assert isinstance(loaded.layers[0].conv1, PackedConv2d)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), convert(model, kernel="reference")(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-4)


def test_weights_are_stored_as_bits_one_thirty_second_of_float(tmp_path):
    model = _model("resnet18", "xnor")
    path = save_packed(model, tmp_path / "r18.bnn")
    tensors = load_file(str(path))
    bits = tensors["layer1.0.conv1.weight_bits"]
    assert bits.dtype == torch.int64 and bits.shape == (64, 3, 3, 1)
    assert "layer1.0.conv1.weight" not in tensors  # no float copy of a binary weight
    report = size_report(model, path)
    assert {layer["ratio"] for layer in report["layers"]} == {1 / 32}  # every C_in % 64 == 0
    assert report["ratio"] <= 0.1  # the whole file vs the float state_dict


def test_save_needs_a_known_architecture(tmp_path):
    model = _model()
    del model.model_spec
    with pytest.raises(ExportError, match="model_spec"):
        save_packed(model, tmp_path / "m.bnn")
    spec = {"name": "resnet20", "num_classes": 10, "options": {}}
    assert save_packed(model, tmp_path / "m.bnn", model_spec=spec).is_file()


def test_load_refuses_other_files_and_mismatched_tensors(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(ExportError, match="not a bnnkit packed model"):
        load_packed(plain)
    with pytest.raises(ExportError, match="no packed file"):
        load_packed(tmp_path / "missing.bnn")
    junk = tmp_path / "junk.bnn"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(ExportError, match="not a safetensors file"):
        load_packed(junk)
    path = save_packed(_model(), tmp_path / "m.bnn")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    del tensors["layers.0.conv1.weight_bits"]
    save_file(tensors, str(tmp_path / "cut.bnn"), metadata=meta)
    with pytest.raises(ExportError, match=r"layers\.0\.conv1\.weight_bits"):
        load_packed(tmp_path / "cut.bnn")
    meta2 = {**meta, "format_version": "99"}
    save_file(load_file(str(path)), str(tmp_path / "new.bnn"), metadata=meta2)
    with pytest.raises(ExportError, match="upgrade"):
        load_packed(tmp_path / "new.bnn")


def test_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = save_packed(_model(), tmp_path / "m.bnn")
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("bnnkit.export.files.save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_packed(_model("resnet20", "ste"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.bnn"]  # no temp file left


def _tiny_run(tmp_path):
    recipe = {
        "data": {"name": "synthetic", "synthetic_shape": [3, 8, 8], "synthetic_classes": 3,
                 "synthetic_train": 96, "synthetic_val": 48, "batch_size": 16},
        "model": {"name": "resnet20"},
        "method": {"name": "reactnet"},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "schedule": {"name": "constant"},
        "training": {"epochs": 2, "seed": 1},
        "logging": {"progress": "off", "tensorboard": False},
    }  # fmt: skip
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out)]) == 0
    return out


def test_cli_export_and_predict_give_the_checkpoint_accuracy(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    want = capsys.readouterr().out
    file = tmp_path / "model.bnn"
    assert main(["export", str(run), "--out", str(file)]) == 0
    report = capsys.readouterr().out
    assert "layers.0.conv1" in report and "ratio" in report and file.is_file()
    assert read_header(file)["extra"]["recipe"]["model"]["name"] == "resnet20"  # for predict
    assert main(["predict", str(file)]) == 0
    got = capsys.readouterr().out
    top1 = lambda s: s.split("top-1 ")[1].split("%")[0]  # noqa: E731
    assert top1(got) == top1(want)
    assert main(["predict", str(file), "training.epochs=3"]) == 2
    assert "data.* overrides only" in capsys.readouterr().err


def test_predict_images_per_second_leaves_out_the_first_call(tmp_path, monkeypatch):
    """numba compiles (or loads its cache) on a model's first call: not part of the figure."""
    import time

    from bnnkit.runs import evaluate as evaluate_mod

    run = _tiny_run(tmp_path)
    file = tmp_path / "model.bnn"
    assert main(["export", str(run), "--out", str(file)]) == 0
    real = evaluate_mod.load_packed

    def slow_first_call(*args, **kwargs):
        model = real(*args, **kwargs)
        forward, calls = model.forward, []

        def first_slow(x):
            if not calls:
                time.sleep(1.0)
            calls.append(1)
            return forward(x)

        model.forward = first_slow
        return model

    monkeypatch.setattr(evaluate_mod, "load_packed", slow_first_call)
    metrics = evaluate_mod.evaluate_packed(file)
    assert metrics["samples"] == 48 and metrics["images_per_s"] > 48 / 0.5


def test_pad_value_survives_the_file(tmp_path):
    model = bnnkit.binarize_(trained_like("resnet20", "reactnet"), "reactnet", pad_value=1)
    model.eval()
    path = save_packed(model, tmp_path / "m.bnn")
    assert {e["pad_value"] for e in read_header(path)["layers"]} == {1.0}
    x = sample_input("resnet20")
    with torch.no_grad():
        torch.testing.assert_close(load_packed(path)(x), model(x), rtol=1e-4, atol=1e-5)


def test_float_state_bytes_leaves_out_the_sign_history():
    """The size reports' denominator: the state_dict without the 2 bytes per binary weight of
    the sign history (``negative`` and ``flipped``, bool)."""
    from bnnkit.export.files import float_state_bytes

    model = bnnkit.binarize_(bnnkit.create_model("resnet20"), "ste")
    total = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    binary_weights = sum(layer.weight.numel() for _, layer in bnnkit.binary_layers(model))
    assert binary_weights > 0
    assert float_state_bytes(model) == total - 2 * binary_weights
    assert float_state_bytes(model) == float_state_bytes(bnnkit.create_model("resnet20"))


def _rewrite_header(path, dest, **changes):
    """``path`` with header fields changed (None removes one), tensors unchanged."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    save_file(load_file(str(path)), str(dest), metadata=meta)
    return dest


def test_the_payload_checksum_refuses_flipped_bytes(tmp_path):
    path = save_packed(_model("resnet20", "ste"), tmp_path / "m.bnn")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert meta["format_version"] == "3"
    assert meta["payload_sha256"] == hashlib.sha256(data[8 + n :]).hexdigest()  # the spec
    load_packed(path)
    damaged = bytearray(data)
    for i in (8 + n + 100, len(data) - 7):  # a weight word and the last tensor's bytes
        damaged[i] ^= 0x10
    (tmp_path / "bad.bnn").write_bytes(bytes(damaged))
    with pytest.raises(ExportError, match=r"bad\.bnn: its tensors are damaged"):
        load_packed(tmp_path / "bad.bnn")
    stripped = _rewrite_header(path, tmp_path / "nosum.bnn", payload_sha256=None)
    with pytest.raises(ExportError, match="no payload_sha256"):
        load_packed(stripped)  # a version-3 file always has one
    old = _rewrite_header(path, tmp_path / "v2.bnn", payload_sha256=None, format_version="2")
    load_packed(old)  # files of earlier versions carry none and still load


def test_a_damaged_header_names_the_file_and_the_field(tmp_path):
    path = save_packed(_model("resnet20", "ste"), tmp_path / "m.bnn")
    cases = {
        "nolayers": ({"layers": None}, r"nolayers\.bnn: the header has no 'layers' field"),
        "badjson": ({"model": "{not json"}, r"badjson\.bnn: the header's 'model' field is not valid JSON"),
        "notalist": ({"layers": '{"a": 1}'}, r"notalist\.bnn: the header's 'layers' field must be a list"),
        "nomodel": ({"model": '{"name": "resnet20"}'}, r"nomodel\.bnn: the header's 'model' field must hold"),
    }  # fmt: skip
    for name, (changes, message) in cases.items():
        bad = _rewrite_header(path, tmp_path / f"{name}.bnn", **changes)
        with pytest.raises(ExportError, match=message):
            load_packed(bad)
    with safe_open(str(path), framework="pt") as f:
        spec = json.loads(f.metadata()["model"])
    other = _rewrite_header(path, tmp_path / "other.bnn",
                            model=json.dumps({**spec, "name": "mlp", "options": {}}))  # fmt: skip
    with pytest.raises(
        ExportError, match=r"other\.bnn: the header names layer '.*', which model 'mlp'"
    ):
        load_packed(other)
