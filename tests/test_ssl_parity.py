"""Parity with the official DINOv2 recipe where it differs from the paper's text or from DINO v1.

- KoLeo is summed over both global crops' class tokens (``ssl_meta_arch.py``:
  ``koleo_loss_weight * sum(self.koleo_loss(p) for p in student_cls_tokens.chunk(2))``).
- The DINO head's weight-norm gain is trained with the last layer, frozen with it during
  ``optim.freeze_last_layer_epochs``; ``heads.dino.norm_last_layer=true`` (DINO v1) keeps it at 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain import distributed as D
from pretrain.config import TrainConfig, load_config
from pretrain.data import build_transform_and_collate
from pretrain.losses import koleo_loss
from pretrain.ssl import build_ssl_model
from pretrain.train import build_phase, train_step

SMALL = ["heads.dino.prototypes=256", "crops.local_number=2", "train.batch_size_per_device=4"]
GAIN = "dino_head.last_layer.parametrizations.weight.original0"
DIRECTION = "dino_head.last_layer.parametrizations.weight.original1"


def random_batch(config: TrainConfig, n: int = 4, seed: int = 0) -> dict[str, Any]:
    """A collated multi-crop batch of ``n`` random RGB images (no data files needed)."""
    rng = np.random.default_rng(seed)
    transform, collate = build_transform_and_collate(config, "main")
    images = [Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)) for _ in range(n)]
    torch.manual_seed(seed)
    return collate([transform(im) for im in images])


def test_koleo_is_the_sum_over_both_global_crops_and_reaches_the_second() -> None:
    cfg = load_config("demo", [*SMALL, "loss.dino_weight=0", "loss.ibot_weight=0", "loss.koleo_weight=1"])
    torch.manual_seed(0)
    model = build_ssl_model(cfg, cfg.crops.global_size)
    batch = random_batch(cfg)
    crops = batch["collated_global_crops"].requires_grad_(True)  # [2B, 3, H, W], crop-major
    total, parts = model.losses(batch, teacher_temp=0.04)
    total.backward()
    assert crops.grad is not None
    b = crops.shape[0] // 2
    assert crops.grad[:b].abs().sum() > 0
    assert crops.grad[b:].abs().sum() > 0, "KoLeo must reach the second global crop's class tokens"
    # the term equals KoLeo computed directly on each crop's class tokens, summed (drop path is 0)
    with torch.no_grad():
        out = model.student(
            crops, batch["collated_local_crops"], batch["collated_masks"], batch["mask_indices_list"]
        )
        cls = out["cls_global"].float()
        direct = koleo_loss(cls[:b]) + koleo_loss(cls[b:])
    torch.testing.assert_close(parts["koleo"], direct)
    torch.testing.assert_close(total.detach(), direct)
    assert not torch.allclose(direct, koleo_loss(cls[:b]))  # not the first crop alone


def test_koleo_weight_multiplies_the_sum_in_the_total() -> None:
    cfg = load_config("demo", SMALL)
    torch.manual_seed(0)
    model = build_ssl_model(cfg, cfg.crops.global_size)
    total, parts = model.losses(random_batch(cfg), teacher_temp=0.04)
    w = cfg.loss
    expected = w.dino_weight * parts["dino"] + w.ibot_weight * parts["ibot"] + w.koleo_weight * parts["koleo"]
    torch.testing.assert_close(total.detach(), expected)


def _phase(config: TrainConfig) -> Any:
    info = D.DistInfo(0, 1, 0, torch.device("cpu"))
    end = config.train.epochs * config.train.iterations_per_epoch
    return build_phase(config, "main", 0, end, info, None)


@pytest.mark.parametrize("norm_last_layer", [False, True], ids=["dinov2", "dino-v1"])
def test_gain_is_frozen_with_the_last_layer_then_trained(norm_last_layer: bool) -> None:
    """Through the real train step: 2 frozen steps (lr > 0 from step 0), then the last layer trains."""
    flag = str(norm_last_layer).lower()
    cfg = load_config(
        "demo",
        [
            *SMALL,
            "train.epochs=1",
            "train.iterations_per_epoch=4",
            "optim.warmup_epochs=0",  # full lr from step 0: a frozen parameter is not just at lr 0
            "optim.freeze_last_layer_epochs=0.5",  # 2 of the 4 steps
            f"heads.dino.norm_last_layer={flag}",
        ],
    )
    phase = _phase(cfg)
    params = dict(phase.model.student.named_parameters())
    gain, direction, mlp = params[GAIN], params[DIRECTION], params["dino_head.mlp.0.weight"]
    assert gain.requires_grad is not norm_last_layer and torch.equal(gain, torch.ones_like(gain))
    start = {k: p.detach().clone() for k, p in [("g", gain), ("v", direction), ("mlp", mlp)]}
    for step in range(2):
        assert phase.schedule.at(step).last_layer_frozen
        train_step(cfg, phase, random_batch(cfg, seed=step), step, torch.device("cpu"))
    assert not torch.equal(mlp, start["mlp"]), "the rest of the head trains during the freeze"
    assert torch.equal(gain, start["g"]) and torch.equal(direction, start["v"])
    assert not phase.schedule.at(2).last_layer_frozen
    train_step(cfg, phase, random_batch(cfg, seed=2), 2, torch.device("cpu"))
    assert not torch.equal(direction, start["v"])
    assert torch.equal(gain, start["g"]) is norm_last_layer
    # the teacher's gain follows the student's by EMA (it is a parameter like any other)
    teacher_gain = dict(phase.model.teacher.named_parameters())[GAIN]
    assert torch.equal(teacher_gain, torch.ones_like(teacher_gain)) is norm_last_layer


def test_trained_gain_survives_checkpoint_and_export_keeps_the_backbone_only(tmp_path: Path) -> None:
    from pretrain import checkpoint as ckpt
    from pretrain.export import export_teacher
    from pretrain.models.io import load_backbone

    cfg = load_config("demo", [*SMALL, "train.epochs=1", "train.iterations_per_epoch=2", "optim.warmup_epochs=0",
                               "optim.freeze_last_layer_epochs=0"])  # fmt: skip
    phase = _phase(cfg)
    train_step(cfg, phase, random_batch(cfg), 0, torch.device("cpu"))
    gain = dict(phase.model.student.named_parameters())[GAIN]
    assert not torch.equal(gain, torch.ones_like(gain)) and phase.optimizer.state[gain]
    path = ckpt.save(
        tmp_path / "checkpoints", 1, phase.model, phase.optimizer, {"phase": "main"}, keep_last=1
    )
    fresh = _phase(cfg)
    ckpt.load(path, fresh.model, fresh.optimizer)
    fresh_gain = dict(fresh.model.student.named_parameters())[GAIN]
    torch.testing.assert_close(fresh_gain, gain, rtol=0, atol=0)
    torch.testing.assert_close(
        fresh.optimizer.state[fresh_gain]["exp_avg"], phase.optimizer.state[gain]["exp_avg"]
    )
    # export writes the teacher backbone alone (the heads, gain included, stay in the checkpoint)
    paths = export_teacher(phase.model.teacher.backbone, tmp_path)
    exported = load_backbone(paths["dinoflow"]).state_dict()
    teacher = phase.model.teacher.backbone.state_dict()
    assert exported.keys() == teacher.keys()
    assert all(torch.equal(exported[k], teacher[k]) for k in teacher)


def test_a_checkpoint_with_the_v1_fixed_gain_is_a_one_line_error_for_the_trainable_head(
    tmp_path: Path,
) -> None:
    """A run from before the trainable gain, resumed anyway: its optimizer lacks the gains."""
    from pretrain import checkpoint as ckpt

    common = [*SMALL, "train.epochs=1", "train.iterations_per_epoch=2"]
    v1 = _phase(load_config("demo", [*common, "heads.dino.norm_last_layer=true"]))
    path = ckpt.save(tmp_path / "checkpoints", 1, v1.model, v1.optimizer, {"phase": "main"}, keep_last=1)
    dinov2 = _phase(load_config("demo", common))
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"heads.dino.norm_last_layer=true") as err:
        ckpt.load(path, dinov2.model, dinov2.optimizer)
    assert "\n" not in str(err.value)
    ckpt.load(path, dinov2.model, None)  # the weights themselves load (the gain is in both state dicts)
