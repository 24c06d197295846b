"""Teacher centering: pure functions of tensors, aware of torch.distributed.

Two ways to keep the teacher from collapsing (DINOv2, Oquab et al. 2023, section 3):

- ``softmax``: subtract an exponential moving average of the teacher logits (the center) before a
  sharpened softmax (DINO, Caron et al. 2021, eq. 4). The center is the mean over the *global*
  batch: sums and row counts are all-reduced, so unequal shards (iBOT's masked patches) are fine.
- ``sinkhorn_knopp``: a few Sinkhorn-Knopp iterations make the batch's assignment matrix doubly
  stochastic, every prototype used equally (SwAV, Caron et al. 2020, section 3.1; DINOv2 uses 3).
  Row sums over prototypes and the total row count are all-reduced, so N processes holding
  shards of a batch get exactly the rows that one process would get on the whole batch.

Every function runs in fp32 and without gradients; the distributed paths need an initialised
default process group (no-ops otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

_TINY = torch.finfo(torch.float32).tiny


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(x: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    """In place all_reduce when a process group is up; identity otherwise."""
    if _distributed():
        dist.all_reduce(x, op=op)
    return x


@torch.no_grad()
def softmax_center(teacher_logits: Tensor, center: Tensor, temp: float) -> Tensor:
    """softmax((logits - center) / temp) over prototypes: [N, K], [1, K], temp -> probs [N, K] fp32."""
    return torch.softmax((teacher_logits.float() - center.float()) / temp, dim=-1)


@torch.no_grad()
def update_center(center: Tensor, teacher_logits: Tensor, momentum: float) -> Tensor:
    """EMA of the global-batch mean logit: ``momentum * center + (1 - momentum) * mean`` -> [1, K].

    ``teacher_logits`` [N, K] is this process's shard; the mean is over all processes' rows
    (sum and count all-reduced). With no rows anywhere the center is returned unchanged.
    """
    logits = teacher_logits.float()
    total = logits.sum(dim=0, keepdim=True)
    count = torch.tensor([float(logits.shape[0])], device=logits.device)
    _all_reduce(total)
    _all_reduce(count)
    ema = center * momentum + (total / count.clamp_min(1.0)) * (1.0 - momentum)
    return torch.where(count > 0, ema, center)  # no host sync on accelerators


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temp: float, n_iterations: int = 3) -> Tensor:
    """Sinkhorn-Knopp normalised teacher assignments: [N, K] logits -> [N, K] probs (rows sum to 1).

    Q = exp(logits / temp), then alternately each prototype's column gets total mass 1/K and each
    row mass 1/B (B = global row count), finally scaled by B so rows are distributions. The
    global max logit is subtracted first: exp cannot overflow, and the result is unchanged because
    Q is normalised by its total. Columns are summed over all processes (all_reduce). Every row
    must be real: pass only the masked patches, not a padded buffer (B counts the rows).
    """
    logits = teacher_logits.float()
    n_rows, k = logits.shape
    big = torch.full((), -torch.inf, device=logits.device)
    if n_rows:
        big = logits.max()
    _all_reduce(big, dist.ReduceOp.MAX)
    batch = torch.tensor([float(n_rows)], device=logits.device)
    _all_reduce(batch)
    q = torch.exp((logits - big) / temp).t()  # [K, N]
    total = q.sum()
    _all_reduce(total)
    q /= total
    for _ in range(n_iterations):
        col = q.sum(dim=1, keepdim=True)  # mass per prototype, over the global batch
        _all_reduce(col)
        q /= col.clamp_min_(_TINY)  # a prototype whose mass underflowed stays at 0 instead of NaN
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min_(_TINY)  # per row: local
        q /= batch
    q *= batch
    return q.t()


CENTERING: dict[str, Callable[..., Tensor]] = {"softmax": softmax_center, "sinkhorn_knopp": sinkhorn_knopp}


def check_centering(name: str) -> str:
    """``name`` if it is a known centering, else a ValueError listing the valid choices."""
    if name not in CENTERING:
        raise ValueError(f"unknown centering {name!r}; valid choices: {sorted(CENTERING)}")
    return name


class CenteredTeacher(nn.Module):
    """The stateful part shared by the DINO and iBOT losses: an EMA ``center`` [1, K] and the
    teacher's target distributions (softmax centering with it, or Sinkhorn-Knopp without it)."""

    center: Tensor

    def __init__(self, dim: int, student_temp: float, center_momentum: float) -> None:
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def teacher_probs(
        self, teacher_logits: Tensor, teacher_temp: float, centering: str = "softmax"
    ) -> Tensor:
        """[N, K] teacher logits -> [N, K] fp32 target distributions (rows sum to 1)."""
        if check_centering(centering) == "softmax":
            return softmax_center(teacher_logits, self.center, teacher_temp)
        return sinkhorn_knopp(teacher_logits, teacher_temp)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """center <- EMA with the mean of ``teacher_logits`` [N, K] over all processes."""
        self.center.copy_(update_center(self.center, teacher_logits, self.center_momentum))
