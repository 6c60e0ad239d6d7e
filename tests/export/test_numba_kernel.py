"""The numba kernel's own parts: input packing on every memory layout, the vector-width hint.

A packed layer's output is a channels-last view, so the next packed layer usually receives a
channels-last input; the float model's layers give NCHW-contiguous ones; slices give strided
ones. The kernel packs each with its own loop: all must equal :func:`bnnkit.export.pack.
pack_activations` (tested against a pure-Python oracle in test_pack_spec.py).
"""

from __future__ import annotations

import pytest
import torch

from bnnkit.export.pack import pack_activations

numba_cpu = pytest.importorskip("bnnkit.export.kernels.numba_cpu", reason="numba is not installed")


def _with_zeros(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    flat = x.view(-1)
    flat[::7] = 0.0
    flat[3::11] = -0.0
    return x


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    wide = torch.zeros(x.shape[0], x.shape[1], x.shape[2], 2 * x.shape[3])
    wide[..., ::2] = x
    return {
        "nchw": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "strided": wide[..., ::2],
        "packed_layer_output": x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
    }


@pytest.mark.parametrize("c", [1, 3, 63, 64, 65, 130])
@pytest.mark.parametrize("with_shift", [False, True])
def test_every_layout_packs_like_the_reference(c, with_shift):
    torch.manual_seed(c)
    x = _with_zeros(torch.randn(2, c, 5, 6))
    shift = torch.randn(c) * 0.5 if with_shift else None
    expected = pack_activations(x, shift)
    for name, view in _layouts(x).items():
        assert torch.equal(view, x)
        got = numba_cpu.pack_activations(view, shift)
        assert torch.equal(got, expected), name


@pytest.mark.parametrize("c", [1, 64, 130])
def test_linear_input_packs_like_the_reference(c):
    torch.manual_seed(c)
    x = _with_zeros(torch.randn(4, c))
    shift = torch.randn(c)
    assert torch.equal(numba_cpu.pack_activations(x, shift), pack_activations(x, shift))
    assert torch.equal(numba_cpu.pack_activations(x[:, :]), pack_activations(x))
    assert torch.equal(numba_cpu.pack_activations(x.t().contiguous().t()), pack_activations(x))


class _Function:
    def __init__(self, attributes) -> None:
        self.attributes = attributes


def test_the_wide_vector_hint_is_added_to_the_function_being_compiled():
    fn = _Function(set())
    numba_cpu._prefer_wide_vectors(fn)
    assert fn.attributes == {'"prefer-vector-width"="512"'}


def test_a_refused_wide_vector_hint_is_not_an_error():
    # a future llvmlite might refuse unknown attributes: the kernel then compiles without it
    fn = _Function(frozenset())
    numba_cpu._prefer_wide_vectors(fn)
    assert fn.attributes == frozenset()
