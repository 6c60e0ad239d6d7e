"""Image transforms of the ImageNet folder pipeline, as small pure functions.

bnnkit does not depend on torchvision; these functions reproduce the torchvision transforms the
papers use (``RandomResizedCrop``, ``Resize`` + ``CenterCrop``, ``RandomHorizontalFlip``,
``ToTensor``, ``Normalize``) and the AlexNet-style PCA ``Lighting`` of the official BNN code.
Every random function takes an explicit ``numpy.random.Generator`` and draws from nothing else,
so a sample's augmentation is a pure function of its generator's seed.

Geometry works on PIL images (Pillow is imported lazily: it is the optional ``imagenet`` extra);
colour works on ``uint8`` ``(H, W, 3)`` numpy arrays or on float tensors.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from bnnkit.data.augment import DATASET_STATS
from bnnkit.errors import MissingDependencyError

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGENET_MEAN, IMAGENET_STD = DATASET_STATS["imagenet"]  # one table: bnnkit.data.augment

IMAGENET_PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
"""Eigenvalues of the RGB covariance of ImageNet pixels in [0, 1] units (AlexNet / fb.resnet)."""
IMAGENET_PCA_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)
"""Eigenvectors (columns) of that covariance; rows are the R, G, B components."""


def require_pil() -> Any:
    """Import and return ``PIL.Image``, or fail with the install command.

    Raises:
        MissingDependencyError: Pillow is not installed.
    """
    try:
        from PIL import Image as pil_image
    except ImportError as exc:
        raise MissingDependencyError(
            "the ImageNet folder pipeline decodes images with Pillow, which is not installed; "
            'install it with: pip install "bnnkit[imagenet]"  (or: pip install pillow)'
        ) from exc
    return pil_image


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """Crop box of torchvision's ``RandomResizedCrop.get_params``: ``(top, left, h, w)``.

    Up to 10 attempts draw an area fraction ``s ~ U(scale)`` and an aspect ratio
    ``r = exp(u)``, ``u ~ U(log ratio)``; then ``w = round(sqrt(s * H * W * r))`` and
    ``h = round(sqrt(s * H * W / r))``. The first attempt with ``0 < w <= W`` and ``0 < h <= H``
    wins, and its position is uniform: ``top ~ U{0..H-h}``, ``left ~ U{0..W-w}``. When all 10
    fail, the fallback is a centre crop of the whole image clamped to the ratio range.

    A scale above 1 (ReCU and OvSW use ``(0.08, 1.25)``) is valid: a target area larger than the
    image can never fit, so such draws fail and, when all 10 do, the centre-crop fallback
    applies. This is exactly torchvision's behaviour with the same arguments.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    img: Image,
    size: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image:
    """Crop the box of :func:`random_resized_crop_params` and resize it to ``size x size``.

    Bilinear resampling with Pillow's antialiasing, as torchvision does for PIL images.
    """
    pil_image = require_pil()
    top, left, h, w = random_resized_crop_params(img.height, img.width, scale, ratio, rng)
    crop = img.crop((left, top, left + w, top + h))
    return crop.resize((size, size), pil_image.Resampling.BILINEAR)


def resize_shorter(img: Image, size: int) -> Image:
    """Resize so the shorter side is ``size`` (torchvision ``Resize(size)``, bilinear).

    The longer side becomes ``int(size * long / short)`` (truncated, as torchvision does).
    """
    pil_image = require_pil()
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), pil_image.Resampling.BILINEAR)


def center_crop(img: Image, size: int) -> Image:
    """Central ``size x size`` crop (torchvision ``CenterCrop``).

    ``top = round((H - size) / 2)``, ``left = round((W - size) / 2)`` with Python's
    round-half-to-even, as torchvision. The image must be at least ``size`` on both sides.
    """
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"center_crop: image {w}x{h} is smaller than the crop {size}x{size}")
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def eval_resize_size(image_size: int) -> int:
    """Validation resize: ``round(image_size * 256 / 224)`` (256 for the standard 224 crop)."""
    return round(image_size * 256 / 224)


def lighting_offset(std: float, rng: np.random.Generator) -> np.ndarray:
    """AlexNet PCA lighting offset ``eigvec @ (alpha * eigval)``, ``alpha ~ N(0, std^2 I_3)``.

    Returns the float64 ``(3,)`` RGB offset to add to every pixel. Its unit is that of the
    image it is added to: [0, 1] units for a ``ToTensor`` image (the eigenvalues' own scale),
    but the official ReCU/ReActNet/ReBNN ``Lighting`` adds the very same numbers to a uint8
    image in [0, 255] pixel units, about 255x weaker (see :func:`lighting_uint8`). ``std = 0``
    draws nothing and returns zeros.
    """
    if std == 0:
        return np.zeros(3)
    alpha = rng.normal(0.0, std, size=3)
    return IMAGENET_PCA_EIGVEC @ (alpha * IMAGENET_PCA_EIGVAL)


