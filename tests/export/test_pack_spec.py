"""Bit packing and the popcount kernels, checked against the contract.

Expected values are either written out by hand or come from independent oracles:
a pure-Python bit packer (``_ref_pack``) and ``F.conv2d`` / matmul on +-1 float
tensors (whose results are exact integers). Nothing here compares the
implementation against itself.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as TF

from bnnkit.export.kernels import get_kernel, list_kernels
from bnnkit.export.pack import (
    pack_activations,
    pack_conv_weight,
    pack_signs,
    popcount,
    unpack_signs,
)

INT64_MIN = torch.iinfo(torch.int64).min
NUMBA = importlib.util.find_spec("numba") is not None
KERNELS = [
    "reference",
    pytest.param("numba", marks=pytest.mark.skipif(not NUMBA, reason="numba is not installed")),
]


# ----------------------------------------------------------------------------- oracles


def _sign(t: torch.Tensor) -> torch.Tensor:
    """+1 where t >= 0 (both zeros included), -1 elsewhere, as float64."""
    return torch.where(t >= 0, 1.0, -1.0).to(torch.float64)


def _ref_pack_row(vals: list[float]) -> list[int]:
    n = len(vals)
    words = []
    for w in range((n + 63) // 64):
        u = 0
        for j in range(64):
            i = 64 * w + j
            if i < n and vals[i] < 0:  # -0.0 < 0 is False: sign(-0.0) = +1
                u |= 1 << j
        if u >= 1 << 63:
            u -= 1 << 64
        words.append(u)
    return words


def _ref_pack(t: torch.Tensor) -> torch.Tensor:
    """Pure-Python packing of the last dim of a float tensor."""
    n = t.shape[-1]
    nw = (n + 63) // 64
    rows = t.reshape(-1, n).tolist()
    out = [_ref_pack_row(r) for r in rows]
    return torch.tensor(out, dtype=torch.int64).reshape(*t.shape[:-1], nw)


def _with_zeros(t: torch.Tensor, seed: int) -> torch.Tensor:
    """Sprinkle exact +0.0 and -0.0 into t (both must count as sign +1)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(t.shape, generator=g)
    t = t.clone()
    t[r < 0.1] = 0.0
    t[(r >= 0.1) & (r < 0.2)] = -0.0
    return t


# ----------------------------------------------------------------------------- pack_signs


def test_pack_signs_hand_made_bit_positions():
    assert pack_signs(torch.tensor([-1.0, 2.0, -3.0])).tolist() == [5]
    assert pack_signs(torch.tensor([1.0, -1.0, 1.0])).tolist() == [2]
    # 64 negatives -> all bits set -> -1 as int64
    assert pack_signs(-torch.ones(64)).tolist() == [-1]
    # only element 63 negative -> bit 63 -> int64 min
    x = torch.ones(64)
    x[63] = -1.0
    assert pack_signs(x).tolist() == [INT64_MIN]
    # only element 0 negative, and element 64 in the next word
    x = torch.ones(65)
    x[0] = -1.0
    x[64] = -2.0
    assert pack_signs(x).tolist() == [1, 1]
    # all positive -> 0
    assert pack_signs(torch.full((130,), 0.5)).tolist() == [0, 0, 0]


def test_pack_signs_dtype_and_shape():
    out = pack_signs(torch.randn(2, 3, 130))
    assert out.dtype == torch.int64
    assert out.shape == (2, 3, 3)
    assert pack_signs(torch.randn(1)).shape == (1,)
    assert pack_signs(torch.randn(4, 64)).shape == (4, 1)
    assert pack_signs(torch.randn(4, 65)).shape == (4, 2)


def test_pack_signs_both_zeros_are_plus_one():
    x = torch.tensor([0.0, -0.0, -1e-30, 1e-30, -0.0])
    assert pack_signs(x).tolist() == [0b00100]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_pack_signs_accepts_other_float_dtypes(dtype):
    x = torch.tensor([-1.0, 2.0, -3.0, -0.0, 0.0, -0.5], dtype=dtype)
    assert pack_signs(x).tolist() == [0b100101]


@pytest.mark.parametrize(
    "n, last", [(65, 1), (70, 0b111111), (100, (1 << 36) - 1), (127, (1 << 63) - 1)]
)
def test_pack_signs_padding_bits_are_zero(n, last):
    out = pack_signs(-torch.ones(3, n))
    assert out[:, 0].tolist() == [-1, -1, -1]
    assert out[:, 1].tolist() == [last, last, last]


