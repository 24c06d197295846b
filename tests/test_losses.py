"""Losses and centering against slow, obviously-correct loop versions."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.losses import (
    CENTERING,
    DINOLoss,
    KoLeoLoss,
    dino_loss,
    iBOTPatchLoss,
    koleo_loss,
    sinkhorn_knopp,
    softmax_center,
    update_center,
)


def ce(p: list[float], logits: list[float], temp: float) -> float:
    """-sum_k p_k log softmax(logits / temp)_k, with Python floats."""
    z = [x / temp for x in logits]
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return -sum(pk * (zk - lse) for pk, zk in zip(p, z, strict=True))


def loop_dino(student: list[torch.Tensor], teacher: list[torch.Tensor], temp: float) -> float:
    terms = []
    for s_i, s in enumerate(student):
        for t_i, t in enumerate(teacher):
            if s_i == t_i:
                continue  # a global crop is not matched with its own view
            per_image = [ce(t[b].tolist(), s[b].tolist(), temp) for b in range(s.shape[0])]
            terms.append(sum(per_image) / len(per_image))
    return sum(terms) / len(terms), len(terms)


def test_dino_loss_matches_the_pair_loop_with_18_terms() -> None:
    torch.manual_seed(0)
    b, k = 3, 7
    student = [torch.randn(b, k, dtype=torch.float64) for _ in range(2 + 8)]
    teacher = [torch.softmax(torch.randn(b, k, dtype=torch.float64), -1) for _ in range(2)]
    want, n_terms = loop_dino(student, teacher, 0.1)
    assert n_terms == 18
    got = DINOLoss(k, student_temp=0.1)(student, teacher)
    assert abs(got.item() - want) < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the reduction stays in fp32 under autocast
        amp = DINOLoss(k)([x.float() for x in student], [x.float() for x in teacher])
    assert amp.dtype == torch.float32 and abs(amp.item() - want) < 1e-5
    with pytest.raises(ValueError, match="no \\(student, teacher\\) pair"):
        dino_loss([student[0]], [teacher[0]])


def test_softmax_centering_and_center_update() -> None:
    torch.manual_seed(1)
    logits, center = torch.randn(6, 5), torch.randn(1, 5)
    probs = softmax_center(logits, center, 0.04)
    for i in range(6):
        z = [(logits[i, j] - center[0, j]).item() / 0.04 for j in range(5)]
        want = [math.exp(v - max(z)) / sum(math.exp(w - max(z)) for w in z) for v in z]
        torch.testing.assert_close(probs[i], torch.tensor(want), atol=1e-6, rtol=1e-5)
    new = update_center(center, logits, 0.9)
    torch.testing.assert_close(new, 0.9 * center + 0.1 * logits.mean(0, keepdim=True))
    loss = DINOLoss(5, center_momentum=0.9)
    loss.update_center(logits)
    torch.testing.assert_close(loss.center, 0.1 * logits.mean(0, keepdim=True))
    torch.testing.assert_close(update_center(center, logits[:0], 0.9), center)  # no rows: unchanged
    assert "center" in loss.state_dict()


def loop_sinkhorn(logits: torch.Tensor, temp: float, n_iter: int) -> torch.Tensor:
    """SwAV's algorithm, spelled out: Q [K, B] alternately normalised per prototype and per sample."""
    n, k = logits.shape
    q = [[math.exp(logits[b, j].item() / temp) for b in range(n)] for j in range(k)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(n_iter):
        q = [[v / sum(row) / k for v in row] for row in q]
        cols = [sum(q[j][b] for j in range(k)) for b in range(n)]
        q = [[q[j][b] / cols[b] / n for b in range(n)] for j in range(k)]
    return torch.tensor([[q[j][b] * n for j in range(k)] for b in range(n)])


def test_sinkhorn_knopp_matches_loop_and_balances_prototypes() -> None:
    torch.manual_seed(2)
    logits = torch.randn(12, 4) + torch.tensor([3.0, 0.0, 0.0, -2.0])  # prototype 0 dominates
    got = sinkhorn_knopp(logits, 0.5, n_iterations=3)
    torch.testing.assert_close(got, loop_sinkhorn(logits, 0.5, 3), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.sum(1), torch.ones(12))  # rows: distributions
    plain = torch.softmax(logits / 0.5, -1).sum(0)
    balanced = sinkhorn_knopp(logits, 0.5, n_iterations=30).sum(0)
    torch.testing.assert_close(balanced, torch.full((4,), 12 / 4), atol=1e-3, rtol=0)  # columns: B/K each
    assert (got.sum(0) - 3).abs().max() < (plain - 3).abs().max()
    huge = sinkhorn_knopp(torch.randn(8, 5) * 100, 0.04)  # exp(2500) would overflow without the shift
    assert torch.isfinite(huge).all()


def test_centering_registry_lists_choices() -> None:
    assert set(CENTERING) == {"softmax", "sinkhorn_knopp"}
    with pytest.raises(ValueError, match="sinkhorn_knopp"):
        DINOLoss(4).teacher_probs(torch.randn(2, 4), 0.04, "sharpen")
    probs = DINOLoss(4).teacher_probs(torch.randn(6, 4), 0.04, "sinkhorn_knopp")
    torch.testing.assert_close(probs.sum(1), torch.ones(6))


def test_ibot_loss_matches_the_patch_loop_and_counts_each_image_once() -> None:
    torch.manual_seed(3)
    k, n_images = 6, 4
    owner = [0, 0, 0, 2, 2, 3]  # masked patches of images 0, 2, 3; image 1 unmasked
    counts = {i: owner.count(i) for i in set(owner)}
    weights = torch.tensor([1 / counts[i] for i in owner])
    s, t = torch.randn(6, k), torch.softmax(torch.randn(6, k), -1)
    per_image = {i: 0.0 for i in range(n_images)}
    for m, i in enumerate(owner):
        per_image[i] += ce(t[m].tolist(), s[m].tolist(), 0.1) / counts[i]
    want = sum(per_image.values()) / n_images
    loss = iBOTPatchLoss(k)
    got = loss.forward_masked(s, t, weights, n_masked_patches=torch.tensor([6]), n_images=n_images)
    assert abs(got.item() - want) < 1e-5
    pad = torch.randn(3, k)  # the reference pads student/teacher rows to an upper bound
    padded = loss.forward_masked(torch.cat([s, pad]), torch.cat([t, pad.softmax(-1)]), weights, 6, n_images)
    assert abs(padded.item() - want) < 1e-5
    assert abs(loss(s, t, weights).item() - sum(per_image.values()) / 3) < 1e-5  # default: masked images


def loop_koleo(x: torch.Tensor, eps: float = 1e-8) -> float:
    rows = [r / max(r.norm().item(), eps) for r in x.double()]
    total = 0.0
    for i, a in enumerate(rows):
        nearest = min((a - b).norm().item() for j, b in enumerate(rows) if j != i)
        total += math.log(nearest + eps)
    return -total / len(rows)


def test_koleo_matches_the_loop() -> None:
    torch.manual_seed(4)
    x = torch.randn(9, 5)
    assert abs(KoLeoLoss()(x).item() - loop_koleo(x)) < 1e-4  # pairwise_distance adds eps inside
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        koleo_loss(torch.randn(5))
    one = torch.randn(1, 5, requires_grad=True)
    koleo_loss(one).backward()  # batch of one per device: zero, not a crash
    assert torch.equal(one.grad, torch.zeros(1, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_koleo_is_finite_on_duplicate_images(dtype: torch.dtype) -> None:
    torch.manual_seed(5)
    x = torch.randn(6, 32).to(dtype)
    x[3] = x[1]  # the same image twice in a batch
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = KoLeoLoss()(x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_the_reference_fp16_koleo_defect_is_real() -> None:
    """What the docstring fixes: the reference's arithmetic in fp16 gives inf for duplicates."""
    x = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1).half()
    x[1] = x[0]
    d = torch.nn.functional.pairwise_distance(x[0:1], x[1:2], eps=1e-8)
    assert torch.isinf(-torch.log(d + 1e-8)).all()
    assert torch.isfinite(koleo_loss(x))
