"""AdaBin's Maxout (docs/specs/adabin.md §3.4, test case 13), by hand."""

from __future__ import annotations

import torch

from bnnkit.nn import Maxout


def test_forward_and_gradients_case_13():
    m = Maxout(2).double()
    with torch.no_grad():
        m.pos_scale.copy_(torch.tensor([1.0, 2.0]))
        m.neg_scale.copy_(torch.tensor([0.25, -0.5]))  # channel 1: not monotone
    x = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64).repeat(1, 2, 1, 1).reshape(1, 2, 1, 3)
    x.requires_grad_(True)
    y = m(x)
    assert y[0, :, 0].tolist() == [[-0.5, 0.0, 3.0], [1.0, 0.0, 6.0]]
    y.sum().backward()
    assert x.grad[0, :, 0].tolist() == [[0.25, 0.0, 1.0], [-0.5, 0.0, 2.0]]
    assert m.pos_scale.grad.tolist() == [3.0, 3.0]  # sum of relu(x)
    assert m.neg_scale.grad.tolist() == [-2.0, -2.0]  # sum of -relu(-x)


def test_init_is_prelu_quarter_per_channel_and_works_on_2d_inputs():
    m = Maxout(3)
    assert m.pos_scale.shape == (3,) and torch.equal(m.pos_scale, torch.ones(3))
    assert torch.equal(m.neg_scale, torch.full((3,), 0.25))
    x = torch.tensor([[-4.0, 0.5, 2.0]])
    assert torch.equal(m(x), torch.tensor([[-1.0, 0.5, 2.0]]))
    assert torch.allclose(m(x), torch.nn.functional.prelu(x, torch.tensor([0.25])))
