"""SSCD copy-detection training in the engine's interface (Pizzi et al. 2022, arXiv:2202.10261).

:class:`SSCDModel` is what the train loop (``pretrain/train.py``) drives, with the same methods as
DINOv2's :class:`pretrain.ssl.SSLModel`: ``student`` (here a :class:`CopyDescriptor`, the only
trained module), ``losses(batch, teacher_temp, student)`` and ``update_teacher(momentum)``, a no-op
because SSCD has no teacher. Data: each image becomes ``sscd.views`` edited views
(:class:`pretrain.edits.CopyEditAugmentation`) batched view-major (:func:`pretrain.collate.collate_views`);
the instance ids of the loss are stable hashes of the sample keys, so two draws of one photo in a
batch are positives, not negatives. The run ends by writing the descriptor (:data:`DESCRIPTOR_FILE`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pretrain.config import TrainConfig
from pretrain.losses.sscd import SSCDLoss, instance_ids
from pretrain.models.descriptor import CopyDescriptor, save_descriptor
from pretrain.models.vit import DinoVisionTransformer

DESCRIPTOR_FILE = "copy_descriptor.safetensors"  # in the run directory


class SSCDModel(nn.Module):
    """The descriptor (``student``) and the SSCD loss; no teacher."""

    def __init__(self, descriptor: CopyDescriptor, loss: SSCDLoss) -> None:
        super().__init__()
        self.student = descriptor
        self.sscd_loss = loss

    def losses(
        self, batch: dict[str, Any], teacher_temp: float = 0.0, student: Callable[..., Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss and its unweighted parts (``infonce``, ``koleo``) for a batch of
        ``collated_views`` [V*B, 3, S, S] and ``keys`` [B]; ``teacher_temp`` is unused."""
        student = student or self.student
        views = batch["collated_views"]
        ids = instance_ids(batch["keys"]).repeat(self.sscd_loss.n_views).to(views.device)
        return self.sscd_loss(student(views), ids)

    def update_teacher(self, momentum: float) -> None:
        """Nothing to do: SSCD trains one network (the loop calls this after every step)."""

    def load_backbone_weights(self, path: str) -> None:
        """The descriptor's backbone from the backbone file ``path`` (``model.init_backbone``)."""
        init_from_backbone(self.student.backbone, path, "model.init_backbone")

    def backbones(self) -> list[nn.Module]:
        """The ViTs the loop compiles and shards block by block."""
        return [self.student.backbone]

    def fsdp_units(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(module, its backbone)`` pairs to shard with FSDP."""
        return [(self.student, self.student.backbone)]

    def export_module(self) -> nn.Module:
        """The module the run hands on: the descriptor."""
        return self.student


def build_descriptor(config: TrainConfig, pretrained: bool = True) -> CopyDescriptor:
    """The descriptor of ``config``; ``pretrained``: start the backbone from ``sscd.init_backbone``."""
    from pretrain.models import build_backbone

    m, s = config.model, config.sscd
    backbone = build_backbone(
        m.arch,
        img_size=s.size,
        patch_size=m.patch_size,
        num_register_tokens=m.registers,
        drop_path_rate=m.drop_path,
        drop_path_uniform=m.drop_path_uniform,
        init_values=m.layerscale or None,
        ffn_layer=m.ffn,
    )
    if pretrained and s.init_backbone:
        init_from_backbone(backbone, s.init_backbone)
    return CopyDescriptor(backbone, s.dim, s.pooling, s.gem_p, s.input_size or s.size)


def fold_layerscale(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict without LayerScale that computes the same function: each block's ``ls1.gamma``
    (``ls2.gamma``) scales the rows of the layer before it, ``attn.proj`` (``mlp.fc2`` or ``mlp.w3``):
    ``gamma * (W x + b) = (diag(gamma) W) x + gamma * b``."""
    out = {k: v for k, v in state.items() if not k.endswith((".ls1.gamma", ".ls2.gamma"))}
    for key, gamma in state.items():
        if not key.endswith((".ls1.gamma", ".ls2.gamma")):
            continue
        block = key.rsplit(".", 2)[0]
        layers = ["attn.proj"] if key.endswith("ls1.gamma") else ["mlp.fc2", "mlp.w3"]
        layer = next(f"{block}.{name}" for name in layers if f"{block}.{name}.weight" in state)
        out[f"{layer}.weight"] = state[f"{layer}.weight"] * gamma.view(-1, 1)
        if f"{layer}.bias" in state:
            out[f"{layer}.bias"] = state[f"{layer}.bias"] * gamma
    return out


def init_from_backbone(
    backbone: DinoVisionTransformer, path: str | Path, key: str = "sscd.init_backbone"
) -> None:
    """Load the backbone file at ``path`` (any layout ``pretrain.models.io`` reads) into ``backbone``:
    strict, position embeddings resized to its grid, LayerScale folded into the weights when
    ``backbone`` has none (``model.layerscale=0``); a mismatch is a one-line CheckpointError."""
    from pretrain.models.io import CheckpointError, load_state_strict, read_checkpoint, resize_pos_embed

    _, state, _ = read_checkpoint(path)
    state = {k: v.float() for k, v in state.items()}
    grid = backbone.pos_embed.shape[1] - 1
    if state.get("pos_embed") is not None and state["pos_embed"].shape[1] - 1 != grid:
        state = resize_pos_embed(state, int(round(grid**0.5)))
    if not any(k.endswith("ls1.gamma") for k in backbone.state_dict()):
        state = fold_layerscale(state)
    try:
        load_state_strict(backbone, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{key} {str(path)!r} does not fit model.* of this config ({exc})") from None


def build_sscd_model(config: TrainConfig, size: int | None = None, pretrained: bool = True) -> SSCDModel:
    """The SSCD model of ``config`` (views of ``sscd.size`` px; ``size`` must agree when given)."""
    s = config.sscd
    if size is not None and size != s.size:
        raise ValueError(f"SSCD trains at sscd.size={s.size} px, asked for {size}")
    return SSCDModel(build_descriptor(config, pretrained), SSCDLoss(s.views, s.temperature, s.entropy_weight))


def build_edit_data(config: TrainConfig, phase: str) -> tuple[Callable, Callable]:
    """The edit augmentation and the view collate of ``config`` (SSCD has only the main phase)."""
    from pretrain.collate import collate_views
    from pretrain.edits import CopyEditAugmentation

    if phase != "main":
        raise ValueError(f"objective sscd has one phase, 'main'; got {phase!r}")
    s = config.sscd
    return CopyEditAugmentation(s.size, s.views, **s.edits.model_dump()), collate_views


def export_descriptor(descriptor: nn.Module, run_dir: str | Path) -> dict[str, str]:
    """Write the (unsharded) descriptor into ``run_dir``; returns ``{"descriptor": path}``."""
    path = Path(run_dir) / DESCRIPTOR_FILE
    save_descriptor(descriptor, path)  # type: ignore[arg-type]
    return {"descriptor": str(path)}


def descriptor_from_checkpoint(path: str | Path) -> CopyDescriptor:
    """The descriptor of a single-file SSCD training checkpoint (or a DCP directory)."""
    from pretrain.checkpoint import read_extras
    from pretrain.export import checkpoint_state

    config = TrainConfig.model_validate(read_extras(path)["config"])
    prefix = "student."
    state = {k[len(prefix) :]: v for k, v in checkpoint_state(path).items() if k.startswith(prefix)}
    model = build_descriptor(config, pretrained=False)
    model.load_state_dict(state, strict=True)
    return model.eval()


def image_size(config: TrainConfig, phase: str) -> int:
    """The side of the images the model is built for."""
    return config.sscd.size
