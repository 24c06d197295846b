"""AdamW parameter groups: layer-wise decay, patch-embed multiplier, no-decay set, last-layer freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pretrain.optim import (
    apply_schedule,
    build_optimizer,
    layer_id,
    lr_multiplier,
    no_weight_decay,
    param_groups,
)


class TinyViT(nn.Module):
    def __init__(self, n_blocks: int = 3, dim: int = 8) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, 2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 2, 2)
        self.blocks = nn.ModuleList()
        for _ in range(n_blocks):
            blk = nn.Module()
            blk.norm1 = nn.LayerNorm(dim)
            blk.mlp = nn.Linear(dim, dim)
            blk.ls1 = nn.Module()
            blk.ls1.gamma = nn.Parameter(torch.ones(dim))
            self.blocks.append(blk)
        self.norm = nn.LayerNorm(dim)


class Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyViT()
        self.dino_head = nn.Module()
        self.dino_head.mlp = nn.Linear(8, 8)
        self.dino_head.last_layer = nn.Linear(8, 16, bias=False)


def test_layer_ids_and_multipliers() -> None:
    n = 3
    assert layer_id("backbone.cls_token", n) == 0
    assert layer_id("backbone.patch_embed.proj.weight", n) == 0
    assert layer_id("backbone.blocks.0.mlp.weight", n) == 1
    assert layer_id("backbone.blocks.2.mlp.weight", n) == 3
    assert layer_id("backbone.blocks.1.2.mlp.weight", n) == 3  # chunked blocks
    assert layer_id("backbone.norm.weight", n) == 4
    assert layer_id("dino_head.mlp.weight", n) == 4
    # block i gets rate ** (n + 1 - (i + 1)); heads 1; patch embed additionally x 0.2
    assert lr_multiplier("backbone.blocks.0.mlp.weight", n, 0.9, 0.2) == pytest.approx(0.9**3)
    assert lr_multiplier("backbone.blocks.2.mlp.weight", n, 0.9, 0.2) == pytest.approx(0.9)
    assert lr_multiplier("dino_head.mlp.weight", n, 0.9, 0.2) == 1.0
    assert lr_multiplier("backbone.patch_embed.proj.weight", n, 0.9, 0.2) == pytest.approx(0.2 * 0.9**4)
    assert lr_multiplier("backbone.pos_embed", n, 0.9, 0.2) == pytest.approx(0.9**4)


def test_no_weight_decay_set() -> None:
    student = Student()
    decayed = {n for n, p in student.named_parameters() if not no_weight_decay(n, p)}
    assert decayed == {
        "backbone.patch_embed.proj.weight",
        *{f"backbone.blocks.{i}.mlp.weight" for i in range(3)},
        "dino_head.mlp.weight",
        "dino_head.last_layer.weight",
    }


def test_groups_cover_every_parameter_once_and_schedule_applies() -> None:
    student = Student()
    student.backbone.mask_token.requires_grad_(False)
    groups = param_groups(student.named_parameters(), 3, 0.9, 0.2)
    names = [n for g in groups for n in g["names"]]
    expected = [n for n, p in student.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(expected) and len(names) == len(set(names))
    opt = build_optimizer(groups, betas=(0.9, 0.999))
    assert not opt.defaults.get("fused")  # CPU parameters
    apply_schedule(opt, lr=1.0, wd=0.1, last_layer_frozen=True)
    by_name = {n: g for g in opt.param_groups for n in g["names"]}
    assert by_name["dino_head.last_layer.weight"]["lr"] == 0.0
    assert (
        by_name["dino_head.mlp.weight"]["lr"] == 1.0
        and by_name["dino_head.mlp.weight"]["weight_decay"] == 0.1
    )
    assert by_name["backbone.norm.weight"]["weight_decay"] == 0.0
    assert by_name["backbone.blocks.0.mlp.weight"]["lr"] == pytest.approx(0.9**3)
    apply_schedule(opt, lr=1.0, wd=0.1, last_layer_frozen=False)
    assert by_name["dino_head.last_layer.weight"]["lr"] == 1.0
    # one real step runs and moves a decayed weight
    weight = dict(student.named_parameters())["dino_head.mlp.weight"]
    before = weight.detach().clone()
    torch.stack([p.sum() for p in student.parameters()]).sum().backward()
    opt.step()
    assert not torch.equal(before, weight)


@pytest.mark.parametrize(
    "norm_last_layer", [False, True], ids=["dinov2-trainable-gain", "dino-v1-fixed-gain"]
)
def test_weight_norm_gain_is_in_the_last_layer_group(norm_last_layer: bool) -> None:
    """DINOv2 trains the gain g with the last layer's lr, weight decay and freezing; v1 never trains it."""
    from pretrain.heads import DINOHead

    head = DINOHead(8, 16, hidden_dim=8, bottleneck_dim=4, norm_last_layer=norm_last_layer)
    named = [(f"dino_head.{n}", p) for n, p in head.named_parameters()]
    groups = param_groups(named, 3, 0.9, 0.2)
    by_name = {n: g for g in groups for n in g["names"]}
    gain, direction = (
        "dino_head.last_layer.parametrizations.weight.original0",
        "dino_head.last_layer.parametrizations.weight.original1",
    )
    assert by_name[direction]["is_last_layer"]
    if norm_last_layer:
        assert gain not in by_name
        return
    # same group as the prototypes' directions: lr multiplier 1, decayed (the reference's weight_g has
    # wd_multiplier 1: not a bias, norm or gamma), frozen with them
    assert by_name[gain] is by_name[direction]
    assert by_name[gain]["lr_multiplier"] == 1.0 and by_name[gain]["wd_multiplier"] == 1.0
    opt = build_optimizer(groups, betas=(0.9, 0.999))
    apply_schedule(opt, lr=0.5, wd=0.04, last_layer_frozen=True)
    g_group = next(g for g in opt.param_groups if gain in g["names"])
    assert g_group["lr"] == 0.0
    apply_schedule(opt, lr=0.5, wd=0.04, last_layer_frozen=False)
    assert g_group["lr"] == 0.5 and g_group["weight_decay"] == 0.04
