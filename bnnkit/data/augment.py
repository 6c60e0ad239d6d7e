"""On-device batch augmentation of uint8 NCHW images: random crop, horizontal flip, normalize.

Everything is vectorized over the batch (no Python loop over samples) and runs on the
tensor's device. The random crop pads the batch once with zeros and reads every output
pixel with one ``torch.gather`` from precomputed per-sample indices; the flip is folded into
the same indices, so crop + flip cost one gather. Randomness comes only from an explicit
``torch.Generator``: the drawn parameters (:class:`CropFlip`) depend only on the generator's
seed, and applying them is deterministic.

The order matches the torchvision CIFAR recipe of every BNN paper:
``RandomCrop(32, padding=4)`` (zero fill) -> ``RandomHorizontalFlip()`` -> ``ToTensor()`` ->
``Normalize(mean, std)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
"""Per-channel mean and std of the images scaled to [0, 1]."""


def normalization_stats(
    normalize: str, dataset: str, channels: int = 3
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std for ``DataConfig.normalize`` on data set ``dataset``.

    Args:
        normalize: ``dataset`` (the data set's own statistics), ``imagenet``, ``cifar``
            (CIFAR-10's) or ``none`` (mean 0, std 1: images are only scaled to [0, 1]).
        dataset: the data set name (``cifar10``, ``cifar100``, ``imagenet``).
        channels: channels of the images (for ``none``).

    Raises:
        ValueError: unknown ``normalize``, or ``dataset`` without known statistics.
    """
    if normalize == "none":
        return (0.0,) * channels, (1.0,) * channels
    key = {"dataset": dataset, "imagenet": "imagenet", "cifar": "cifar10"}.get(normalize)
    if key is None:
        raise ValueError(
            f"data.normalize = {normalize!r} is not valid; allowed: dataset, imagenet, cifar, none"
        )
    if key not in DATASET_STATS:
        raise ValueError(
            f"no image statistics for data set {dataset!r}; use data.normalize: imagenet, "
            "cifar or none"
        )
    return DATASET_STATS[key]


@dataclass(frozen=True)
class CropFlip:
    """Per-sample random-crop offsets and flip flags (all of shape ``(N,)``).

    Attributes:
        top: row of the crop's top-left corner in the zero-padded image, in ``[0, 2p]``
            (``p`` = padding; ``top = p`` is the un-shifted image).
        left: column of the crop's top-left corner in the padded image, in ``[0, 2p]``.
        flip: bool, mirror the crop horizontally.
    """

    top: Tensor
    left: Tensor
    flip: Tensor

    def __len__(self) -> int:
        return self.top.shape[0]

    def __getitem__(self, index: slice | Tensor) -> CropFlip:
        return CropFlip(self.top[index], self.left[index], self.flip[index])

    def to(self, device: torch.device | str) -> CropFlip:
        return CropFlip(self.top.to(device), self.left.to(device), self.flip.to(device))


def draw_crop_flip(
    n: int,
    padding: int,
    flip: bool,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> CropFlip:
    """Draw crop offsets (uniform in ``[0, 2 * padding]``) and flips (p = 0.5) for ``n`` samples.

    The draws happen on the generator's device (offsets first, then flips) and are moved to
    ``device``; the result depends only on the generator's state.
    """
    gdev = generator.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=gdev)
    if flip:
        flips = torch.rand(n, generator=generator, device=gdev) < 0.5
    else:
        flips = torch.zeros(n, dtype=torch.bool, device=gdev)
    params = CropFlip(top, left, flips)
    return params.to(device) if device is not None else params


