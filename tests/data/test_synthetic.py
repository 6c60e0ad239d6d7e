"""Synthetic data: fixed, float, balanced and learnable."""

from __future__ import annotations

import torch
from torch import nn

from bnnkit.data import DataConfig, build_data, make_synthetic


def test_same_data_every_time_and_shapes() -> None:
    a = make_synthetic((3, 8, 8), 4, 40, 20)
    b = make_synthetic((3, 8, 8), 4, 40, 20)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    x_train, y_train, x_val, _ = a
    assert x_train.shape == (40, 3, 8, 8) and x_val.shape == (20, 3, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert torch.equal(torch.bincount(y_train), torch.full((4,), 10))
    assert not torch.equal(x_train[:20], x_val)


def test_normalization() -> None:
    x_train, *_ = make_synthetic((16,), 3, 300, 30)
    torch.testing.assert_close(x_train.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(x_train.std(0), torch.ones(16), atol=1e-5, rtol=0)
    raw = make_synthetic((16,), 3, 300, 30, normalize=False)[0]
    assert not torch.allclose(raw.mean(0), torch.zeros(16), atol=1e-2)


def test_bundle_and_independence_from_the_run_seed() -> None:
    cfg = DataConfig(name="synthetic", synthetic_shape=(8,), synthetic_classes=5, batch_size=32)
    a, b = build_data(cfg, seed=0), build_data(cfg, seed=1)
    assert a.num_classes == 5 and a.input_size == (8,)
    assert torch.equal(a.train.x, b.train.x)  # same data set; only the order depends on seed
    a.train.set_epoch(0), b.train.set_epoch(0)
    assert not torch.equal(next(iter(a.train))[1], next(iter(b.train))[1])


def test_a_tiny_conv_net_learns_it_in_a_few_steps() -> None:
    torch.manual_seed(0)
    bundle = build_data(DataConfig(name="synthetic", batch_size=64))  # (3, 32, 32), 10 classes
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bundle.train.set_epoch(0)
    for x, y in bundle.train:  # 8 steps
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in bundle.val)
    assert correct / bundle.val.num_samples > 0.3  # chance: 0.1
