"""On-device batch augmentation: hand-checkable crops, flips, padding, normalization."""

from __future__ import annotations

import pytest
import torch

from bnnkit.data.augment import (
    DATASET_STATS,
    CropFlip,
    ImageTransform,
    augment_batch,
    crop_flip,
    draw_crop_flip,
    normalization_stats,
)


def params(top: list[int], left: list[int], flip: list[bool]) -> CropFlip:
    return CropFlip(torch.tensor(top), torch.tensor(left), torch.tensor(flip))


def reference_crop_flip(x: torch.Tensor, p: CropFlip, padding: int) -> torch.Tensor:
    """The obvious per-sample loop (slow, for comparison only)."""
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    h, w = x.shape[-2:]
    out = []
    for i in range(x.shape[0]):
        t, lft = int(p.top[i]), int(p.left[i])
        crop = padded[i, :, t : t + h, lft : lft + w]
        out.append(crop.flip(-1) if bool(p.flip[i]) else crop)
    return torch.stack(out)


def test_crop_offset_moves_a_known_pixel() -> None:
    x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    x[0, 1, 5, 7] = 200
    out = crop_flip(x, params([2], [6], [False]), padding=4)
    # source (i, j) -> (i + p - top, j + p - left) = (7, 5)
    assert out[0, 1, 7, 5] == 200
    assert int(out.sum()) == 200


def test_crop_then_flip_position() -> None:
    x = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    x[0, 0, 5, 7] = 9
    out = crop_flip(x, params([2], [6], [True]), padding=4)
    assert out[0, 0, 7, 31 - 5] == 9  # crop to column 5, then mirror


def test_flip_reverses_columns() -> None:
    x = torch.randint(0, 256, (4, 3, 8, 6), dtype=torch.uint8)
    p = params([0] * 4, [0] * 4, [True, False, True, False])
    out = crop_flip(x, p, padding=0)
    torch.testing.assert_close(out[0::2], x[0::2].flip(-1))
    torch.testing.assert_close(out[1::2], x[1::2])
    # un-shifted crop (top = left = padding) with a flip is a pure flip too
    out = crop_flip(x, params([3] * 4, [3] * 4, [True] * 4), padding=3)
    torch.testing.assert_close(out, x.flip(-1))


def test_zero_padding_appears_at_the_borders() -> None:
    x = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    out = crop_flip(x, params([0, 8], [0, 8], [False, False]), padding=4)
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, :, :4] == 0).all()
    assert (out[0, :, 4:, 4:] == 255).all()
    assert (out[1, :, -4:, :] == 0).all() and (out[1, :, :, -4:] == 0).all()
    assert (out[1, :, :28, :28] == 255).all()


def test_matches_a_per_sample_loop() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (64, 3, 12, 10), dtype=torch.uint8, generator=g)
    p = draw_crop_flip(64, 4, True, g)
    torch.testing.assert_close(crop_flip(x, p, 4), reference_crop_flip(x, p, 4))


def test_drawn_parameters_range_and_seed() -> None:
    p = draw_crop_flip(4096, 4, True, torch.Generator().manual_seed(0))
    assert int(p.top.min()) == 0 and int(p.top.max()) == 8
    assert int(p.left.min()) == 0 and int(p.left.max()) == 8
    assert 0.45 < p.flip.float().mean() < 0.55
    q = draw_crop_flip(4096, 4, True, torch.Generator().manual_seed(0))
    assert torch.equal(p.top, q.top) and torch.equal(p.flip, q.flip)
    no_flip = draw_crop_flip(16, 0, False, torch.Generator().manual_seed(0))
    assert not no_flip.flip.any() and not no_flip.top.any()


def test_normalization_values() -> None:
    mean, std = DATASET_STATS["cifar10"]
    tf = ImageTransform(mean, std)
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    out = tf(x.contiguous())
    assert out.dtype == torch.float32
    for c in range(3):
        expected = torch.tensor([(v / 255 - mean[c]) / std[c] for v in (0, 255, 128)])
        torch.testing.assert_close(out[0, c, 0], expected, atol=1e-5, rtol=0)
    none = ImageTransform(*normalization_stats("none", "cifar10"))
    torch.testing.assert_close(none(x.contiguous())[0, 0, 0], torch.tensor([0, 1, 128 / 255]))


def test_normalization_stats_choices() -> None:
    assert normalization_stats("dataset", "cifar100") == DATASET_STATS["cifar100"]
    assert normalization_stats("cifar", "cifar100") == DATASET_STATS["cifar10"]
    assert normalization_stats("imagenet", "cifar10")[0] == (0.485, 0.456, 0.406)
    assert normalization_stats("none", "cifar10") == ((0.0,) * 3, (1.0,) * 3)
    with pytest.raises(ValueError, match="normalize"):
        normalization_stats("bogus", "cifar10")


def test_transform_rejects_float_input() -> None:
    with pytest.raises(TypeError, match="uint8"):
        ImageTransform((0.5,), (0.5,))(torch.zeros(1, 1, 2, 2))


def test_augment_batch_depends_only_on_the_seed() -> None:
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    a = augment_batch(x, torch.Generator().manual_seed(7))
    b = augment_batch(x, torch.Generator().manual_seed(7))
    c = augment_batch(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (32, 3, 32, 32) and a.dtype == torch.float32
