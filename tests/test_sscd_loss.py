"""The SSCD loss against a slow, obvious computation over pairs, and across two gloo processes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pretrain.losses.koleo import koleo_loss
from pretrain.losses.sscd import SSCDLoss, infonce, instance_ids, view_entropy


def slow_infonce(x: torch.Tensor, ids: list[int], t: float) -> torch.Tensor:
    """For each row i and each other row j of its instance: -log(e^{s_ij/t} / (e^{s_ij/t} + sum over
    rows k of other instances of e^{s_ik/t})); averaged over i's positives, then over rows."""
    rows = []
    for i in range(x.shape[0]):
        terms = []
        for j in range(x.shape[0]):
            if j == i or ids[j] != ids[i]:
                continue
            pos = torch.exp(x[i] @ x[j] / t)
            neg = sum(torch.exp(x[i] @ x[k] / t) for k in range(x.shape[0]) if ids[k] != ids[i])
            terms.append(-torch.log(pos / (pos + neg)))
        if terms:
            rows.append(torch.stack(terms).mean())
    return torch.stack(rows).mean()


def slow_entropy(x: torch.Tensor, ids: list[int], n_views: int) -> torch.Tensor:
    """Per view: for each instance's first row, -log of the distance to the nearest row of another
    instance in that view; mean over those rows, then over views."""
    per_view = []
    b = x.shape[0] // n_views
    for v in range(n_views):
        rows = list(range(v * b, (v + 1) * b))
        firsts = [i for n, i in enumerate(rows) if ids[i] not in [ids[r] for r in rows[:n]]]
        logs = []
        for i in firsts:
            d = min(torch.linalg.norm(x[i] - x[k]) for k in firsts if k != i)
            logs.append(-torch.log(d))
        per_view.append(torch.stack(logs).mean())
    return torch.stack(per_view).mean()


def batch(
    n_images: int, n_views: int, dim: int, seed: int, duplicate: bool = False
) -> tuple[torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_images, dim, generator=g, dtype=torch.float64)
    views = [F.normalize(base + 0.7 * torch.randn(n_images, dim, generator=g, dtype=torch.float64), dim=1)
             for _ in range(n_views)]  # fmt: skip
    image_ids = list(range(100, 100 + n_images))
    if duplicate:  # the same photo drawn twice into the batch: rows 0 and 1 are one instance
        image_ids[1] = image_ids[0]
    return torch.cat(views), image_ids * n_views


@pytest.mark.parametrize(("n_images", "n_views", "duplicate"), [(5, 2, False), (4, 3, False), (6, 2, True)])
def test_infonce_and_entropy_equal_the_slow_pairwise_computation(
    n_images: int, n_views: int, duplicate: bool
) -> None:
    x, ids = batch(n_images, n_views, 8, seed=n_images, duplicate=duplicate)
    t = 0.3
    want = slow_infonce(x, ids, t)
    got = infonce(x, torch.tensor(ids), t)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(view_entropy(x, torch.tensor(ids), n_views).double(), slow_entropy(x, ids, n_views),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    # the gradients agree as well (the loop is differentiable too)
    a, b = x.clone().float().requires_grad_(), x.clone().requires_grad_()
    infonce(a, torch.tensor(ids), t).backward()
    slow_infonce(b, ids, t).backward()
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-5)


def test_sscd_temperature_and_two_views_reduce_to_the_papers_mean() -> None:
    """With 2 views and distinct images, each row has one positive: SSCD's sum over positives / rows."""
    x, ids = batch(6, 2, 16, seed=1)
    x = x.float()
    sim = x @ x.t() / 0.05
    n = x.shape[0]
    terms = []
    for i in range(n):
        j = (i + n // 2) % n
        neg = [k for k in range(n) if ids[k] != ids[i]]
        terms.append(-(sim[i, j] - torch.logsumexp(torch.stack([sim[i, j], *sim[i, neg]]), 0)))
    torch.testing.assert_close(infonce(x, torch.tensor(ids), 0.05), torch.stack(terms).sum() / n)


def test_total_is_infonce_plus_weighted_koleo_and_koleo_is_the_shared_term() -> None:
    x, ids = batch(8, 2, 16, seed=2)
    x = x.float()
    loss = SSCDLoss(n_views=2, temperature=0.05, entropy_weight=30.0)
    total, parts = loss(x, torch.tensor(ids))
    torch.testing.assert_close(total, parts["infonce"] + 30.0 * parts["koleo"])
    # the entropy term is pretrain.losses.koleo's KoLeo, view by view (no other instance rows)
    want = (koleo_loss(x[:8]) + koleo_loss(x[8:])) / 2
    torch.testing.assert_close(parts["koleo"], want)
    assert set(parts) == {"infonce", "koleo"}


def test_identical_views_and_a_single_image_stay_finite() -> None:
    x = F.normalize(torch.randn(1, 8), dim=1).repeat(2, 1).requires_grad_()
    loss = SSCDLoss(2, 0.05, 30.0)
    total, parts = loss(x, torch.tensor([7, 7]))  # one image: no negatives, KoLeo of one row is 0
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.isfinite(total) and parts["infonce"] == 0


def test_positives_closer_than_negatives_give_a_lower_loss() -> None:
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    e = torch.eye(3)
    close = torch.cat([e, F.normalize(e + 0.05, dim=1)])
    swapped = torch.cat([e, e[[1, 2, 0]]])
    assert infonce(close, ids, 0.05) < 0.01 < math.log(2) < infonce(swapped, ids, 0.05)


def test_instance_ids_are_stable_and_distinct() -> None:
    a = instance_ids(["n01440764_tench", "n01491361_tiger_shark", "n01440764_tench"])
    assert a[0] == a[2] != a[1]
    assert a.dtype == torch.long
    assert (
        a.tolist() == instance_ids(["n01440764_tench", "n01491361_tiger_shark", "n01440764_tench"]).tolist()
    )


# ---------------------------------------------------------------- two processes


def _rank_rows(
    x: torch.Tensor, ids: list[int], rank: int, world: int, n_views: int
) -> tuple[torch.Tensor, list[int]]:
    """Rank ``rank``'s share: its images' rows of every view, view-major (as the loader gives them)."""
    b = x.shape[0] // n_views
    per = b // world
    idx = [v * b + i for v in range(n_views) for i in range(rank * per, (rank + 1) * per)]
    return x[idx], [ids[i] for i in idx]


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        x, ids = batch(6, 2, 8, seed=3)
        rows, row_ids = _rank_rows(x.float(), ids, rank, 2, 2)
        rows.requires_grad_()
        total, parts = SSCDLoss(2, 0.1, 0.0)(rows, torch.tensor(row_ids))
        total.backward()
        torch.save({"loss": total.detach(), "grad": rows.grad}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_see_the_global_batch_as_negatives(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"rank{k}.pt") for k in range(2)]
    x, ids = batch(6, 2, 8, seed=3)
    x = x.float()
    parts = [_rank_rows(x, ids, k, 2, 2) for k in range(2)]
    whole = torch.cat([p[0] for p in parts]).requires_grad_()
    loss = infonce(whole, torch.tensor([i for p in parts for i in p[1]]), 0.1)
    loss.backward()
    # DDP averages the ranks' losses (equal row counts) and their gradients
    torch.testing.assert_close((r[0]["loss"] + r[1]["loss"]) / 2, loss.detach())
    torch.testing.assert_close(torch.cat([r[0]["grad"], r[1]["grad"]]) / 2, whole.grad)
