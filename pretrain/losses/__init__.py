"""DINOv2 losses: DINO (class tokens), iBOT (masked patches), KoLeo (spread), and teacher centering."""

from pretrain.losses.centering import CENTERING, sinkhorn_knopp, softmax_center, update_center
from pretrain.losses.dino import DINOLoss, dino_cross_entropy, dino_loss
from pretrain.losses.ibot import ibot_patch_loss, iBOTPatchLoss
from pretrain.losses.koleo import KoLeoLoss, koleo_loss

__all__ = [
    "CENTERING",
    "DINOLoss",
    "KoLeoLoss",
    "dino_cross_entropy",
    "dino_loss",
    "iBOTPatchLoss",
    "ibot_patch_loss",
    "koleo_loss",
    "sinkhorn_knopp",
    "softmax_center",
    "update_center",
]
