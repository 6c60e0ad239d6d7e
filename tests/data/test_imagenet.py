"""ImageNet folder pipeline on a small generated folder of JPEG/PNG files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL", reason="Pillow is not installed (pip install 'bnnkit[imagenet]')")
from PIL import Image

from bnnkit.data import transforms as T
from bnnkit.data.config import DataConfig
from bnnkit.data.files import DataCorruptError, DataNotFoundError
from bnnkit.data.imagenet import build_imagenet

CLASSES = ("ant", "bee", "cat")
SIZES = ((40, 60), (80, 50), (64, 64), (45, 70), (90, 55), (50, 50))  # (H, W)
NAMES = ("a.JPEG", "b.jpg", "c.png", "d.JPEG", "e.jpeg", "f.JPG")
RATIO = (3 / 4, 4 / 3)


def make_folder(root: Path, classes: tuple[str, ...] = CLASSES, val_classes=None) -> Path:
    """``root/{train,val}/<class>/`` with 6 images of varied sizes each (and a stray .txt)."""
    rng = np.random.default_rng(0)
    for split, names in (("train", classes), ("val", val_classes or classes)):
        for c in names:
            folder = root / split / c
            folder.mkdir(parents=True)
            (folder / "notes.txt").write_text("not an image")
            for (h, w), name in zip(SIZES, NAMES, strict=True):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / name)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("imagenet"))


def config(root: Path, **kw) -> DataConfig:
    base = dict(name="imagenet", root=str(root), batch_size=6, workers=0, image_size=32)
    return DataConfig(**{**base, **kw})


def epoch_batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_shapes_dtypes_and_class_index(folder: Path) -> None:
    bundle = build_imagenet(config(folder, eval_batch_size=4), device="cpu")
    assert bundle.name == "imagenet" and bundle.num_classes == 3
    assert bundle.input_size == (3, 32, 32)
    assert bundle.train.num_samples == 18 and len(bundle.train) == 3
    assert bundle.val.num_samples == 18 and len(bundle.val) == 5  # 4+4+4+4+2, not dropped
    x, y = next(iter(bundle.train))
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    labels = torch.cat([y for _, y in bundle.val])
    assert labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6  # sorted class folders, sorted files
    assert bundle.val.dataset.path(7).endswith("bee/b.jpg")


def test_val_pixels_by_hand(folder: Path) -> None:
    bundle = build_imagenet(config(folder, normalize="imagenet", eval_batch_size=18), device="cpu")
    x, _ = next(iter(bundle.val))
    with Image.open(folder / "val" / "ant" / "a.JPEG") as img:  # 60x40 -> 55x37 -> crop 32
        resized = img.convert("RGB").resize((55, 37), Image.Resampling.BILINEAR)
    crop = np.asarray(resized)[2:34, 12:44].astype(np.float64) / 255
    expected = (crop - np.array(T.IMAGENET_MEAN)) / np.array(T.IMAGENET_STD)
    np.testing.assert_allclose(x[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_determinism_across_workers_and_epochs(folder: Path) -> None:
    kw = dict(lighting=0.1, lighting_space="tensor", rrc_scale=(0.08, 1.25))
    serial = build_imagenet(config(folder, **kw), device="cpu", seed=3).train
    parallel = build_imagenet(config(folder, workers=2, **kw), device="cpu", seed=3).train
    for epoch in (0, 1):
        a, b = epoch_batches(serial, epoch), epoch_batches(parallel, epoch)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    e0, e1 = epoch_batches(serial, 0), epoch_batches(serial, 1)
    assert not torch.equal(torch.cat([x for x, _ in e0]), torch.cat([x for x, _ in e1]))
    other_seed = build_imagenet(config(folder, **kw), device="cpu", seed=4).train
    assert not torch.equal(e0[0][0], epoch_batches(other_seed, 0)[0][0])


def draws_after_crop(seed: int, epoch: int, index: int, size: tuple[int, int], scale):
    """The sample's generator advanced past its crop draws, as the dataset uses it."""
    rng = np.random.default_rng([seed, 1, epoch, index])
    T.random_resized_crop_params(*size, scale, RATIO, rng)
    return rng


def test_tensor_lighting_offset_in_pipeline(folder: Path) -> None:
    cfg = config(folder, lighting=0.1, lighting_space="tensor", flip=False, normalize="none")
    loader = build_imagenet(cfg, device="cpu", seed=2).train
    keys = list(loader.sampler)
    x, _ = next(iter(loader))
    for row, (index, epoch) in enumerate(keys[:6]):
        u8, offset, _ = loader.dataset[(index, epoch)]
        rng = draws_after_crop(2, epoch, index, SIZES[index % 6], cfg.rrc_scale)
        expected = T.lighting_offset(0.1, rng)
        np.testing.assert_allclose(offset.numpy(), expected, atol=1e-6)
        by_hand = u8.float() / 255 + torch.tensor(expected, dtype=torch.float32)[:, None, None]
        torch.testing.assert_close(x[row], by_hand)


def test_pil_lighting_in_pipeline(folder: Path) -> None:
    base = config(folder, flip=False, normalize="none")
    plain = build_imagenet(base, device="cpu", seed=2).train
    lit_cfg = config(folder, flip=False, normalize="none", lighting=20.0, lighting_space="pil")
    lit = build_imagenet(lit_cfg, device="cpu", seed=2).train
    index, epoch = next(iter(lit.sampler))
    u8_plain, _, _ = plain.dataset[(index, epoch)]
    u8_lit, offset, _ = lit.dataset[(index, epoch)]
    assert not offset.any()  # nothing left to add on the device
    rng = draws_after_crop(2, epoch, index, SIZES[index % 6], base.rrc_scale)
    delta = T.lighting_offset(20.0, rng)  # pixel units
    expected = T.lighting_uint8(u8_plain.permute(1, 2, 0).numpy(), delta)
    assert np.array_equal(u8_lit.permute(1, 2, 0).numpy(), expected)


