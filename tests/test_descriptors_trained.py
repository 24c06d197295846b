"""load_descriptor on a copy descriptor trained here (pretrain.models.descriptor's file format)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from pretrain.models import build_backbone
from pretrain.models.descriptors import load_descriptor


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_trained_copy_descriptor_file(tmp_path: Path) -> None:
    from pretrain.models.descriptor import CopyDescriptor, save_descriptor

    torch.manual_seed(3)
    model = CopyDescriptor(
        build_backbone("vit_pico", img_size=32, patch_size=8), dim=24, input_size=32
    ).eval()
    path = save_descriptor(model, tmp_path / "copy.safetensors")
    desc = load_descriptor(path)
    assert (desc.kind, desc.dim, desc.input_size) == ("dinoflow-sscd", 24, 32)
    assert desc.model_id == f"dinoflow-sscd/vit_pico-p8-d24@{sha12(path)}"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(desc(x), model(x))
    with pytest.raises(ValueError, match="runs at its input_size 32, not 64"):
        load_descriptor(path, input_size=64)
