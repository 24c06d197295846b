"""CopyDescriptor: pooling, unit-norm output, strict safetensors files, a backbone as its start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pretrain.config import load_config
from pretrain.models import build_backbone
from pretrain.models.descriptor import (
    FORMAT,
    POOLINGS,
    CopyDescriptor,
    gem,
    load_descriptor_file,
    save_descriptor,
)
from pretrain.models.io import CheckpointError, load_backbone, save_backbone
from pretrain.sscd import build_descriptor

REPO = Path(__file__).resolve().parents[1]


def tiny(pooling: str = "cls_gem", dim: int = 16) -> CopyDescriptor:
    torch.manual_seed(0)
    backbone = build_backbone("vit_pico", img_size=32, patch_size=8, depth=2, init_values=None)
    return CopyDescriptor(backbone, dim=dim, pooling=pooling, input_size=32)


def test_gem_is_sscds_on_nonnegative_tokens_the_mean_at_p1_and_keeps_signs() -> None:
    x = torch.rand(2, 7, 5) + 0.01
    sscd_gem = x.clamp(min=1e-6).pow(3).mean(dim=1).pow(1 / 3)  # SSCD's GlobalGeMPool2d over the tokens
    torch.testing.assert_close(gem(x, 3.0), sscd_gem)
    torch.testing.assert_close(gem(x - 0.5, 1.0), (x - 0.5).mean(dim=1))
    torch.testing.assert_close(gem(-x, 3.0), -gem(x, 3.0))  # odd in x: negative tokens are not zeroed
    assert (gem(x, 8.0) <= x.amax(dim=1) + 1e-6).all() and (gem(x, 8.0) >= gem(x, 3.0) - 1e-6).all()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_forward_gives_unit_rows_of_dim_and_gradients_reach_the_backbone(pooling: str) -> None:
    model = tiny(pooling)
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert out.shape == (3, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    out.sum().backward()
    grad = model.backbone.patch_embed.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert not model.backbone.mask_token.requires_grad  # never used: DDP needs every trained param used
    assert model.proj.in_features == (256 if pooling == "cls_gem" else 128)


def test_save_and_load_round_trip_exactly_and_in_fp16(tmp_path: Path) -> None:
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    path = save_descriptor(model, tmp_path / "d.safetensors")
    back = load_descriptor_file(path)
    assert (back.dim, back.input_size, back.pooling, back.gem_p) == (16, 32, "cls_gem", 3.0)
    assert not back.training
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
    half = load_descriptor_file(save_descriptor(model, tmp_path / "half" / "d.safetensors", torch.float16))
    assert half.proj.weight.dtype == torch.float32
    torch.testing.assert_close(half(x), model(x), rtol=0, atol=2e-3)
    assert load_descriptor_file(tmp_path / "half").dim == 16  # a folder holding one descriptor


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_wrong_files_are_one_line_errors(tmp_path: Path) -> None:
    backbone = tmp_path / "backbone.safetensors"
    save_backbone(build_backbone("vit_pico", img_size=32, patch_size=8, depth=1), backbone)
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    cases = {
        backbone: "found a dinoflow backbone",
        text: "found a text file",
        other: "format 'pt'",
        tmp_path / "missing.safetensors": "no such file",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError) as exc:
            load_descriptor_file(path)
        assert message in _one_line(exc)
    # a descriptor whose tensors do not match its metadata (edited, or cut short)
    model = tiny()
    state = {k: v for k, v in model.state_dict().items() if k != "proj.bias"}
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={"format": FORMAT, "arch": json.dumps(model.arch())})
    with pytest.raises(CheckpointError) as exc:
        load_descriptor_file(bad)
    assert "missing keys: ['proj.bias']" in _one_line(exc)
    broken = tmp_path / "broken.safetensors"
    save_file(model.state_dict(), str(broken), metadata={"format": FORMAT, "arch": "{}"})
    with pytest.raises(CheckpointError) as exc:
        load_descriptor_file(broken)
    assert "does not build a descriptor" in _one_line(exc)


def test_backbone_initialised_from_the_shipped_bootstrap_backbone() -> None:
    asset = REPO / "assets" / "bootstrap-backbone"
    if not asset.exists():
        pytest.skip(f"{asset} not in this checkout")
    cfg = load_config("sscd-demo", [f"sscd.init_backbone={asset}", "model.layerscale=1e-5"])  # as shipped
    model = build_descriptor(cfg)
    shipped = load_backbone(asset)
    for key, value in shipped.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[key], value.float(), msg=key)
    assert not torch.equal(
        build_descriptor(cfg, pretrained=False).backbone.cls_token, model.backbone.cls_token
    )
    # without LayerScale in this config, the shipped gammas are folded in: the same features
    folded = build_descriptor(load_config("sscd-demo", [f"sscd.init_backbone={asset}", "model.layerscale=0"]))
    assert not any("gamma" in k for k in folded.backbone.state_dict())
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(folded.backbone(x), shipped.float()(x), rtol=1e-4, atol=1e-4)
    # at another view size the position embeddings are resized; another width is a one-line error
    assert (
        build_descriptor(load_config("sscd-demo", [f"sscd.init_backbone={asset}", "sscd.size=96"])).input_size
        == 96
    )
    with pytest.raises(CheckpointError) as exc:
        build_descriptor(load_config("sscd-demo", [f"sscd.init_backbone={asset}", "model.arch=vit_tiny"]))
    assert "does not fit model.* of this config" in _one_line(exc)