def lighting_lut(offset: np.ndarray, rounding: str = "truncate") -> np.ndarray:
    """Per-channel lookup table of uint8 lighting: ``lut[c, v] = to_uint8(clip(v + offset[c]))``.

    ``v`` runs over 0..255 and ``clip`` is to [0, 255]. The official ``Lighting`` (ReCU,
    ReActNet, ReBNN) converts with ``astype(uint8)``, which truncates toward zero;
    ``rounding="truncate"`` (the default) keeps that, so with the usual |offset| < 1 a channel
    either keeps its value or loses 1. ``rounding="round"`` rounds to the nearest integer.
    A constant offset per channel makes the table exact and ~5x faster than per-pixel math.
    """
    if rounding not in ("truncate", "round"):
        raise ValueError(f"lighting: rounding = {rounding!r}; allowed: truncate, round")
    values = np.arange(256, dtype=np.float64)[None, :] + np.asarray(offset, np.float64)[:, None]
    values = np.clip(values, 0.0, 255.0)
    if rounding == "round":
        values = np.rint(values)
    return values.astype(np.uint8)


def lighting_uint8(arr: np.ndarray, offset: np.ndarray, rounding: str = "truncate") -> np.ndarray:
    """Lighting on a uint8 ``(H, W, 3)`` array, in pixel units (``lighting_space: pil``).

    ``out[..., c] = to_uint8(clip(arr[..., c] + offset[c], 0, 255))`` (see :func:`lighting_lut`
    for the rounding): the same numbers as the official ``Lighting`` on a PIL image.
    """
    lut = lighting_lut(offset, rounding)
    return np.stack([lut[c].take(arr[..., c]) for c in range(3)], axis=-1)


def lighting_pil(img: Image, offset: np.ndarray, rounding: str = "truncate") -> Image:
    """:func:`lighting_uint8` on an RGB PIL image (one ``Image.point`` table lookup)."""
    return img.point(lighting_lut(offset, rounding).ravel().tolist())


def lighting_tensor(x: Tensor, offset: Tensor) -> Tensor:
    """Lighting on a float image in [0, 1] units (``lighting_space: tensor``, as OvSW).

    ``out[..., c, :, :] = x[..., c, :, :] + offset[..., c]`` for ``x`` of shape ``(3, H, W)``
    with ``offset`` ``(3,)``, or ``(N, 3, H, W)`` with ``(N, 3)``. No clamping (as the
    fb.resnet ``Lighting`` that OvSW uses).
    """
    return x + offset.to(x.dtype)[..., :, None, None]


def hflip(arr: np.ndarray) -> np.ndarray:
    """Mirror an ``(H, W, C)`` image left-right: ``out[:, j] = arr[:, W - 1 - j]`` (a view)."""
    return arr[:, ::-1]


def random_hflip(arr: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """:func:`hflip` with probability ``p`` (one ``U[0, 1)`` draw, flip when it is ``< p``)."""
    return hflip(arr) if rng.random() < p else arr


def to_uint8_chw(img: Image | np.ndarray) -> Tensor:
    """An RGB PIL image or uint8 ``(H, W, 3)`` array as a contiguous uint8 ``(3, H, W)`` tensor.

    ``ToTensor`` is split in two: this layout change here, and the ``/ 255`` in
    :func:`normalize` (done per batch on the training device).
    """
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"to_uint8_chw: expected an (H, W, 3) RGB image, got {arr.shape}")
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def stats_tensors(
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None, device: torch.device | str
) -> tuple[Tensor, Tensor] | None:
    """``stats`` as float32 ``(3,)`` mean and std tensors on ``device`` (None stays None)."""
    if stats is None:
        return None
    mean = torch.tensor(stats[0], dtype=torch.float32, device=device)
    std = torch.tensor(stats[1], dtype=torch.float32, device=device)
    return mean, std


def normalize(
    x: Tensor, stats: tuple[Tensor, Tensor] | None, offset: Tensor | None = None
) -> Tensor:
    """uint8 ``(N, 3, H, W)`` batch -> normalized float32: ``((x / 255 + offset) - mean) / std``.

    ``x / 255`` is ``ToTensor``; ``offset`` (``(N, 3)``, optional) is the tensor-space
    lighting of :func:`lighting_tensor`, applied between ``ToTensor`` and ``Normalize`` as in
    OvSW; ``stats`` is the ``(mean, std)`` pair of :func:`stats_tensors` (None: no
    mean/std step).
    """
    out = x.to(torch.float32).div_(255.0)
    if offset is not None:
        out.add_(offset.to(device=out.device, dtype=out.dtype)[:, :, None, None])
    if stats is not None:
        mean, std = stats
        out.sub_(mean[:, None, None]).div_(std[:, None, None])
    return out