def test_flip_in_pipeline(folder: Path) -> None:
    on = build_imagenet(config(folder, flip=True), device="cpu").train
    off = build_imagenet(config(folder, flip=False), device="cpu").train
    flipped = 0
    for index, epoch in on.sampler:
        a, b = on.dataset[(index, epoch)][0], off.dataset[(index, epoch)][0]
        if not torch.equal(a, b):
            assert torch.equal(a, b.flip(-1))
            flipped += 1
    assert 0 < flipped < 18


def test_no_augment_uses_val_transform(folder: Path) -> None:
    bundle = build_imagenet(config(folder, augment=False, lighting=0.1), device="cpu")
    assert torch.equal(bundle.train.dataset[(4, 0)][0], bundle.val.dataset[(4, 0)][0]) is False
    val_like = bundle.val.dataset.__class__.__getitem__(bundle.train.dataset, (4, 7))
    assert torch.equal(val_like[0], bundle.train.dataset[(4, 0)][0])  # no epoch dependence


def test_ddp_shards(folder: Path) -> None:
    cfg = config(folder, batch_size=4, eval_batch_size=4)
    ranks = [build_imagenet(cfg, device="cpu", rank=r, world_size=2, seed=1) for r in (0, 1)]
    for bundle in ranks:
        bundle.train.set_epoch(5)
        assert next(iter(bundle.train))[0].shape[0] == 2  # per-process batch = 4 // 2
        assert bundle.train.num_samples == 8 and len(bundle.train) == 4
    train = [set(b.train.sampler.indices().tolist()) for b in ranks]
    assert not train[0] & train[1] and len(train[0] | train[1]) == 16
    val = [b.val.sampler.indices().tolist() for b in ranks]
    assert not set(val[0]) & set(val[1]) and sorted(val[0] + val[1]) == list(range(18))
    assert ranks[0].val.num_samples + ranks[1].val.num_samples == 18
    with pytest.raises(ValueError, match="divisible"):
        build_imagenet(config(folder, batch_size=5), device="cpu", rank=0, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        build_imagenet(cfg, device="cpu", rank=2, world_size=2)


def test_limits(folder: Path) -> None:
    bundle = build_imagenet(config(folder, train_limit=7, val_limit=5), device="cpu")
    assert len(bundle.train.dataset) == 7 and bundle.train.num_samples == 6
    assert bundle.val.num_samples == 5
    assert bundle.train.dataset.labels.tolist() == [0] * 6 + [1]
    assert bundle.num_classes == 3
    with pytest.raises(ValueError, match=r"lower data\.batch_size"):
        build_imagenet(config(folder, train_limit=4), device="cpu")


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"does not exist; set data\.root"):
        build_imagenet(config(tmp_path / "nowhere"), device="cpu")
    (tmp_path / "train" / "ant").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "ant" / "x.jpg")
    with pytest.raises(DataNotFoundError, match=re.escape(str(tmp_path / "val"))):
        build_imagenet(config(tmp_path), device="cpu")


def test_empty_and_flat_folders(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DataNotFoundError, match=r"hold no image.*dog"):
        build_imagenet(config(tmp_path), device="cpu")
    flat = tmp_path / "flat"
    (flat / "train").mkdir(parents=True)
    (flat / "val").mkdir()
    Image.new("RGB", (8, 8)).save(flat / "train" / "x.JPEG")
    with pytest.raises(DataNotFoundError, match=r"no class folders \(1 images lie directly"):
        build_imagenet(config(flat), device="cpu")


def test_class_mismatch(tmp_path: Path) -> None:
    make_folder(tmp_path, val_classes=("ant", "bee", "cow"))
    with pytest.raises(DataCorruptError, match=r"missing in val/: \[cat\]; only in val/: \[cow\]"):
        build_imagenet(config(tmp_path), device="cpu")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_named(tmp_path: Path, workers: int) -> None:
    make_folder(tmp_path)
    bad = tmp_path / "train" / "bee" / "zz_bad.JPEG"
    bad.write_bytes(b"this is not a jpeg" * 10)
    bundle = build_imagenet(config(tmp_path, workers=workers, eval_batch_size=19), device="cpu")
    with pytest.raises(DataCorruptError, match=re.escape(str(bad))):
        list(bundle.train)
    with pytest.raises(DataCorruptError, match="zz_bad"):  # workers restart after the error
        list(bundle.train)
    assert len(list(bundle.val)) == 1


def test_truncated_image_named(tmp_path: Path) -> None:
    make_folder(tmp_path)
    good = tmp_path / "val" / "cat" / "a.JPEG"
    good.write_bytes(good.read_bytes()[:300])
    bundle = build_imagenet(config(tmp_path), device="cpu")
    with pytest.raises(DataCorruptError, match=re.escape(str(good)) + ".*corrupt, truncated"):
        list(bundle.val)


def test_missing_pillow(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'pip install "bnnkit\[imagenet\]"'):
        build_imagenet(config(folder), device="cpu")


def test_image_removed_after_build(tmp_path: Path) -> None:
    make_folder(tmp_path)
    gone = tmp_path / "val" / "ant" / "a.JPEG"
    bundle = build_imagenet(config(tmp_path), device="cpu")
    gone.unlink()
    with pytest.raises(DataNotFoundError, match=re.escape(str(gone)) + ".*is gone"):
        list(bundle.val)
