"""The iBOT masked-patch loss (Zhou et al. 2022, eq. 2; DINOv2, Oquab et al. 2023, section 3).

For every masked patch of the student's global crops, the cross-entropy between the teacher's
distribution on the same (unmasked) patch and the student's prediction. Each patch is weighted by
1 / (masked patches of its image), the weighted sum is divided by the number of global-crop images,
so every image counts once whatever its mask size and unmasked images count as zero (DINOv2's
``forward_masked``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pretrain.losses import centering as C


def ibot_patch_loss(
    student_patch_logits: Tensor,
    teacher_patch_probs: Tensor,
    masks_weight: Tensor,
    n_images: int | Tensor,
    student_temp: float = 0.1,
) -> Tensor:
    """sum_m w_m * H(teacher_m, student_m) / n_images -> scalar (fp32).

    ``student_patch_logits`` [M, K], ``teacher_patch_probs`` [M, K], ``masks_weight`` [M].
    """
    if not student_patch_logits.shape == teacher_patch_probs.shape:
        raise ValueError(
            f"student {tuple(student_patch_logits.shape)} and teacher {tuple(teacher_patch_probs.shape)} "
            "patch tensors differ"
        )
    if masks_weight.shape != student_patch_logits.shape[:1]:
        raise ValueError(
            f"masks_weight {tuple(masks_weight.shape)} for {student_patch_logits.shape[0]} patches"
        )
    log_p = F.log_softmax(student_patch_logits.float() / student_temp, dim=-1)
    per_patch = -(teacher_patch_probs.float() * log_p).sum(dim=-1)  # [M]
    return (per_patch * masks_weight.float()).sum() / n_images


class iBOTPatchLoss(C.CenteredTeacher):  # noqa: N801 - the paper's spelling
    """iBOT loss on masked patches with its own ``center`` buffer [1, K'] (fp32, in the state dict).

    ``teacher_probs`` and ``update_center`` behave as in :class:`pretrain.losses.DINOLoss`, on the
    teacher's patch logits [M, K'] at the masked positions.
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__(patch_out_dim, student_temp, center_momentum)
        self.patch_out_dim = patch_out_dim

    def forward_masked(
        self,
        student_patch_logits: Tensor,
        teacher_patch_probs: Tensor,
        masks_weight: Tensor,
        n_masked_patches: int | Tensor | None = None,
        n_images: int | Tensor | None = None,
    ) -> Tensor:
        """Weighted cross-entropy over masked patches, averaged over images -> scalar.

        ``student_patch_logits`` [M', K], ``teacher_patch_probs`` [M', K]; when ``n_masked_patches``
        is given only the first M of the M' rows are real (the reference pads to an upper bound);
        ``masks_weight`` [M] is 1 / (masked patches of the row's image). ``n_images`` is the number
        of global-crop images (n_global x B); when None, the number of masked images
        (sum of ``masks_weight``), which only matches when every image is masked.
        """
        if n_masked_patches is not None:
            m = (
                int(n_masked_patches.reshape(-1)[0])
                if torch.is_tensor(n_masked_patches)
                else int(n_masked_patches)
            )
            student_patch_logits, teacher_patch_probs = student_patch_logits[:m], teacher_patch_probs[:m]
            masks_weight = masks_weight[:m]
        if n_images is None:
            n_images = masks_weight.sum().round().clamp_min(1.0)
        return ibot_patch_loss(
            student_patch_logits, teacher_patch_probs, masks_weight, n_images, self.student_temp
        )

    def forward(
        self,
        student_patch_logits: Tensor,
        teacher_patch_probs: Tensor,
        masks_weight: Tensor,
        n_masked_patches: int | Tensor | None = None,
        n_images: int | Tensor | None = None,
    ) -> Tensor:
        """Same as :meth:`forward_masked`."""
        return self.forward_masked(
            student_patch_logits, teacher_patch_probs, masks_weight, n_masked_patches, n_images
        )
