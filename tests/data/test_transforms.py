"""Transforms of the ImageNet folder pipeline, checked by hand against their formulas."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("PIL", reason="Pillow is not installed (pip install 'bnnkit[imagenet]')")
from PIL import Image

from bnnkit.data import transforms as T
from bnnkit.data.augment import normalization_stats

RATIO = (3 / 4, 4 / 3)


def gradient_image(height: int, width: int) -> Image.Image:
    """An RGB image whose pixels differ (x gradient in R, y in G, constant B)."""
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), 0 * x + 77], -1)
    return Image.fromarray(arr.astype(np.uint8))


class ScriptedRng:
    """Stands in for a numpy Generator and returns scripted draws (to follow the algorithm)."""

    def __init__(self, uniforms: list[float], integers: list[int]) -> None:
        self.uniforms, self.ints = list(uniforms), list(integers)

    def uniform(self, low: float, high: float) -> float:
        return low + self.uniforms.pop(0) * (high - low)

    def integers(self, low: int, high: int) -> int:
        value = self.ints.pop(0)
        assert low <= value < high
        return value


def test_rrc_follows_torchvision_attempts() -> None:
    # attempt 1: area 1.25 * 60 * 40 cannot fit -> rejected; attempt 2: area 0.25, ratio 1.
    rng = ScriptedRng([1.0, 0.5, 0.25 / 1.17 - 0.08 / 1.17, 0.5], [3, 7])
    top, left, h, w = T.random_resized_crop_params(40, 60, (0.08, 1.25), RATIO, rng)  # type: ignore[arg-type]
    side = round(math.sqrt(0.25 * 40 * 60))
    assert (top, left, h, w) == (3, 7, side, side)


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(40, 60, (0, 3, 40, 53)), (80, 50, (6, 0, 67, 50)), (64, 64, (0, 0, 64, 64))],
)
def test_rrc_fallback_is_clamped_center_crop(height: int, width: int, expected: tuple) -> None:
    # scale > 1 can never fit: all 10 attempts fail and torchvision's fallback applies
    rng = np.random.default_rng(0)
    assert T.random_resized_crop_params(height, width, (1.2, 1.25), RATIO, rng) == expected


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.08, 1.25), (0.5, 0.5)])
def test_rrc_crop_in_bounds_and_scale(scale: tuple[float, float]) -> None:
    height, width = 600, 800
    rng = np.random.default_rng(1)
    for _ in range(300):
        top, left, h, w = T.random_resized_crop_params(height, width, scale, RATIO, rng)
        assert top >= 0 and top + h <= height and left >= 0 and left + w <= width
        frac = h * w / (height * width)
        if (h, w) != (height, width):  # not the whole-image fallback
            assert scale[0] * 0.99 <= frac <= min(scale[1], 1.0) * 1.01
            assert RATIO[0] * 0.99 <= w / h <= RATIO[1] * 1.01


def test_rrc_output_size_and_content() -> None:
    img = gradient_image(50, 70)
    out = T.random_resized_crop(img, 32, (0.08, 1.25), np.random.default_rng(5))
    assert out.size == (32, 32) and out.mode == "RGB"
    top, left, h, w = T.random_resized_crop_params(
        50, 70, (0.08, 1.25), RATIO, np.random.default_rng(5)
    )
    by_hand = img.crop((left, top, left + w, top + h)).resize((32, 32), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(out), np.asarray(by_hand))


def test_val_resize_and_center_crop_by_hand() -> None:
    img = gradient_image(40, 60)  # W=60, H=40
    size = T.eval_resize_size(32)
    assert size == 37 and T.eval_resize_size(224) == 256
    resized = T.resize_shorter(img, size)
    assert resized.size == (55, 37)  # long side int(37 * 60 / 40) = 55
    out = T.center_crop(resized, 32)
    assert out.size == (32, 32)
    # top = round(2.5) = 2, left = round(11.5) = 12 (round half to even, as torchvision)
    expected = np.asarray(resized)[2:34, 12:44]
    assert np.array_equal(np.asarray(out), expected)
    # a constant image stays constant through resize and crop
    flat = Image.new("RGB", (90, 50), (10, 200, 30))
    pixels = np.asarray(T.center_crop(T.resize_shorter(flat, 37), 32))
    assert (pixels == np.array([10, 200, 30], np.uint8)).all()
    with pytest.raises(ValueError, match="smaller than the crop"):
        T.center_crop(flat, 64)


def test_lighting_offset_is_pca_direction() -> None:
    alpha = np.random.default_rng(3).normal(0.0, 0.1, size=3)
    expected = T.IMAGENET_PCA_EIGVEC @ (alpha * T.IMAGENET_PCA_EIGVAL)
    offset = T.lighting_offset(0.1, np.random.default_rng(3))
    np.testing.assert_allclose(offset, expected, rtol=0, atol=1e-12)
    assert np.array_equal(T.lighting_offset(0.0, np.random.default_rng(3)), np.zeros(3))


def test_lighting_uint8_adds_offset_in_pixel_units() -> None:
    # "pil": the offset is added in [0, 255] pixel units (ReCU/ReActNet/ReBNN), then clipped
    # and truncated to uint8 like their astype(uint8)
    offset = T.lighting_offset(30.0, np.random.default_rng(4))  # large std: several pixels
    arr = np.full((4, 5, 3), 100, np.uint8)
    out = T.lighting_uint8(arr, offset)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], np.trunc(100 + offset).astype(np.uint8))
    assert np.abs(out[0, 0].astype(float) - 100 - offset).max() < 1
    rounded = T.lighting_uint8(arr, offset, rounding="round")
    np.testing.assert_array_equal(rounded[0, 0], np.rint(100 + offset).astype(np.uint8))
    clipped = T.lighting_uint8(np.array([[[0, 255, 3]]], np.uint8), np.array([-5.0, 9.0, -1.5]))
    np.testing.assert_array_equal(clipped[0, 0], [0, 255, 1])
    with pytest.raises(ValueError, match="rounding"):
        T.lighting_uint8(arr, offset, rounding="floor")
    # the PIL path is the same table lookup
    noisy = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    by_hand = np.trunc(np.clip(noisy + offset, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(T.lighting_uint8(noisy, offset), by_hand)
    pil_out = np.asarray(T.lighting_pil(Image.fromarray(noisy), offset))
    np.testing.assert_array_equal(pil_out, by_hand)


def test_lighting_tensor_adds_offset_in_unit_range() -> None:
    # "tensor": the same offset on the [0, 1] image (OvSW): 255x stronger than "pil"
    offset = torch.tensor(T.lighting_offset(0.1, np.random.default_rng(4)), dtype=torch.float32)
    x = torch.rand(3, 4, 5)
    out = T.lighting_tensor(x, offset)
    torch.testing.assert_close(out - x, offset[:, None, None].expand_as(x))
    batch = torch.rand(2, 3, 4, 5)
    offsets = torch.stack([offset, -offset])
    torch.testing.assert_close(
        T.lighting_tensor(batch, offsets)[1] - batch[1], (-offset)[:, None, None].expand(3, 4, 5)
    )


def test_flip() -> None:
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(T.hflip(arr)[:, 0], arr[:, 2])
    assert np.array_equal(T.random_hflip(arr, np.random.default_rng(0), p=1.0), arr[:, ::-1])
    assert T.random_hflip(arr, np.random.default_rng(0), p=0.0) is arr


def test_to_uint8_chw_and_normalize() -> None:
    img = Image.new("RGB", (5, 4), (51, 102, 204))
    x = T.to_uint8_chw(img)
    assert x.shape == (3, 4, 5) and x.dtype == torch.uint8 and x.is_contiguous()
    stats = T.stats_tensors(normalization_stats("imagenet", "imagenet"), "cpu")
    offset = torch.tensor([[0.01, -0.02, 0.03]])
    out = T.normalize(x[None], stats, offset)
    assert out.dtype == torch.float32
    for c, value in enumerate((51, 102, 204)):
        expected = (value / 255 + offset[0, c].item() - T.IMAGENET_MEAN[c]) / T.IMAGENET_STD[c]
        assert out[0, c, 2, 3].item() == pytest.approx(expected, abs=1e-5)
    assert T.normalize(x[None], None)[0, 0, 0, 0].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        T.to_uint8_chw(np.zeros((4, 5), np.uint8))


def test_normalization_stats_names() -> None:
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert normalization_stats("dataset", "imagenet") == imagenet
    assert normalization_stats("imagenet", "cifar10") == imagenet
    assert normalization_stats("cifar", "imagenet") == (
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    )
    assert normalization_stats("none", "imagenet") == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="bogus"):
        normalization_stats("bogus", "imagenet")


def test_missing_pillow_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r'pip install "bnnkit\[imagenet\]"'):
        T.require_pil()
