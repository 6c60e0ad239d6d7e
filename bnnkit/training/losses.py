"""Losses: cross-entropy with label smoothing, and ReActNet's distribution (KD) loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def distribution_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    r"""ReActNet's DistributionLoss: soft-target cross-entropy, batch mean.

    .. math:: L = \frac1B \sum_b -\sum_c \mathrm{softmax}(z^T_b / T)_c\,
              \log \mathrm{softmax}(z^S_b / T)_c

    No gradient flows to the teacher. ReActNet uses T = 1 and no hard-label term.
    """
    target = F.softmax(teacher.detach().float() / temperature, dim=1)
    log_p = F.log_softmax(student.float() / temperature, dim=1)
    return -(target * log_p).sum(dim=1).mean()


class TaskLoss(nn.Module):
    """Training loss: ``(1 - alpha) * CE(label smoothing) + alpha * distribution_loss`` when a
    teacher is given, else the cross-entropy alone."""

    def __init__(
        self,
        label_smoothing: float = 0.0,
        teacher: nn.Module | None = None,
        kd_alpha: float = 1.0,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.teacher = teacher
        self.kd_alpha = kd_alpha
        self.temperature = temperature
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> TaskLoss:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher stays in eval mode
        return self

    def forward(self, outputs: Tensor, targets: Tensor, inputs: Tensor) -> Tensor:
        if self.teacher is None:
            return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)
        with torch.no_grad():
            teacher_out = self.teacher(inputs)
        kd = distribution_loss(outputs, teacher_out, self.temperature)
        if self.kd_alpha >= 1.0:
            return kd
        ce = F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)
        return self.kd_alpha * kd + (1.0 - self.kd_alpha) * ce
