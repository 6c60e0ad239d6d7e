"""TensorLoader: determinism per (seed, epoch), DDP shards, batch sizes, drop_last."""

from __future__ import annotations

import pytest
import torch

from bnnkit.data import DataConfig, Loader, TensorLoader, build_data
from bnnkit.data.augment import ImageTransform


def images(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    return x, torch.arange(n)  # label = sample index, so batches reveal their indices


def loader(n: int = 50, **kw) -> TensorLoader:
    x, y = images(n)
    kw.setdefault("batch_size", 16)
    kw.setdefault("train", True)
    if kw["train"]:
        kw.setdefault("transform", ImageTransform((0.5,) * 3, (0.25,) * 3, padding=2, flip=True))
    return TensorLoader(x, y, **kw)


def epoch(ld: TensorLoader, e: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ld.set_epoch(e)
    return list(ld)


def test_implements_the_loader_protocol() -> None:
    ld = loader()
    for name in ("num_samples", "__len__", "__iter__", "set_epoch"):
        assert hasattr(ld, name), f"TensorLoader lacks Loader.{name}"
    assert {n for n in vars(Loader) if not n.startswith("_")} <= set(dir(ld))
    x, y = next(iter(ld))
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_same_seed_and_epoch_give_the_same_batches() -> None:
    a, b = epoch(loader(seed=5), 2), epoch(loader(seed=5), 2)
    assert all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def test_epoch_and_seed_change_the_order() -> None:
    ld = loader(seed=5)
    order = [torch.cat([y for _, y in epoch(ld, e)]) for e in (0, 1)]
    assert not torch.equal(order[0], order[1])
    other = torch.cat([y for _, y in epoch(loader(seed=6), 0)])
    assert not torch.equal(order[0], other)


def test_resume_sees_the_same_epoch() -> None:
    ld = loader(seed=3)
    for e in range(3):
        epoch(ld, e)
    after = epoch(ld, 3)
    fresh = epoch(loader(seed=3), 3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(after, fresh, strict=True))


def test_drop_last_and_batch_sizes() -> None:
    ld = loader(50, batch_size=16)
    batches = epoch(ld, 0)
    assert len(ld) == len(batches) == 3 and ld.num_samples == 48
    assert all(len(y) == 16 for _, y in batches)
    assert len(set(torch.cat([y for _, y in batches]).tolist())) == 48


def test_evaluation_keeps_every_sample_in_order() -> None:
    ld = loader(50, batch_size=16, train=False)
    batches = epoch(ld, 4)
    assert len(ld) == 4 and [len(y) for _, y in batches] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(50))
    x, _ = images(50)
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), x.float() / 255)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ddp_training_shards(world_size: int) -> None:
    single = epoch(loader(50, batch_size=16, seed=9), 1)
    ranks = [
        epoch(loader(50, batch_size=16, seed=9, rank=r, world_size=world_size), 1)
        for r in range(world_size)
    ]
    per = 16 // world_size
    seen = []
    for batches in ranks:
        assert len(batches) == 3 and all(len(y) == per for _, y in batches)
        seen += torch.cat([y for _, y in batches]).tolist()
    assert len(seen) == len(set(seen)) == 48  # disjoint, covering the kept samples
    # the union of the ranks' b-th batches is the single-process b-th batch, augmentation included
    for b, (x1, y1) in enumerate(single):
        torch.testing.assert_close(torch.cat([ranks[r][b][0] for r in range(world_size)]), x1)
        assert torch.equal(torch.cat([ranks[r][b][1] for r in range(world_size)]), y1)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_evaluation_shards_are_disjoint_and_covering(world_size: int) -> None:
    ys = []
    for r in range(world_size):
        ld = loader(50, batch_size=6, train=False, rank=r, world_size=world_size)
        got = torch.cat([y for _, y in epoch(ld, 0)])
        assert ld.num_samples == len(got) and len(ld) == -(-len(got) // (6 // world_size))
        ys.append(got)
    assert torch.equal(torch.cat(ys), torch.arange(50))


def test_batch_size_must_divide_by_world_size() -> None:
    with pytest.raises(ValueError, match=r"batch_size = 10 .* multiple .* \(4\)"):
        loader(batch_size=10, world_size=4)
    with pytest.raises(ValueError, match="eval_batch_size"):
        loader(batch_size=10, world_size=4, train=False)
    with pytest.raises(ValueError, match="rank"):
        loader(batch_size=8, rank=2, world_size=2)


def test_training_split_smaller_than_a_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="fewer than one global batch"):
        loader(10, batch_size=16)


def test_not_in_memory_gives_identical_batches() -> None:
    a = epoch(loader(seed=2, in_memory=True), 1)
    b = epoch(loader(seed=2, in_memory=False), 1)
    assert all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def test_float_data_passes_through() -> None:
    x = torch.randn(20, 5, dtype=torch.float64)
    ld = TensorLoader(x, torch.zeros(20, dtype=torch.int32), batch_size=4, train=False)
    xb, yb = next(iter(ld))
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    torch.testing.assert_close(xb, x[:4].float())
    with pytest.raises(ValueError, match="uint8"):
        TensorLoader(
            x, torch.zeros(20), batch_size=4, train=True, transform=ImageTransform((0,), (1,))
        )


def test_build_data_limits_and_eval_batch() -> None:
    cfg = DataConfig(
        name="synthetic", synthetic_shape=(4,), batch_size=8, eval_batch_size=6,
        train_limit=40, val_limit=20,
    )  # fmt: skip
    bundle = build_data(cfg, world_size=2, rank=1)
    assert bundle.train.num_samples == 20 and len(bundle.train) == 5
    assert bundle.val.num_samples == 10 and len(bundle.val) == 4  # 3 + 3 + 3 + 1
    assert bundle.num_classes == 10 and bundle.input_size == (4,)
