"""The DINOv2 student/teacher meta-architecture and its losses (Oquab et al. 2023, section 3).

- The student is a ViT backbone plus a DINO head (plus an iBOT head when ``ibot_separate_head``);
  it sees every crop, with iBOT masking on its global crops.
- The teacher is an exponential moving average of the student (no gradients, eval mode) and sees
  only the global crops, unmasked.
- Losses: DINO cross-entropy between each student crop and each *other* teacher global crop
  (2 + 2 x n_local terms, averaged), iBOT on the masked patches of the student's global crops, and
  KoLeo on the student backbone's class tokens, once per global crop and summed (per device, in
  fp32): ``sum(koleo(p) for p in student_cls_tokens.chunk(2))`` in the official ``ssl_meta_arch.py``,
  never between two views of one image. (The paper's text says the first crop only; the code, which
  trained the released models, sums over both.)

:meth:`SSLModel.losses` reads top to bottom: teacher forward, student forward, losses. Backward,
clipping, the optimizer and the EMA update live in the loop (``pretrain/train.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.config import LossConfig, TrainConfig


class Student(nn.Module):
    """Backbone + heads. The same class serves as the teacher (EMA copy)."""

    def __init__(self, backbone: nn.Module, dino_head: nn.Module, ibot_head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head

    def _heads(self, cls_tokens: Tensor, masked_patches: Tensor) -> tuple[Tensor, Tensor]:
        """DINO logits of the class tokens and iBOT logits of the masked patch tokens."""
        if self.ibot_head is not None:
            return self.dino_head(cls_tokens), self.ibot_head(masked_patches)
        # shared head: one call over both, as the reference does
        out = self.dino_head(torch.cat([cls_tokens, masked_patches]))
        return out[: cls_tokens.shape[0]], out[cls_tokens.shape[0] :]

    def forward(
        self, global_crops: Tensor, local_crops: Tensor | None, masks: Tensor | None, mask_indices: Tensor
    ) -> dict:
        """Student pass, or teacher pass (``local_crops=None, masks=None``: unmasked global crops only).

        One ``forward`` for both roles, so that FSDP's forward hooks gather the parameters.
        ``global_crops`` [G*B, 3, H, W], ``local_crops`` [L*B, 3, h, w] or None, ``masks`` [G*B, N]
        bool or None, ``mask_indices`` [M] into the flattened [G*B*N] patch tokens (the teacher
        reads the same positions, unmasked). Returns ``cls_global``
        [G*B, D] (backbone class tokens), ``dino_global`` [G*B, K], ``dino_local`` [L*B, K] or None,
        ``ibot`` [M, K'].
        """
        backbone: Any = self.backbone
        if local_crops is not None and local_crops.shape[0] > 0:
            g, loc = backbone.forward_features_list([global_crops, local_crops], [masks, None])
            cls_local = loc["x_norm_clstoken"]
        else:
            g, cls_local = backbone.forward_features(global_crops, masks), None
        cls_global = g["x_norm_clstoken"]
        patches = g["x_norm_patchtokens"].flatten(0, 1).index_select(0, mask_indices)
        cls_all = cls_global if cls_local is None else torch.cat([cls_global, cls_local])
        dino, ibot = self._heads(cls_all, patches)
        n_g = cls_global.shape[0]
        return {
            "cls_global": cls_global,
            "dino_global": dino[:n_g],
            "dino_local": None if cls_local is None else dino[n_g:],
            "ibot": ibot,
        }


class SSLModel(nn.Module):
    """Student, teacher and the three losses (whose centers are part of the state dict)."""

    def __init__(
        self,
        student: Student,
        dino_loss: nn.Module,
        ibot_loss: nn.Module,
        koleo_loss: nn.Module,
        loss_cfg: LossConfig,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student).eval().requires_grad_(False)
        self.dino_loss, self.ibot_loss, self.koleo_loss = dino_loss, ibot_loss, koleo_loss
        self.cfg = loss_cfg

    def load_backbone_weights(self, path: str) -> None:
        """Student and teacher backbones from the backbone file ``path`` (``model.init_backbone``)."""
        from pretrain.sscd import init_from_backbone

        init_from_backbone(self.student.backbone, path, "model.init_backbone")  # type: ignore[arg-type]
        self.teacher.backbone.load_state_dict(self.student.backbone.state_dict())

    def train(self, mode: bool = True) -> SSLModel:
        super().train(mode)
        self.teacher.eval()  # the teacher never drops paths
        return self

    @torch.no_grad()
    def teacher_targets(self, batch: dict[str, Any], teacher_temp: float) -> tuple[Tensor, Tensor]:
        """Teacher probabilities: DINO [G*B, K] (crop-major), iBOT [M, K'] (fp32, centered or Sinkhorn)."""
        out = self.teacher(batch["collated_global_crops"], None, None, batch["mask_indices_list"])
        reshard = getattr(self.teacher, "reshard", None)
        if reshard is not None:  # FSDP2 keeps a root unsharded after forward; no backward here
            reshard()
        dino_logits, ibot_logits = out["dino_global"].float(), out["ibot"].float()
        dino_loss: Any = self.dino_loss  # typed loosely: methods nn.Module does not declare
        ibot_loss: Any = self.ibot_loss
        centering = self.cfg.centering
        dino_probs = dino_loss.teacher_probs(dino_logits, teacher_temp, centering)
        ibot_probs = ibot_loss.teacher_probs(ibot_logits, teacher_temp, centering)
        if centering == "softmax":
            dino_loss.update_center(dino_logits)
            ibot_loss.update_center(ibot_logits)
        return dino_probs, ibot_probs

    def losses(
        self, batch: dict[str, Any], teacher_temp: float, student: Callable[..., dict] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted total loss and its parts for one batch (``student``: e.g. the DDP wrapper)."""
        student = student or self.student
        n_global = 2
        teacher_dino, teacher_ibot = self.teacher_targets(batch, teacher_temp)

        out = student(
            batch["collated_global_crops"],
            batch.get("collated_local_crops"),
            batch["collated_masks"],
            batch["mask_indices_list"],
        )

        # DINO: every student crop (globals first, then locals; [B, K] each) against every teacher
        # global view but its own: the mean of 2 + 2 x n_local cross-entropy terms.
        batch_size = teacher_dino.shape[0] // n_global
        student_crops = list(out["dino_global"].float().split(batch_size))
        if out["dino_local"] is not None:
            student_crops += list(out["dino_local"].float().split(batch_size))
        dino = self.dino_loss(student_crops, list(teacher_dino.split(batch_size)))

        ibot_loss: Any = self.ibot_loss
        ibot = ibot_loss.forward_masked(
            out["ibot"].float(),
            teacher_ibot,
            batch["masks_weight"],
            batch["n_masked_patches"],
            batch["collated_global_crops"].shape[0],
        )
        # KoLeo within each global crop's batch [B, D], summed over the crops (official recipe)
        koleo = sum_koleo(self.koleo_loss, out["cls_global"].float(), n_global)

        c = self.cfg
        total = c.dino_weight * dino + c.ibot_weight * ibot + c.koleo_weight * koleo
        # parts are the unweighted terms: total = dino_weight * dino + ibot_weight * ibot + koleo_weight * koleo
        return total, {"dino": dino.detach(), "ibot": ibot.detach(), "koleo": koleo.detach()}

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA: teacher = momentum * teacher + (1 - momentum) * student (parameter by parameter)."""
        for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            t.lerp_(s.detach(), 1.0 - momentum)

    def backbones(self) -> list[nn.Module]:
        """The ViTs the loop compiles block by block: the student's and the teacher's."""
        return [self.student.backbone, self.teacher.backbone]

    def fsdp_units(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(module, its backbone)`` pairs to shard with FSDP: student and teacher."""
        return [(self.student, self.student.backbone), (self.teacher, self.teacher.backbone)]

    def export_module(self) -> nn.Module:
        """The module the run hands on: the teacher backbone."""
        return self.teacher.backbone


def sum_koleo(koleo: Callable[[Tensor], Tensor], cls_tokens: Tensor, n_crops: int) -> Tensor:
    """sum over crops c of koleo(cls_tokens of crop c) -> scalar; ``cls_tokens`` [n_crops*B, D], crop-major.

    Each crop's batch is spread on its own: two views of one image are never each other's neighbour.
    """
    return torch.stack([koleo(chunk) for chunk in cls_tokens.chunk(n_crops)]).sum()


def build_ssl_model(config: TrainConfig, global_size: int) -> SSLModel:
    """The student/teacher/losses of ``config`` with position embeddings for ``global_size`` crops."""
    from pretrain.heads import DINOHead
    from pretrain.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
    from pretrain.models import build_backbone

    m, h, lc = config.model, config.heads, config.loss
    backbone = build_backbone(
        m.arch,
        img_size=global_size,
        patch_size=m.patch_size,
        num_register_tokens=m.registers,
        drop_path_rate=m.drop_path,
        drop_path_uniform=m.drop_path_uniform,
        init_values=m.layerscale or None,
        ffn_layer=m.ffn,
    )
    dim = backbone.embed_dim
    dino_head = DINOHead(
        dim,
        h.dino.prototypes,
        h.dino.hidden_dim,
        h.dino.bottleneck_dim,
        h.dino.nlayers,
        norm_last_layer=h.dino.norm_last_layer,
    )
    ibot_head = None
    ibot_dim = h.dino.prototypes
    if h.ibot_separate_head:
        ibot_head = DINOHead(
            dim,
            h.ibot.prototypes,
            h.ibot.hidden_dim,
            h.ibot.bottleneck_dim,
            h.ibot.nlayers,
            norm_last_layer=h.ibot.norm_last_layer,
        )
        ibot_dim = h.ibot.prototypes
    return SSLModel(
        Student(backbone, dino_head, ibot_head),
        DINOLoss(h.dino.prototypes, lc.student_temp, lc.center_momentum),
        iBOTPatchLoss(ibot_dim, lc.student_temp, lc.center_momentum),
        KoLeoLoss(),
        lc,
    )
