"""Backbone checkpoints: parity with transformers' Dinov2Model on real images, official-layout and
dinoflow round trips, chunked and wrapped official files, strict-loading errors, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.models import build_backbone
from pretrain.models.io import (
    CheckpointError,
    convert,
    describe,
    detect_layout,
    load_backbone,
    resize_pos_embed,
    save_backbone,
)

transformers = pytest.importorskip("transformers", reason="transformers (a dev dependency) is not installed")

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _images(folder: Path, n: int = 4, size: int = 224) -> torch.Tensor:
    """``n`` real JPEGs resized to ``size``, ImageNet-normalised, [n, 3, size, size] float32."""
    files = sorted(folder.rglob("*.JPEG"))[:n] or sorted(folder.rglob("*.jpg"))[:n]
    arrays = [
        np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)) / 255.0 for f in files
    ]
    x = (np.stack(arrays) - MEAN) / STD
    return torch.from_numpy(x).permute(0, 3, 1, 2).float()


def _hf_model(regs: int = 0, swiglu: bool = False, image_size: int = 224):
    kw = dict(
        hidden_size=96, num_hidden_layers=3, num_attention_heads=3, patch_size=14, image_size=image_size,
        use_swiglu_ffn=swiglu, layerscale_value=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    if regs:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=regs, **kw)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kw))
    with torch.no_grad():  # random tokens, biases and scales (the init leaves many at 0 or 1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _ours_tokens(model, x: torch.Tensor) -> torch.Tensor:
    out = model.forward_features(x)
    return torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_regtokens"], out["x_norm_patchtokens"]], 1)


@pytest.fixture(scope="module")
def real_images(imagenette_dir: Path) -> torch.Tensor:
    return _images(imagenette_dir)


@pytest.mark.parametrize("regs,swiglu", [(0, False), (0, True), (4, False)])
def test_hf_to_ours_and_back_match_on_real_images(
    tmp_path: Path, real_images: torch.Tensor, regs, swiglu
) -> None:
    hf = _hf_model(regs, swiglu)
    hf.save_pretrained(tmp_path / "hf")
    assert detect_layout(tmp_path / "hf") == "hf"
    ours = load_backbone(tmp_path / "hf")
    assert ours.num_register_tokens == regs and ours.embed_dim == 96 and ours.n_blocks == 3
    with torch.no_grad():
        ref = hf(pixel_values=real_images).last_hidden_state
        got = _ours_tokens(ours, real_images)
        # other input sizes too: non-register HF models resize without antialias, and so do we
        small = real_images[:, :, :112, :168]
        ref_small, got_small = hf(pixel_values=small).last_hidden_state, _ours_tokens(ours, small)
    assert (ref - got).abs().max() <= 1e-4 and (ref_small - got_small).abs().max() <= 1e-4
    assert torch.equal(ours(real_images), got[:, 0])

    save_backbone(ours, tmp_path / "back", layout="hf")
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["model_type"] == ("dinov2_with_registers" if regs else "dinov2")
    back = type(hf).from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        again = back(pixel_values=real_images).last_hidden_state
    assert (again - ref).abs().max() <= 1e-4


def test_our_model_to_hf_records_our_resize_mode(tmp_path: Path, real_images: torch.Tensor) -> None:
    ours = build_backbone("vit_pico", patch_size=14, img_size=224).eval()  # exact size, antialiased
    save_backbone(ours, tmp_path / "hf", layout="hf")
    hf = transformers.Dinov2Model.from_pretrained(tmp_path / "hf").eval()
    back = load_backbone(tmp_path / "hf")
    assert back.interpolate_antialias and back.interpolate_offset == 0.0
    with torch.no_grad():
        ref = _ours_tokens(ours, real_images)
        assert (hf(pixel_values=real_images).last_hidden_state - ref).abs().max() <= 1e-4  # native grid
        assert (_ours_tokens(back, real_images) - ref).abs().max() == 0
        # at another size HF's Dinov2Model resizes without antialiasing: outputs differ there
        small = real_images[:, :, :112, :112]
        hf_small = hf(pixel_values=small).last_hidden_state
        ours_small = _ours_tokens(ours, small)
    assert torch.equal(_ours_tokens(back, small), ours_small)
    assert (hf_small - ours_small).abs().max() > 1e-4


def test_dinoflow_round_trip_is_identical(tmp_path: Path) -> None:
    model = build_backbone("vit_pico", patch_size=8, img_size=64, num_register_tokens=2, ffn_layer="swiglu")
    path = save_backbone(model, tmp_path / "b.safetensors")
    assert detect_layout(path) == "dinoflow"
    loaded = load_backbone(path)
    assert loaded.arch_kwargs == model.arch_kwargs
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.save({"arch": model.arch_kwargs, "state_dict": a}, tmp_path / "b.pt")
    assert detect_layout(tmp_path / "b.pt") == "dinoflow"
    assert torch.equal(load_backbone(tmp_path / "b.pt").pos_embed, model.pos_embed)


def test_official_round_trip_chunked_and_wrapped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_backbone(
        "vit_pico", img_size=518, interpolate_offset=0.1, interpolate_antialias=False
    ).eval()
    path = save_backbone(model, tmp_path / "dinov2_vitp14_pretrain.pth", layout="official")
    assert detect_layout(path) == "official"
    loaded = load_backbone(path)
    assert loaded.pos_embed.shape == (1, 1370, 128) and loaded.interpolate_offset == 0.1
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = model.forward_features(x)["x_norm_patchtokens"]
        assert torch.equal(loaded.forward_features(x)["x_norm_patchtokens"], ref)
    # the official BlockChunk layout (block_chunks=2: blocks.1.3. holds global block 3)
    state = model.state_dict()
    chunked = {(f"blocks.{int(k.split('.')[1]) // 3}.{k[len('blocks.') :]}" if k.startswith("blocks.") else k): v
               for k, v in state.items()}  # fmt: skip
    assert "blocks.1.3.attn.qkv.weight" in chunked
    torch.save(chunked, tmp_path / "chunked.pth")
    torch.save({"teacher": {f"backbone.{k}": v for k, v in state.items()}}, tmp_path / "teacher.pth")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bare.safetensors"))
    assert detect_layout(tmp_path / "bare.safetensors") == "official"
    for name in ("chunked.pth", "teacher.pth", "bare.safetensors"):
        with torch.no_grad():
            assert torch.equal(load_backbone(tmp_path / name).forward_features(x)["x_norm_patchtokens"], ref)


def test_official_register_model_is_recognised(tmp_path: Path) -> None:
    model = build_backbone("vit_small", img_size=518, num_register_tokens=4)
    path = save_backbone(model, tmp_path / "dinov2_vits14_reg4_pretrain.pth", layout="official")
    info = describe(path)
    assert info["arch"] == "vit_small" and info["registers"] == 4 and info["img_size"] == 518
    assert info["num_heads"] == 6 and info["params"] == 22_056_576 + 4 * 384
    assert info["interpolate_antialias"] and info["interpolate_offset"] == 0.0  # register models' mode


def test_strict_loading_names_missing_unexpected_and_mismatched(tmp_path: Path) -> None:
    model = build_backbone("vit_pico", patch_size=8, img_size=64)
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "blocks.2.ls1.gamma"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: \['blocks.2.ls1.gamma'\]"):
        load_backbone(tmp_path / "missing.pth")
    torch.save({**state, "head.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: \['head.weight'\]"):
        load_backbone(tmp_path / "extra.pth")
    path = save_backbone(model, tmp_path / "b.safetensors")
    with pytest.raises(
        CheckpointError, match=r"pos_embed: checkpoint \(1, 65, 128\) vs model \(1, 17, 128\)"
    ):
        load_backbone(path, img_size=32)
    with pytest.raises(ValueError, match="valid layouts: dinoflow, official, hf"):
        load_backbone(path, layout="timm")
    odd = build_backbone("vit_pico", embed_dim=96, num_heads=2, img_size=28, patch_size=14).eval()
    save_backbone(odd, tmp_path / "odd.pth", layout="official")
    with pytest.raises(CheckpointError, match="pass num_heads"):
        load_backbone(tmp_path / "odd.pth")
    assert load_backbone(tmp_path / "odd.pth", num_heads=2).blocks[0].attn.num_heads == 2
    torch.save({"foo": torch.zeros(1)}, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="expected a backbone checkpoint; found a torch state dict"):
        detect_layout(tmp_path / "junk.pth")


def test_resize_pos_embed_for_a_higher_resolution_phase(tmp_path: Path) -> None:
    low = build_backbone("vit_pico", patch_size=14, img_size=224)
    high = build_backbone("vit_pico", patch_size=14, img_size=518)
    state = resize_pos_embed(low.state_dict(), 37)
    assert state["pos_embed"].shape == (1, 1370, 128)
    assert torch.equal(state["pos_embed"][:, 0], low.pos_embed[:, 0].detach())
    high.load_state_dict(state, strict=True)
    assert torch.equal(resize_pos_embed(low.pos_embed.detach(), (16, 16)), low.pos_embed.detach())
    with pytest.raises(ValueError, match="expected pos_embed"):
        resize_pos_embed(torch.zeros(5, 3), 4)


def test_cli_convert_and_info(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli_model import model_app

    model = build_backbone("vit_pico", patch_size=14, img_size=224, num_register_tokens=4)
    src = save_backbone(model, tmp_path / "ours.safetensors")
    runner = CliRunner()
    result = runner.invoke(model_app, ["convert", str(src), str(tmp_path / "hf"), "--to", "hf"])
    assert result.exit_code == 0, result.output
    n = sum(p.numel() for p in model.parameters())
    assert f"wrote {tmp_path / 'hf'} (hf, vit_pico, {n:,} parameters)" in result.output
    result = runner.invoke(model_app, ["info", str(tmp_path / "hf"), "--json"])
    info = json.loads(result.output)
    assert info["layout"] == "hf" and info["registers"] == 4 and info["arch"] == "vit_pico"
    result = runner.invoke(model_app, ["info", str(src)])
    assert result.exit_code == 0 and "dinoflow" in result.output and "vit_pico" in result.output
    result = runner.invoke(model_app, ["convert", str(src), str(tmp_path / "x"), "--to", "onnx"])
    assert result.exit_code == 1 and "valid layouts" in result.output
    assert torch.equal(
        load_backbone(convert(tmp_path / "hf", tmp_path / "o.pth", "official")).cls_token, model.cls_token
    )
