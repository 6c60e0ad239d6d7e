"""``same_extension``: where TFLite's SAME padding (plus appended, cropped rows) reproduces
PyTorch's symmetric padding, checked against both padding rules written out row by row."""

from __future__ import annotations

import itertools

import pytest

from bnnkit.export.lce import same_extension


def torch_windows(size: int, k: int, s: int, p: int) -> list[tuple]:
    """The input rows each PyTorch output reads (None for a padded, zero row)."""
    out = (size + 2 * p - k) // s + 1
    return [tuple(r if 0 <= r < size else None for r in range(s * i - p, s * i - p + k))
            for i in range(out)]  # fmt: skip


def tflite_same_windows(n: int, size: int, k: int, s: int) -> list[tuple]:
    """TFLite's SAME on ``n`` rows, of which rows ``size..n-1`` were appended ("x"):
    ``ceil(n / s)`` outputs, ``total // 2`` zero rows before (tensorflow/lite/kernels/padding.h)."""
    out = -(-n // s)
    top = max((out - 1) * s + k - n, 0) // 2

    def row(r: int):
        return None if not 0 <= r < n else (r if r < size else "x")

    return [tuple(row(r) for r in range(s * i - top, s * i - top + k)) for i in range(out)]


def test_hand_cases():
    assert same_extension(56, 3, 1, 1) == 0  # stride 1: TFLite's SAME is PyTorch's padding
    assert same_extension(56, 3, 2, 1) == 1  # ResNet's stride-2 conv: append a row, crop one output
    assert same_extension(32, 3, 2, 1) == 1
    assert same_extension(7, 3, 2, 1) == 0  # odd size: SAME pads 1 and 1, as PyTorch
    assert same_extension(224, 7, 2, 3) is None  # ResNet's stem: SAME pads 2 before, not 3


@pytest.mark.parametrize("k,s", list(itertools.product([1, 2, 3, 5, 7], [1, 2, 3])))
def test_matches_pytorch_padding_row_by_row(k, s):
    for size, p in itertools.product(range(max(1, k - 2), 20), range(k)):
        if size + 2 * p < k:
            continue
        want = torch_windows(size, k, s, p)
        extra = same_extension(size, k, s, p)
        works = [
            e
            for e in range(k + s)
            if tflite_same_windows(size + e, size, k, s)[: len(want)] == want
        ]
        if extra is None:
            assert not works, (size, k, s, p, works)
        else:
            assert extra == min(works), (size, k, s, p, extra, works)