def crop_flip(x: Tensor, params: CropFlip, padding: int) -> Tensor:
    """Zero-pad ``x`` by ``padding``, crop back to its size at ``params``' offsets, flip.

    ``out[n, c, i, j] = padded[n, c, top[n] + i, left[n] + j']`` with ``j' = W - 1 - j`` for
    flipped samples (crop, then flip), ``j' = j`` otherwise. A source pixel ``(i, j)`` thus
    lands at ``(i + padding - top, j + padding - left)`` before the flip.

    Args:
        x: ``(N, C, H, W)`` images of any dtype (uint8 on the fast path).
        params: from :func:`draw_crop_flip`, on ``x``'s device, ``len(params) == N``.
        padding: zero padding on every side (the offsets must lie in ``[0, 2 * padding]``).
    """
    if x.dim() != 4:
        raise ValueError(f"crop_flip expects NCHW images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if len(params) != n:
        raise ValueError(f"crop_flip got {len(params)} crop/flip parameters for {n} images")
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    wp = w + 2 * padding
    rows = params.top[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(params.flip[:, None], w - 1 - cols, cols) + params.left[:, None]
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(padded.reshape(n, c, -1), 2, index).reshape(n, c, h, w)


def normalize_uint8(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``x.float() * scale - shift``: with ``scale = 1 / (255 std)``, ``shift = mean / std``
    this is ``(x / 255 - mean) / std``, as ``ToTensor`` + ``Normalize`` (up to float rounding).
    """
    return x.to(torch.float32).mul_(scale).sub_(shift)


class ImageTransform:
    """uint8 NCHW batch -> [crop + flip] -> float32, normalized; on the batch's device.

    Args:
        mean: per-channel mean of the images scaled to [0, 1].
        std: per-channel std of the images scaled to [0, 1].
        padding: random-crop zero padding (0 = no crop).
        flip: random horizontal flip.
        device: where the normalization constants live (the training device).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        padding: int = 0,
        flip: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"need one mean and one std > 0 per channel; got {mean}, {std}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.mean, self.std = tuple(mean), tuple(std)
        self.padding, self.flip = int(padding), bool(flip)
        std_t = torch.tensor(self.std, dtype=torch.float32, device=device).view(-1, 1, 1)
        mean_t = torch.tensor(self.mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = mean_t / std_t

    @property
    def random(self) -> bool:
        """Whether the transform draws random parameters (crop or flip enabled)."""
        return self.padding > 0 or self.flip

    def draw(self, n: int, generator: torch.Generator, device: torch.device | str) -> CropFlip:
        """Parameters for ``n`` samples (see :func:`draw_crop_flip`)."""
        return draw_crop_flip(n, self.padding, self.flip, generator, device)

    def to(self, device: torch.device | str) -> ImageTransform:
        """The same transform with its constants on ``device`` (``self`` if already there)."""
        if self.scale.device == torch.device(device):
            return self
        return ImageTransform(
            self.mean, self.std, padding=self.padding, flip=self.flip, device=device
        )

    def __call__(self, x: Tensor, params: CropFlip | None = None) -> Tensor:
        """Apply to a uint8 batch; ``params`` None (or a non-random transform) = no crop/flip."""
        if x.dtype != torch.uint8:
            raise TypeError(f"ImageTransform expects uint8 images, got {x.dtype}")
        if params is not None and self.random:
            x = crop_flip(x, params, self.padding)
        return normalize_uint8(x, self.scale, self.shift)

    def __repr__(self) -> str:
        return (
            f"ImageTransform(mean={self.mean}, std={self.std}, padding={self.padding}, "
            f"flip={self.flip})"
        )


def augment_batch(
    x: Tensor,
    generator: torch.Generator,
    *,
    padding: int = 4,
    flip: bool = True,
    mean: Sequence[float] = DATASET_STATS["cifar10"][0],
    std: Sequence[float] = DATASET_STATS["cifar10"][1],
) -> Tensor:
    """One-call random crop + flip + normalize of a uint8 NCHW batch (on ``x``'s device).

    Convenient for ad-hoc use; the loaders keep one :class:`ImageTransform` and draw the
    parameters of a whole epoch at once.
    """
    transform = ImageTransform(mean, std, padding=padding, flip=flip, device=x.device)
    return transform(x, transform.draw(x.shape[0], generator, x.device))
