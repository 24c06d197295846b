"""The SSCD objective: InfoNCE over edited views plus a differential-entropy term (Pizzi et al. 2022).

Notation: a batch holds ``n_views`` edited views of each of B images, view-major ([V*B, D]: every
image's view 0, then every image's view 1, ...), L2-normalised descriptors, and an instance id per
row (views of one image share it; two rows of one photo drawn twice into a batch do too).

InfoNCE (paper eq. 2, sscd/train.py ``SSCD.loss``): for row i and each positive j (same instance,
j != i), ``-log( e^{s_ij/T} / (e^{s_ij/T} + sum_{k in N(i)} e^{s_ik/T}) )`` with ``s`` the cosine
similarity and N(i) the rows of *other* instances. As SSCD: the other positives and i itself are not
in the denominator; under torch.distributed the columns are the whole global batch (gathered with
gradients, summed back to their rank as SSCD's ``cross_gpu_batch(..., SUM)``) and the rows are this
rank's, so DDP's gradient average gives the gradient of the global mean. Aggregation: each row's
mean over its positives, then the mean over rows. That is SSCD's mixup-branch reduction; its plain
branch sums over positives and divides by the rows, the same number for 2 views and no duplicate
instances (SSCD's setting) and kept at the same scale here when ``n_views > 2``. (Deviation:
log-sum-exp instead of SSCD's ``exp(s/T) / (... + 1e-6)``; equal up to that 1e-6.)

Entropy (paper eq. 3, Sablayrolles et al. 2019): ``-mean_i log(d_i)``, d_i the distance from row i
to its nearest row of another instance, weighted by ``entropy_weight`` (SSCD: 30). We reuse
:func:`pretrain.losses.koleo.koleo_loss`, the same Kozachenko-Leonenko term DINOv2 uses, on each
view's rows separately (one row per instance: a photo drawn twice counts once) and average over
views; per device. Deviation: SSCD's nearest other instance is searched among all views of the
global batch, ours among the same view's rows of this device (so a view never meets its own
image's other views, as ``pretrain.ssl.sum_koleo`` does for DINOv2's two global crops).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pretrain.losses.koleo import koleo_loss


def instance_ids(keys: Sequence[str]) -> Tensor:
    """Stable int64 ids [B] of sample keys (blake2b, the same on every rank and process)."""
    return torch.tensor(
        [
            int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little", signed=True)
            for k in keys
        ],
        dtype=torch.long,
    )


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherRows(torch.autograd.Function):
    """All ranks' rows [W*N, D] in rank order; backward sums every rank's gradient of this rank's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]  # noqa: ANN001
        ctx.n, ctx.rank = x.shape[0], dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]  # noqa: ANN001
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_batch(x: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, int]:
    """``(all rows, all ids, offset of this rank's rows)``; the rows keep their gradient."""
    if not _distributed():
        return x, ids, 0
    all_ids = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(all_ids, ids.contiguous())
    return _GatherRows.apply(x), torch.cat(all_ids), dist.get_rank() * x.shape[0]


def infonce(
    x: Tensor, ids: Tensor, temperature: float, columns: Tensor | None = None,
    column_ids: Tensor | None = None, offset: int = 0,
) -> Tensor:  # fmt: skip
    """SSCD's InfoNCE (module docstring) of rows ``x`` [N, D] against ``columns`` [M, D] -> scalar fp32.

    ``ids`` [N] / ``column_ids`` [M]: instance ids; row i is column ``offset + i`` (itself). Without
    ``columns`` the rows are their own columns. Rows without a positive contribute nothing.
    """
    if columns is None:
        columns, column_ids = x, ids
    assert column_ids is not None
    sim = x.float() @ columns.float().t() / temperature  # [N, M]
    match = ids.view(-1, 1) == column_ids.view(1, -1)
    self_col = torch.zeros_like(match)
    self_col[torch.arange(x.shape[0]), offset + torch.arange(x.shape[0])] = True
    positive, negative = match & ~self_col, ~match
    neg_lse = torch.logsumexp(sim.masked_fill(~negative, float("-inf")), dim=1, keepdim=True)  # [N, 1]
    log_p = sim - torch.logaddexp(sim, neg_lse)  # log-probability of each column as i's positive
    n_pos = positive.sum(dim=1)
    per_row = (log_p.masked_fill(~positive, 0.0)).sum(dim=1) / n_pos.clamp_min(1)
    has = n_pos > 0
    return -(per_row[has]).sum() / has.sum().clamp_min(1)


def view_entropy(x: Tensor, ids: Tensor, n_views: int, eps: float = 1e-8) -> Tensor:
    """Mean over views of :func:`koleo_loss` on the view's rows, one per instance -> scalar fp32.

    ``x`` [V*B, D] view-major, ``ids`` [V*B]."""
    terms = []
    for rows, row_ids in zip(x.chunk(n_views), ids.chunk(n_views), strict=True):
        first: dict[int, int] = {}  # instance id -> its first row, in batch order
        for i, k in enumerate(row_ids.tolist()):
            first.setdefault(k, i)
        terms.append(koleo_loss(rows[list(first.values())], eps))
    return torch.stack(terms).mean()


class SSCDLoss(nn.Module):
    """``forward(descriptors [V*B, D] view-major, ids [V*B]) -> (total, {"infonce", "koleo"})``.

    total = infonce + entropy_weight * koleo; the parts are the unweighted terms (fp32, detached).
    """

    def __init__(self, n_views: int, temperature: float = 0.05, entropy_weight: float = 30.0) -> None:
        super().__init__()
        if n_views < 2:
            raise ValueError(f"SSCD needs at least 2 views per image (positives), got {n_views}")
        self.n_views, self.temperature, self.entropy_weight = n_views, temperature, entropy_weight

    def forward(self, x: Tensor, ids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x = x.float()
        columns, column_ids, offset = gather_batch(x, ids)
        nce = infonce(x, ids, self.temperature, columns, column_ids, offset)
        ent = view_entropy(x, ids, self.n_views) if self.entropy_weight else x.sum() * 0.0
        total = nce + self.entropy_weight * ent
        return total, {"infonce": nce.detach(), "koleo": ent.detach()}