@pytest.mark.parametrize(
    "shape", [(1,), (63,), (64,), (3, 65), (2, 3, 130), (5, 1), (2, 2, 2, 200)]
)
def test_pack_signs_matches_the_python_oracle(shape):
    x = _with_zeros(torch.randn(shape), seed=sum(shape))
    assert torch.equal(pack_signs(x), _ref_pack(x))


@pytest.mark.parametrize(
    "x",
    [
        torch.tensor([1, -2, 3]),
        torch.tensor([1, -2, 3], dtype=torch.int32),
        torch.tensor([True, False]),
    ],
)
def test_pack_signs_rejects_non_float(x):
    with pytest.raises(ValueError):
        pack_signs(x)


def test_pack_signs_rejects_empty_last_dim():
    with pytest.raises(ValueError):
        pack_signs(torch.empty(0))
    with pytest.raises(ValueError):
        pack_signs(torch.empty(3, 0))


# ----------------------------------------------------------------------------- unpack_signs


def test_unpack_signs_hand_made():
    out = unpack_signs(torch.tensor([5]), 3)
    assert out.dtype == torch.float32
    assert out.tolist() == [-1.0, 1.0, -1.0]
    assert unpack_signs(torch.tensor([-1]), 5).tolist() == [-1.0] * 5
    assert unpack_signs(torch.tensor([-1]), 64).tolist() == [-1.0] * 64
    assert unpack_signs(torch.tensor([INT64_MIN]), 64).tolist() == [1.0] * 63 + [-1.0]
    assert unpack_signs(torch.tensor([[0, 1]]), 65).tolist() == [[1.0] * 64 + [-1.0]]
    assert unpack_signs(torch.tensor([[2], [1]]), 2).tolist() == [[1.0, -1.0], [-1.0, 1.0]]


@pytest.mark.parametrize("shape", [(1,), (7,), (64,), (65,), (4, 128), (2, 3, 130), (3, 1, 2, 191)])
def test_round_trip_equals_sign(shape):
    x = _with_zeros(torch.randn(shape), seed=len(shape) * 1000 + shape[-1])
    n = shape[-1]
    words = pack_signs(x)
    back = unpack_signs(words, n)
    assert back.shape == x.shape
    assert back.dtype == torch.float32
    assert torch.equal(back, _sign(x).float())


def test_unpack_signs_rejects_bad_n():
    with pytest.raises(ValueError):
        unpack_signs(torch.tensor([0]), 65)
    with pytest.raises(ValueError):
        unpack_signs(torch.tensor([[0, 0]]), 129)
    with pytest.raises(ValueError):
        unpack_signs(torch.tensor([0]), 0)
    with pytest.raises(ValueError):
        unpack_signs(torch.tensor([0]), -1)
    # the edge is allowed
    assert unpack_signs(torch.tensor([[0, -1]]), 128).shape == (1, 128)


# ----------------------------------------------------------------------------- popcount


def test_popcount_hand_made():
    words = torch.tensor([0, -1, INT64_MIN, 0b1011, 1, (1 << 63) - 1, -2], dtype=torch.int64)
    out = popcount(words)
    assert out.dtype == torch.int64
    assert out.tolist() == [0, 64, 1, 3, 1, 63, 63]


def test_popcount_keeps_shape_and_matches_python():
    g = torch.Generator().manual_seed(3)
    words = torch.randint(
        INT64_MIN, torch.iinfo(torch.int64).max, (3, 4, 5), generator=g, dtype=torch.int64
    )
    words[0, 0, 0] = -1
    words[0, 0, 1] = INT64_MIN
    out = popcount(words)
    assert out.shape == words.shape
    assert out.dtype == torch.int64
    expected = [bin(v & ((1 << 64) - 1)).count("1") for v in words.flatten().tolist()]
    assert out.flatten().tolist() == expected


# ----------------------------------------------------------------------------- pack_conv_weight


def test_pack_conv_weight_hand_made_layout():
    w = torch.zeros(2, 3, 1, 2)
    w[0, :, 0, 0] = torch.tensor([-1.0, 2.0, -3.0])  # 0b101 = 5
    w[0, :, 0, 1] = torch.tensor([1.0, -1.0, 1.0])  # 0b010 = 2
    w[1, :, 0, 0] = torch.tensor([-0.0, 0.0, -1.0])  # 0b100 = 4
    w[1, :, 0, 1] = torch.tensor([-1.0, -1.0, -1.0])  # 0b111 = 7
    out = pack_conv_weight(w)
    assert out.dtype == torch.int64
    assert out.shape == (2, 1, 2, 1)
    assert out.tolist() == [[[[5], [2]]], [[[4], [7]]]]


