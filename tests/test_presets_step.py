"""Each paper preset's real recipe takes one full optimizer step on CPU, so a first GPU run meets no
configuration bug: 2 global crops at 224 px and 8 local crops at 98 px, the preset's prototype
counts and heads, iBOT masking, KoLeo and layer-wise lr decay, through ``pretrain.train.train_step``
(schedules, losses, backward, clipping, AdamW, EMA). Only the batch is tiny: 2 images per crop, the
fewest for which KoLeo has a nearest neighbour. ``vitg14`` (1.1B parameters) is built on the meta
device instead and its size and compute are checked against the paper's architecture.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain import distributed as D
from pretrain.config import TrainConfig, load_config
from pretrain.data import build_transform_and_collate
from pretrain.train import build_phase, train_step

TINY_BATCH = ["train.batch_size_per_device=2", "train.num_workers=0"]


def real_batch(config: TrainConfig, seed: int = 0) -> dict[str, Any]:
    """The preset's own multi-crop augmentation and masking collate over 2 random photos-sized images."""
    rng = np.random.default_rng(seed)
    transform, collate = build_transform_and_collate(config, "main")
    n = config.train.batch_size_per_device
    images = [Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)) for _ in range(n)]
    torch.manual_seed(seed)
    return collate([transform(im) for im in images])


def one_real_step(preset: str) -> None:
    cfg = load_config(preset, TINY_BATCH)
    c, n = cfg.crops, cfg.train.batch_size_per_device
    assert (c.global_size, c.local_size, c.local_number) == (224, 98, 8)
    assert cfg.loss.ibot_weight > 0 and cfg.loss.koleo_weight > 0 and cfg.masking.probability > 0
    batch = real_batch(cfg)
    assert batch["collated_global_crops"].shape == (2 * n, 3, 224, 224)
    assert batch["collated_local_crops"].shape == (8 * n, 3, 98, 98)
    assert batch["mask_indices_list"].numel() > 0, "iBOT needs masked patches"

    info = D.DistInfo(0, 1, 0, torch.device("cpu"))
    end = cfg.train.epochs * cfg.train.iterations_per_epoch
    phase = build_phase(cfg, "main", 0, end, info, None)
    heads = cfg.heads
    student: Any = phase.model.student  # attributes of the concrete Student
    assert student.dino_head.last_layer.weight.shape[0] == heads.dino.prototypes
    assert (student.ibot_head is not None) == heads.ibot_separate_head
    if student.ibot_head is not None:
        assert student.ibot_head.last_layer.weight.shape[0] == heads.ibot.prototypes
    # layer-wise decay: rate ** k for k = 0 (heads, final norm) .. n_blocks + 1 (tokens), patch
    # embedding aside (x 0.2); a rate of 1 (the L/14 and g/14 recipes) leaves one multiplier
    rate, n_blocks = cfg.optim.layerwise_decay, student.backbone.n_blocks
    mults = {round(g["lr_multiplier"], 12) for g in phase.optimizer.param_groups
             if not any(".patch_embed." in name for name in g["names"])}  # fmt: skip
    assert mults == {round(rate**k, 12) for k in range(n_blocks + 2)}

    # the first step after warmup: peak lr, last layer trainable (its freeze ended long before)
    step = phase.schedule.warmup_steps
    values = phase.schedule.at(step)
    assert values.lr == pytest.approx(phase.schedule.peak_lr) and not values.last_layer_frozen
    before = {k: p.detach().clone() for k, p in student.named_parameters()}
    teacher_before = {k: p.detach().clone() for k, p in phase.model.teacher.named_parameters()}
    out = train_step(cfg, phase, batch, step, torch.device("cpu"))

    parts = {k: float(out[k]) for k in ("loss", "dino", "ibot", "koleo")}
    assert all(math.isfinite(v) for v in parts.values()), parts
    assert parts["dino"] > 0 and parts["ibot"] > 0 and parts["koleo"] != 0, parts
    unchanged = [k for k, p in student.named_parameters() if p.requires_grad and torch.equal(p, before[k])]
    assert not unchanged, f"parameters the step did not update: {unchanged[:5]}"
    teacher_moved = [
        k for k, p in phase.model.teacher.named_parameters() if not torch.equal(p, teacher_before[k])
    ]
    assert teacher_moved, "the EMA update did not reach the teacher"


