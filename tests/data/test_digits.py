"""scikit-learn's 8x8 digits: fixed split, normalization, and the missing-extra message."""

from __future__ import annotations

import sys

import pytest
import torch

from bnnkit.data import DataConfig, build_data, load_digits


def test_missing_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "bnnkit\[digits\]"'):
        load_digits()


def test_split_is_fixed_and_normalized() -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (bnnkit[digits]) is not installed")
    x_train, y_train, x_val, y_val = load_digits()
    assert x_train.shape == (1437, 64) and x_val.shape == (360, 64)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert set(y_train.tolist()) == set(range(10)) == set(y_val.tolist())
    again = load_digits()
    assert torch.equal(x_train, again[0]) and torch.equal(y_val, again[3])
    torch.testing.assert_close(x_train.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    std = x_train.std(0)
    assert ((std - 1).abs() < 1e-4).logical_or(std == 0).all()  # constant pixels stay 0
    raw = load_digits(normalize=False)[0]
    assert float(raw.min()) == 0.0 and float(raw.max()) == 1.0  # divided by 16 only


def test_bundle() -> None:
    pytest.importorskip("sklearn", reason="scikit-learn (bnnkit[digits]) is not installed")
    bundle = build_data(DataConfig(name="digits", batch_size=64), seed=0)
    assert bundle.num_classes == 10 and bundle.input_size == (64,)
    assert bundle.train.num_samples == 1408 and len(bundle.train) == 22  # 1437 // 64 batches
    assert bundle.val.num_samples == 360 and len(bundle.val) == 6
    x, y = next(iter(bundle.train))
    assert x.shape == (64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
