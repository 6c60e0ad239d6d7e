"""``DataConfig``: the ``data:`` section of a recipe (a frozen, validated dataclass)."""

from __future__ import annotations

from dataclasses import dataclass

from bnnkit.errors import ConfigError

DATASETS = ("digits", "synthetic", "cifar10", "cifar100", "imagenet")
NORMALIZATIONS = ("dataset", "imagenet", "cifar", "none")
LIGHTING_SPACES = ("pil", "tensor")


def _fail(field: str, value: object, allowed: str) -> None:
    raise ConfigError("is not valid", location=(field,), value=value, allowed=allowed)


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is augmented.

    Attributes:
        name: one of ``digits`` (UCI 8x8 digits bundled with scikit-learn, no download),
            ``synthetic`` (class-conditional Gaussians, for tests), ``cifar10``, ``cifar100``
            (official ``cifar-*-batches-py`` layout), ``imagenet`` (``train/<class>/*``,
            ``val/<class>/*`` folders).
        root: data directory (the folder that holds ``cifar-10-batches-py``, or the ImageNet
            folder with ``train/`` and ``val/``). Default: ``~/.cache/bnnkit/<name>``.
        download: fetch the official archive if missing (CIFAR only; MD5-checked).
        batch_size: **global** training batch, summed over all processes (under torchrun each
            process gets ``batch_size // world_size``).
        eval_batch_size: global evaluation batch (default: ``batch_size``).
        workers: DataLoader worker processes per process (ImageNet folders).
        in_memory: CIFAR: hold the split as a uint8 tensor on the training device and augment
            there per batch (fast path); False uses a DataLoader over the same arrays.
        augment: training augmentation on/off (random crop + flip for CIFAR, RandomResizedCrop
            + lighting + flip for ImageNet).
        crop_padding: CIFAR random-crop zero padding (4 in every paper).
        flip: random horizontal flip.
        normalize: ``dataset`` (the data set's own mean/std), ``imagenet`` (ImageNet mean/std;
            ReCU normalizes CIFAR this way), ``cifar`` or ``none``.
        image_size: ImageNet training crop; validation resizes to ``image_size * 256 / 224``
            and center-crops ``image_size``.
        rrc_scale: RandomResizedCrop area range: (0.08, 1.0) in ReActNet/ReBNN/Bi-Real,
            (0.08, 1.25) in ReCU/OvSW.
        lighting: PCA lighting noise std (0.1 in the papers; 0 = off).
        lighting_space: ``pil`` (on the uint8 image, as ReCU/ReActNet/ReBNN) or ``tensor``
            (on the [0, 1] tensor, as OvSW: about 255x stronger).
        train_limit: use only the first N training samples (quick runs); None = all.
        val_limit: use only the first N validation samples; None = all.
        synthetic_shape: sample shape of the ``synthetic`` data set.
        synthetic_classes: classes of the ``synthetic`` data set.
        synthetic_train: training samples of the ``synthetic`` data set.
        synthetic_val: validation samples of the ``synthetic`` data set.
    """

    name: str = "digits"
    root: str | None = None
    download: bool = False
    batch_size: int = 128
    eval_batch_size: int | None = None
    workers: int = 4
    in_memory: bool = True
    augment: bool = True
    crop_padding: int = 4
    flip: bool = True
    normalize: str = "dataset"
    image_size: int = 224
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    lighting: float = 0.0
    lighting_space: str = "pil"
    train_limit: int | None = None
    val_limit: int | None = None
    synthetic_shape: tuple[int, ...] = (3, 32, 32)
    synthetic_classes: int = 10
    synthetic_train: int = 512
    synthetic_val: int = 256

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            _fail("name", self.name, ", ".join(DATASETS))
        if self.normalize not in NORMALIZATIONS:
            _fail("normalize", self.normalize, ", ".join(NORMALIZATIONS))
        if self.lighting_space not in LIGHTING_SPACES:
            _fail("lighting_space", self.lighting_space, ", ".join(LIGHTING_SPACES))
        for name in ("batch_size", "image_size", "synthetic_classes", "synthetic_train",
                     "synthetic_val"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                _fail(name, getattr(self, name), "an integer >= 1")
        for name in ("eval_batch_size", "train_limit", "val_limit"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                _fail(name, value, "an integer >= 1 or null")
        if self.workers < 0:
            _fail("workers", self.workers, "an integer >= 0")
        if self.crop_padding < 0:
            _fail("crop_padding", self.crop_padding, "an integer >= 0")
        if self.lighting < 0:
            _fail("lighting", self.lighting, "a number >= 0")
        lo, hi = self.rrc_scale
        if not 0 < lo <= hi:
            _fail("rrc_scale", self.rrc_scale, "[low, high] with 0 < low <= high")
        if not self.synthetic_shape or min(self.synthetic_shape) < 1:
            _fail("synthetic_shape", self.synthetic_shape, "a list of positive ints")

    @property
    def global_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size
