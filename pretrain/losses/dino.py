"""The DINO self-distillation loss (Caron et al. 2021, eq. 3; DINOv2, Oquab et al. 2023, section 3).

Every student crop s (globals first, then locals) is matched with every teacher global crop t
except its own view: with 2 global and 8 local crops that is 2 + 16 = 18 cross-entropy terms
H(P_t, P_s) = -sum_k P_t[k] log softmax(z_s / tau_s)[k], each averaged over the batch, and the loss
is the mean of the terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.losses import centering as C


def dino_cross_entropy(
    student_logits: list[Tensor], teacher_probs: list[Tensor], student_temp: float
) -> Tensor:
    """The matrix of terms [S, T]: mean over the batch of H(teacher t, student s), computed in fp32.

    ``student_logits``: S tensors [B, K]; ``teacher_probs``: T tensors [B, K] (rows sum to 1).
    One matrix product per pair-set: the student log-probs [S, B, K] meet the teacher probs [T, B, K].
    """
    if not student_logits or not teacher_probs:
        raise ValueError("dino_cross_entropy needs at least one student and one teacher crop")
    s = torch.stack([x.float() for x in student_logits])  # [S, B, K]
    t = torch.stack([x.float() for x in teacher_probs])  # [T, B, K]
    if s.shape[1:] != t.shape[1:]:
        raise ValueError(f"student crops {tuple(s.shape[1:])} and teacher crops {tuple(t.shape[1:])} differ")
    # autocast would run the contraction over B x K in bf16/fp16: keep the heads' reduction in fp32
    with torch.autocast(device_type=s.device.type, enabled=False):
        log_p = F.log_softmax(s / student_temp, dim=-1)
        # sum over batch and prototypes of t * log_p for every (s, t) pair
        cross = torch.einsum("sbk,tbk->st", log_p, t)
    return -cross / s.shape[1]


def dino_loss(student_logits: list[Tensor], teacher_probs: list[Tensor], student_temp: float = 0.1) -> Tensor:
    """Mean over all (student crop, teacher crop) pairs but a global crop with its own view -> scalar.

    ``student_logits``: n_global + n_local tensors [B, K], the globals first, in the same order as
    ``teacher_probs`` (n_global tensors [B, K], centered and sharpened teacher distributions).
    """
    n_global = len(teacher_probs)
    if len(student_logits) < n_global:
        raise ValueError(
            f"{len(student_logits)} student crops for {n_global} teacher crops: the student list must "
            "start with the same global crops as the teacher list, then the local crops"
        )
    terms = dino_cross_entropy(student_logits, teacher_probs, student_temp)
    keep = torch.ones_like(terms, dtype=torch.bool)
    keep[torch.arange(n_global), torch.arange(n_global)] = False  # a view is not its own target
    if not keep.any():
        raise ValueError(
            "no (student, teacher) pair of different views: pass the global crops as separate list "
            "entries ([crop0, crop1, locals...] against [teacher0, teacher1])"
        )
    return terms[keep].mean()


class DINOLoss(C.CenteredTeacher):
    """DINO loss with the teacher's ``center`` buffer [1, K] (fp32, saved in the state dict).

    ``teacher_probs(logits, temp, centering)`` turns teacher logits [N, K] into targets (``softmax``
    centering with the current center, or ``sinkhorn_knopp``); ``update_center(logits)`` moves the
    center toward the global-batch mean afterwards (softmax centering only); ``forward`` is
    :func:`dino_loss`.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(out_dim, student_temp, center_momentum)
        self.out_dim = out_dim

    def forward(self, student_logits: list[Tensor], teacher_probs: list[Tensor]) -> Tensor:
        return dino_loss(student_logits, teacher_probs, self.student_temp)