def test_pack_conv_weight_kh_before_kw():
    w = torch.ones(1, 2, 2, 3)
    w[0, 0, 1, 2] = -1.0  # (kh=1, kw=2) channel 0 -> 1
    w[0, 1, 0, 1] = -1.0  # (kh=0, kw=1) channel 1 -> 2
    out = pack_conv_weight(w)
    assert out.shape == (1, 2, 3, 1)
    assert out[..., 0].tolist() == [[[0, 2, 0], [0, 0, 1]]]


@pytest.mark.parametrize("c", [1, 3, 63, 64, 65, 130])
def test_pack_conv_weight_matches_the_python_oracle(c):
    w = _with_zeros(torch.randn(4, c, 3, 2), seed=c)
    out = pack_conv_weight(w)
    assert out.shape == (4, 3, 2, (c + 63) // 64)
    assert torch.equal(out, _ref_pack(w.permute(0, 2, 3, 1)))


def test_pack_conv_weight_padding_bits_zero():
    out = pack_conv_weight(-torch.ones(2, 65, 3, 3))
    assert (out[..., 0] == -1).all()
    assert (out[..., 1] == 1).all()


# ----------------------------------------------------------------------------- pack_activations


def test_pack_activations_hand_made_layout_and_shift():
    x = torch.zeros(1, 2, 1, 2)
    x[0, :, 0, 0] = torch.tensor([-1.0, 1.0])  # bits 1,0 -> 1
    x[0, :, 0, 1] = torch.tensor([1.0, -1.0])  # bits 0,1 -> 2
    out = pack_activations(x)
    assert out.dtype == torch.int64
    assert out.shape == (1, 1, 2, 1)
    assert out.tolist() == [[[[1], [2]]]]
    shift = torch.tensor([1.0, 0.0])
    # sums: (0,0) -> [0, 1] -> 0 ; (0,1) -> [2, -1] -> 2
    assert pack_activations(x, shift).tolist() == [[[[0], [2]]]]
    assert pack_activations(x, None).tolist() == [[[[1], [2]]]]


def test_pack_activations_negative_zero_without_shift_is_bit_zero():
    x = torch.full((1, 3, 2, 2), -0.0)
    assert torch.signbit(x).all()
    assert pack_activations(x).flatten().tolist() == [0, 0, 0, 0]
    # -0.0 + -0.0 = -0.0 -> sign +1 -> bit 0 as well
    assert pack_activations(x, torch.full((3,), -0.0)).flatten().tolist() == [0, 0, 0, 0]


def test_pack_activations_linear_input_hand_made():
    x = torch.tensor([[-0.5, -0.5, 0.0], [1.0, -1.5, -0.0]])
    out = pack_activations(x)
    assert out.dtype == torch.int64
    assert out.shape == (2, 1)
    assert out.tolist() == [[0b011], [0b010]]
    shift = torch.tensor([-1.0, 1.0, -0.0])
    # row0 sums [-1.5, 0.5, 0.0] -> 0b001 ; row1 sums [0.0, -0.5, -0.0] -> 0b010
    assert pack_activations(x, shift).tolist() == [[0b001], [0b010]]


def test_pack_activations_shift_crossing_zero_over_two_words():
    c = 70
    x = torch.full((1, c, 1, 1), 0.3)
    shift = torch.tensor([-0.5 if i % 2 == 0 else 0.5 for i in range(c)])
    out = pack_activations(x, shift)
    assert out.shape == (1, 1, 1, 2)
    # even channels negative: 0x5555... in word 0, channels 64, 66, 68 -> bits 0, 2, 4
    assert out.flatten().tolist() == [0x5555555555555555, 0b10101]
    # exact cancellation gives 0.0 -> +1 -> bit 0
    assert pack_activations(x, torch.full((c,), -0.3)).flatten().tolist() == [0, 0]
    assert pack_activations(x).flatten().tolist() == [0, 0]


@pytest.mark.parametrize("c", [1, 3, 63, 64, 65, 130])
@pytest.mark.parametrize("with_shift", [False, True])
def test_pack_activations_matches_the_python_oracle(c, with_shift):
    torch.manual_seed(c)
    x = _with_zeros(torch.randn(2, c, 3, 4), seed=c + 7)
    shift = torch.randn(c) * 0.5 if with_shift else None
    out = pack_activations(x, shift)
    assert out.shape == (2, 3, 4, (c + 63) // 64)
    s = x if shift is None else x + shift.view(1, c, 1, 1)
    assert torch.equal(out, _ref_pack(s.permute(0, 2, 3, 1)))
    # linear form
    x2 = _with_zeros(torch.randn(3, c), seed=c + 11)
    out2 = pack_activations(x2, shift)
    assert out2.shape == (3, (c + 63) // 64)
    s2 = x2 if shift is None else x2 + shift
    assert torch.equal(out2, _ref_pack(s2))


# ----------------------------------------------------------------------------- kernel registry


def test_list_kernels_contents():
    names = list_kernels()
    assert isinstance(names, list)
    assert "reference" in names
    if NUMBA:
        assert "numba" in names


def test_get_kernel_unknown_name_lists_available():
    with pytest.raises(ValueError, match="reference"):
        get_kernel("no-such-kernel")


def test_get_kernel_auto_prefers_numba():
    expected = "numba" if NUMBA else "reference"
    assert type(get_kernel("auto")) is type(get_kernel(expected))
    assert type(get_kernel()) is type(get_kernel(expected))
    for name in list_kernels():
        k = get_kernel(name)
        assert callable(k.conv2d) and callable(k.linear)


# ----------------------------------------------------------------------------- conv2d


def _conv_case(kernel_name, n, c, o, h, w, ks, stride, padding, seed):
    g = torch.Generator().manual_seed(seed)
    x = _with_zeros(torch.randn(n, c, h, w, generator=g), seed=seed + 1)
    wt = _with_zeros(torch.randn(o, c, *ks, generator=g), seed=seed + 2)
    expected = TF.conv2d(_sign(x), _sign(wt), stride=stride, padding=padding)
    k = get_kernel(kernel_name)
    out = k.conv2d(pack_activations(x), pack_conv_weight(wt), c, ks, stride, padding)
    oh = (h + 2 * padding[0] - ks[0]) // stride[0] + 1
    ow = (w + 2 * padding[1] - ks[1]) // stride[1] + 1
    assert out.dtype == torch.int32
    assert tuple(out.shape) == (n, o, oh, ow)
    assert torch.equal(out, expected.round().to(torch.int32)), (
        (out - expected.to(torch.int32)).abs().max()
    )
    return out


_GEOMS = [
    (ks, (s, s), (p, p)) for ks in [(1, 1), (3, 3), (1, 3)] for s in [1, 2] for p in [0, 1, 2]
] + [
    ((3, 3), (2, 1), (1, 0)),
    ((1, 3), (1, 2), (0, 2)),
    ((3, 1), (2, 2), (2, 1)),
]


@pytest.mark.parametrize("kernel_name", KERNELS)
@pytest.mark.parametrize("c", [1, 3, 63, 64, 65, 130])
@pytest.mark.parametrize("ks, stride, padding", _GEOMS, ids=lambda v: "x".join(map(str, v)))
def test_conv2d_equals_fconv2d_on_signs(kernel_name, c, ks, stride, padding):
    # batch 1 or 3, alternating over the grid so that every C and every geometry
    # meets both (one kernel call per case keeps the grid fast)
    n = 1 if (c + sum(ks) + stride[0] + padding[0]) % 2 == 0 else 3
    _conv_case(kernel_name, n, c, 4, 5, 7, ks, stride, padding, seed=c * 31 + n)


@pytest.mark.parametrize("kernel_name", KERNELS)
@pytest.mark.parametrize(
    "h, w, ks, stride, padding",
    [
        (1, 1, (1, 1), (1, 1), (0, 0)),
        (1, 1, (3, 3), (1, 1), (1, 1)),
        (2, 9, (3, 3), (1, 1), (1, 1)),
        (3, 3, (3, 3), (2, 2), (0, 0)),
        (6, 4, (3, 3), (2, 2), (1, 1)),
        (4, 8, (1, 3), (2, 1), (2, 0)),
    ],
)
def test_conv2d_other_input_shapes(kernel_name, h, w, ks, stride, padding):
    _conv_case(kernel_name, 2, 65, 3, h, w, ks, stride, padding, seed=h * 100 + w)


@pytest.mark.parametrize("kernel_name", KERNELS)
def test_conv2d_by_hand_one_channel_zero_padding(kernel_name):
    # sign(x) = [[ 1,-1, 1],
    #            [-1,-1, 1],
    #            [ 1, 1, 1]]   (x[0,0] = 0.0 and x[2,2] = -0.0 are +1)
    x = torch.tensor([[0.0, -1.0, 2.0], [-3.0, -0.5, 1.0], [4.0, 1.0, -0.0]]).view(1, 1, 3, 3)
    w = torch.tensor([[1.0, 1.0, -1.0], [-1.0, 1.0, 1.0], [1.0, -1.0, -1.0]]).view(1, 1, 3, 3)
    k = get_kernel(kernel_name)
    out = k.conv2d(pack_activations(x), pack_conv_weight(w), 1, (3, 3), (1, 1), (1, 1))
    assert out.dtype == torch.int32
    assert out.shape == (1, 1, 3, 3)
    # top-left: only x[0:2,0:2] * w[1:3,1:3] is valid: 1*1 + (-1)*1 + (-1)*(-1) + (-1)*(-1) = 2
    # (padding as +1 would give 3, as -1 would give 1)
    assert out[0, 0, 0, 0].item() == 2
    # centre: full dot product 1-1-1+1-1+1+1-1-1 = -1
    assert out[0, 0, 1, 1].item() == -1
    # bottom-right: x[1:3,1:3] * w[0:2,0:2] = (-1)*1 + 1*1 + 1*(-1) + 1*1 = 0
    assert out[0, 0, 2, 2].item() == 0
    # top-right: x[0:2,1:3] * w[1:3,0:2] = (-1)(-1) + 1*1 + (-1)*1 + 1*(-1) = 0
    assert out[0, 0, 0, 2].item() == 0


@pytest.mark.parametrize("kernel_name", KERNELS)
def test_conv2d_border_outputs_of_a_1x1_kernel_with_padding_are_zero(kernel_name):
    x = -torch.ones(1, 3, 2, 2)
    w = torch.ones(2, 3, 1, 1)
    w[1] = -1.0
    k = get_kernel(kernel_name)
    out = k.conv2d(pack_activations(x), pack_conv_weight(w), 3, (1, 1), (1, 1), (1, 1))
    assert out.shape == (1, 2, 4, 4)
    expected = torch.zeros(1, 2, 4, 4, dtype=torch.int32)
    expected[0, 0, 1:3, 1:3] = -3
    expected[0, 1, 1:3, 1:3] = 3
    assert torch.equal(out, expected)


# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize("kernel_name", KERNELS)
def test_linear_by_hand(kernel_name):
    x = torch.tensor([[1.0, -1.0, 0.0]])  # signs [1, -1, 1]
    w = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 1.0, -0.0]])  # signs [1,1,1], [-1,1,1]
    k = get_kernel(kernel_name)
    out = k.linear(pack_activations(x), pack_signs(w), 3)
    assert out.dtype == torch.int32
    assert out.tolist() == [[1, -1]]