def test_vits14_real_recipe_takes_one_optimizer_step() -> None:
    one_real_step("vits14")


@pytest.mark.slow
def test_vitl14_real_recipe_takes_one_optimizer_step() -> None:
    one_real_step("vitl14")


def vit_forward_flops(tokens: int, dim: int, blocks: int, ffn_hidden: int, swiglu: bool, patch: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one image through a ViT: patch embedding, then per block
    qkv + projection (4 D^2 per token), attention (2 N^2 D), and the feed-forward (SwiGLU: 3 D H)."""
    n_patches = tokens - 1
    embed = 2 * n_patches * 3 * patch * patch * dim
    ffn = (3 if swiglu else 2) * dim * ffn_hidden
    per_block = 2 * tokens * (4 * dim * dim + ffn) + 2 * 2 * tokens * tokens * dim
    return embed + blocks * per_block


def test_vitg14_on_the_meta_device_has_the_paper_size_and_compute() -> None:
    """ViT-g/14 (REFERENCE.md: 1536-d, 40 blocks, 24 heads, SwiGLU hidden 4096, 1136M parameters) and
    its two 131,072-prototype heads, built without memory on ``torch.device("meta")``."""
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.models import build_backbone
    from pretrain.ssl import build_ssl_model

    cfg = load_config("vitg14")
    m = cfg.model
    assert cfg.train.fsdp and cfg.loss.centering == "sinkhorn_knopp" and cfg.heads.ibot_separate_head
    with torch.device("meta"):
        model = build_ssl_model(cfg, cfg.crops.global_size)
        released = build_backbone(m.arch, img_size=518, patch_size=m.patch_size, ffn_layer=m.ffn)
    student: Any = model.student
    backbone = student.backbone
    assert all(p.is_meta for p in model.parameters())
    assert (backbone.embed_dim, backbone.n_blocks, backbone.blocks[0].attn.num_heads) == (1536, 40, 24)
    # the released checkpoints carry a 37 x 37 position grid (518 px): 1,136,480,768 parameters
    n_released = sum(p.numel() for p in released.parameters())
    assert abs(n_released / 1e6 - 1136) < 0.5, n_released
    # a 224 px model differs only by the position embeddings of (37^2 - 16^2) tokens
    n_224 = sum(p.numel() for p in backbone.parameters())
    assert n_released - n_224 == (37**2 - 16**2) * 1536
    # REFERENCE.md: a DINO head of 131,072 x 384 has about 56-59M parameters
    n_dino = sum(p.numel() for p in student.dino_head.parameters())
    assert 56e6 <= n_dino <= 59e6, n_dino
    assert student.ibot_head.last_layer.weight.shape[0] == 131_072

    # forward FLOPs of one 224 px image (257 tokens), counted on meta tensors
    with FlopCounterMode(display=False) as counter:
        out = backbone.eval()(torch.empty(1, 3, 224, 224, device="meta"))
    assert out.shape == (1, 1536)
    flops = counter.get_total_flops()
    hidden = backbone.blocks[0].mlp.w3.in_features
    assert hidden == 4096  # SwiGLU hidden: 2/3 of 4 x 1536, rounded to a multiple of 8
    expected = vit_forward_flops(257, 1536, 40, hidden, swiglu=True, patch=14)
    assert flops == expected, (flops, expected)  # every matmul of the architecture, exactly
    # the usual 2 x parameters x tokens estimate, plus attention's 2.8%: 0.599 TFLOPs per image
    assert flops / (2 * n_224 * 257) == pytest.approx(1.027, abs=0.005)
    assert flops / 1e12 == pytest.approx(0.599, abs=0.001)
