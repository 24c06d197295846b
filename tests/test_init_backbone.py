"""``model.init_backbone``: a new run's student and teacher start from given backbone weights (a
run's exported teacher, for continued pretraining); a resumed run takes its checkpoint instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain import distributed as D
from pretrain.config import load_config
from pretrain.models import build_backbone
from pretrain.models.io import load_backbone, save_backbone
from pretrain.models.io_files import CheckpointError
from pretrain.train import build_phase

CPU = D.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _weights(path: Path, seed: int, patch_size: int = 8) -> Path:
    torch.manual_seed(seed)
    return save_backbone(
        build_backbone("vit_pico", img_size=64, patch_size=patch_size, init_values=None), path
    )


@pytest.mark.parametrize("objective", ["demo", "sscd-demo"])
def test_new_run_starts_from_the_given_backbone(tmp_path: Path, objective: str) -> None:
    start = _weights(tmp_path / "start.safetensors", seed=3)
    want = load_backbone(start)
    cfg = load_config(objective, ["model.layerscale=0", f"model.init_backbone={start}"])
    phase = build_phase(cfg, "main", 0, 10, CPU, resume=None)
    nets = [phase.model.student.backbone]
    if objective == "demo":
        nets.append(phase.model.teacher.backbone)
    for net in nets:
        assert torch.equal(net.blocks[0].attn.qkv.weight, want.blocks[0].attn.qkv.weight)
        assert torch.equal(net.patch_embed.proj.weight, want.patch_embed.proj.weight)
    fresh = build_phase(load_config(objective, ["model.layerscale=0"]), "main", 0, 10, CPU, resume=None)
    assert not torch.equal(
        fresh.model.student.backbone.blocks[0].attn.qkv.weight, want.blocks[0].attn.qkv.weight
    )


def test_a_backbone_of_another_architecture_is_a_one_line_error(tmp_path: Path) -> None:
    other = _weights(tmp_path / "other.safetensors", seed=0, patch_size=16)
    cfg = load_config("demo", ["model.layerscale=0", f"model.init_backbone={other}"])
    with pytest.raises(
        CheckpointError, match="model.init_backbone .*other.safetensors.* does not fit model"
    ) as err:
        build_phase(cfg, "main", 0, 10, CPU, resume=None)
    assert "\n" not in str(err.value)
