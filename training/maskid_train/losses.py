"""Losses: distillation pull to the frozen dlib teacher + a light CosFace term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_pull(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(student_i, teacher_i): pulls every view (masked or not) to the teacher's
    descriptor of the unmasked chip, which keeps dlib's geometry for unmasked faces."""
    return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()


class CosFace(nn.Module):
    """Large-margin cosine loss (Wang et al. 2018): s * (cos(theta_y) - m) for the true class.

    The class centres start at the teacher's normalised per-identity mean descriptors, so the
    head is meaningful from step 0 and its early gradients do not tear the trunk apart.
    """

    def __init__(self, centres: torch.Tensor, s: float = 30.0, m: float = 0.25) -> None:
        super().__init__()
        self.weight = nn.Parameter(F.normalize(centres.float(), dim=1).clone())
        self.s, self.m = s, m

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(emb, dim=1) @ F.normalize(self.weight, dim=1).t()
        logits = self.s * (cos - self.m * F.one_hot(labels, cos.shape[1]).to(cos.dtype))
        return F.cross_entropy(logits, labels)


def class_centres(teacher: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    t = F.normalize(teacher.float(), dim=1)
    sums = torch.zeros(n_classes, t.shape[1]).index_add_(0, labels, t)
    return F.normalize(sums, dim=1)
