"""The KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity search", eq. 6).

L = -1/n sum_i log(d_i + eps), d_i the distance from x_i to its nearest other sample, all vectors
L2-normalised: a Kozachenko-Leonenko differential-entropy estimate, maximised to spread the batch's
features evenly (DINOv2, Oquab et al. 2023, section 3, on the student's class tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def nearest_neighbours(x: Tensor) -> Tensor:
    """Index [B] of each row's nearest other row, by dot product of L2-normalised rows [B, D]."""
    dots = x @ x.t()
    dots.fill_diagonal_(-2.0)  # below any cosine: a row is never its own neighbour
    return dots.argmax(dim=1)


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """-mean_i log(||x_i - x_nn(i)|| + eps) on L2-normalised rows of ``x`` [B, D] -> scalar fp32.

    Always computed in fp32, autocast off. Why: the reference runs it on the fp16 features it is
    handed (its ``autocast(enabled=False)`` does not cast them), so when a batch holds two identical
    images the distance is 0, eps 1e-8 rounds to 0 in fp16, and the loss is log(0) = inf. In fp32
    the distance is ``||x_i - x_j + eps||`` (``F.pairwise_distance``), about sqrt(D) * 1e-8 for
    duplicates, so loss and gradient stay finite. A batch of one gives 0 (connected to ``x``).
    """
    if x.dim() != 2:
        raise ValueError(f"KoLeo needs a [B, D] batch, got {tuple(x.shape)}")
    if x.shape[0] < 2:  # no other sample to be near: no spreading term (and no crash at batch 1)
        return x.float().sum() * 0.0
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
        with torch.no_grad():
            idx = nearest_neighbours(x)
        distances = F.pairwise_distance(x, x[idx], p=2, eps=eps)
        return -torch.log(distances + eps).mean()


class KoLeoLoss(nn.Module):
    """:func:`koleo_loss` as a module: ``forward(x [B, D]) -> scalar`` (fp32, finite on duplicates)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return koleo_loss(x, self.eps)
