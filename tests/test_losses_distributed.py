"""Two real gloo processes, each with half of a fixed batch, agree with one process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pretrain.losses import DINOLoss, iBOTPatchLoss, sinkhorn_knopp

pytestmark = pytest.mark.distributed

B, K, N_LOCAL, M_PER_RANK = 6, 11, 3, (5, 9)  # iBOT: ranks hold different numbers of masked patches


def fixed_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n_patches = sum(M_PER_RANK)
    return {
        "teacher": torch.randn(2, B, K, generator=g, dtype=torch.float64).float(),
        "student": torch.randn(2 + N_LOCAL, B, K, generator=g),
        "center": torch.randn(1, K, generator=g) * 0.1,
        "t_patch": torch.randn(n_patches, K, generator=g),
        "s_patch": torch.randn(n_patches, K, generator=g),
        "w_patch": torch.rand(n_patches, generator=g),
    }


def compute(x: dict[str, torch.Tensor], rows: slice, patches: slice) -> dict[str, torch.Tensor]:
    """The losses of one process holding batch rows ``rows`` and masked patches ``patches``."""
    teacher, student = x["teacher"][:, rows], x["student"][:, rows]
    dino = DINOLoss(K, center_momentum=0.9)
    dino.center.copy_(x["center"])
    probs = dino.teacher_probs(teacher.flatten(0, 1), 0.04, "softmax").view(2, -1, K)
    dino.update_center(teacher.flatten(0, 1))
    out = {"dino": dino(list(student), list(probs)), "dino_center": dino.center.clone()}
    # Sinkhorn-Knopp over both global crops' rows, as the trainer does
    sk = sinkhorn_knopp(teacher.flatten(0, 1), 0.04).view(2, -1, K)
    out["sk_probs"] = sk
    out["dino_sk"] = DINOLoss(K)(list(student), list(sk))
    ibot = iBOTPatchLoss(K)
    ibot.center.copy_(x["center"])
    t_patch, s_patch, w = x["t_patch"][patches], x["s_patch"][patches], x["w_patch"][patches]
    n_images = 2 * teacher.shape[1]
    out["ibot"] = ibot.forward_masked(s_patch, ibot.teacher_probs(t_patch, 0.07), w, None, n_images)
    ibot.update_center(t_patch)
    out["ibot_center"] = ibot.center.clone()
    out["ibot_sk"] = ibot.teacher_probs(t_patch, 0.07, "sinkhorn_knopp")
    return out


def worker(rank: int, store_path: str, out_dir: str) -> None:
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    try:
        half = B // 2
        starts = (0, M_PER_RANK[0])
        rows = slice(rank * half, (rank + 1) * half)
        patches = slice(starts[rank], starts[rank] + M_PER_RANK[rank])
        torch.save(compute(fixed_inputs(), rows, patches), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    one = compute(fixed_inputs(), slice(None), slice(None))
    tol = {"atol": 1e-6, "rtol": 1e-6}
    # losses are per-process batch means; DDP averages them over processes (equal batch halves)
    for key in ("dino", "dino_sk"):
        torch.testing.assert_close((r0[key] + r1[key]) / 2, one[key], **tol)
    # iBOT divides by each process's images; the global loss is again the mean over processes
    torch.testing.assert_close((r0["ibot"] + r1["ibot"]) / 2, one["ibot"], **tol)
    for key in ("dino_center", "ibot_center"):  # the center is the mean over the global batch
        torch.testing.assert_close(r0[key], one[key], **tol)
        torch.testing.assert_close(r1[key], one[key], **tol)
    torch.testing.assert_close(torch.cat([r0["sk_probs"], r1["sk_probs"]], dim=1), one["sk_probs"], **tol)
    torch.testing.assert_close(torch.cat([r0["ibot_sk"], r1["ibot_sk"]]), one["ibot_sk"], **tol)