@pytest.mark.parametrize("kernel_name", KERNELS)
@pytest.mark.parametrize("c", [1, 3, 63, 64, 65, 130])
@pytest.mark.parametrize("n", [1, 4])
def test_linear_equals_matmul_on_signs(kernel_name, c, n):
    g = torch.Generator().manual_seed(c * 10 + n)
    x = _with_zeros(torch.randn(n, c, generator=g), seed=c + n)
    w = _with_zeros(torch.randn(5, c, generator=g), seed=c - n)
    k = get_kernel(kernel_name)
    out = k.linear(pack_activations(x), pack_signs(w), c)
    assert out.dtype == torch.int32
    assert out.shape == (n, 5)
    expected = _sign(x) @ _sign(w).T
    assert torch.equal(out, expected.round().to(torch.int32))


@pytest.mark.parametrize("kernel_name", KERNELS)
def test_linear_all_equal_signs_gives_plus_and_minus_c(kernel_name):
    c = 130
    k = get_kernel(kernel_name)
    x = -torch.ones(2, c)
    w = torch.stack([-torch.ones(c), torch.ones(c), torch.zeros(c)])
    out = k.linear(pack_activations(x), pack_signs(w), c)
    assert out.tolist() == [[c, -c, -c], [c, -c, -c]]


# ----------------------------------------------------------------------------- reference == numba


@pytest.mark.skipif(not NUMBA, reason="numba is not installed")
@pytest.mark.parametrize(
    "n, c, h, w, ks, stride, padding",
    [
        (1, 130, 6, 9, (3, 3), (1, 1), (1, 1)),
        (4, 65, 5, 7, (3, 3), (2, 2), (2, 2)),
        (3, 3, 7, 5, (1, 3), (2, 1), (0, 1)),
    ],
)
def test_reference_and_numba_agree(n, c, h, w, ks, stride, padding):
    seed = c + n
    a = _conv_case("reference", n, c, 6, h, w, ks, stride, padding, seed)
    b = _conv_case("numba", n, c, 6, h, w, ks, stride, padding, seed)
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(seed)
    x = _with_zeros(torch.randn(n, c, generator=g), seed=1)
    wt = _with_zeros(torch.randn(7, c, generator=g), seed=2)
    xb, wb = pack_activations(x), pack_signs(wt)
    assert torch.equal(
        get_kernel("reference").linear(xb, wb, c), get_kernel("numba").linear(xb, wb, c)
    )
