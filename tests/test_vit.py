"""The DINOv2 ViT backbone: sizes, official state-dict names, shapes, position embeddings, masking,
drop path and attention backends."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.models import ARCHS, build_backbone
from pretrain.models.layers import Attention, add_residual_subset, attention_backend, drop_path
from pretrain.models.vit import DinoVisionTransformer, interpolate_patch_pos

# REFERENCE.md (pos_embed for 518 px, mask token included): 22.1M, 86.6M, 304M, 1136M
PARAMS_518 = {"vit_small": 22.1e6, "vit_base": 86.6e6, "vit_large": 304e6, "vit_giant2": 1136e6}


def _pico(**kw):
    torch.manual_seed(0)
    return build_backbone("vit_pico", **{"patch_size": 14, "img_size": 56, **kw}).eval()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sizes_build_on_meta_and_match_reference_param_counts(arch: str) -> None:
    with torch.device("meta"):
        model = build_backbone(arch, img_size=518)
    n = sum(p.numel() for p in model.parameters())
    spec = ARCHS[arch]
    assert model.embed_dim == spec["embed_dim"] and model.n_blocks == len(model.blocks) == spec["depth"]
    assert model.pos_embed.shape == (1, 1 + 37 * 37, spec["embed_dim"])
    if arch in PARAMS_518:
        ref = PARAMS_518[arch]
        assert abs(n - ref) / ref < 0.002, f"{arch}: {n / 1e6:.2f}M params vs REFERENCE {ref / 1e6}M"


def test_official_state_dict_names_and_shapes() -> None:
    with torch.device("meta"):
        small = build_backbone("vit_small", img_size=518, num_register_tokens=4)
        giant = build_backbone("vit_giant2", img_size=518)
    s = {k: tuple(v.shape) for k, v in small.state_dict().items()}
    assert s["cls_token"] == (1, 1, 384) and s["pos_embed"] == (1, 1370, 384)
    assert s["register_tokens"] == (1, 4, 384) and s["mask_token"] == (1, 384)
    assert s["patch_embed.proj.weight"] == (384, 3, 14, 14)
    assert s["blocks.11.attn.qkv.weight"] == (1152, 384) and s["blocks.11.attn.proj.bias"] == (384,)
    assert s["blocks.0.ls1.gamma"] == (384,) and s["blocks.0.ls2.gamma"] == (384,)
    assert s["blocks.0.mlp.fc1.weight"] == (1536, 384) and s["norm.weight"] == (384,)
    assert not any(k.startswith("blocks.0.0.") for k in s)  # no chunk level
    g = {k: tuple(v.shape) for k, v in giant.state_dict().items()}
    assert g["blocks.39.mlp.w12.weight"] == (2 * 4096, 1536) and g["blocks.39.mlp.w3.weight"] == (1536, 4096)


def test_unknown_arch_and_options_fail_with_the_choices() -> None:
    with pytest.raises(ValueError, match="vit_small"):
        build_backbone("vit_huge")
    with pytest.raises(ValueError, match="swiglufused"):
        build_backbone("vit_pico", ffn_layer="moe")
    with pytest.raises(TypeError, match="bogus"):
        DinoVisionTransformer(bogus=1)


@pytest.mark.parametrize("size", [(56, 56), (112, 112), (56, 84), (98, 42)])
@pytest.mark.parametrize("regs", [0, 4])
def test_forward_features_shapes(size: tuple[int, int], regs: int) -> None:
    model = _pico(num_register_tokens=regs)
    x = torch.randn(2, 3, *size)
    n = (size[0] // 14) * (size[1] // 14)
    with torch.no_grad():
        out = model.forward_features(x)
        cls = model(x)
    assert out["x_norm_clstoken"].shape == (2, 128) and torch.equal(cls, out["x_norm_clstoken"])
    assert out["x_norm_regtokens"].shape == (2, regs, 128)
    assert out["x_norm_patchtokens"].shape == (2, n, 128)
    assert out["x_prenorm"].shape == (2, 1 + regs + n, 128) and out["masks"] is None
    assert torch.isfinite(out["x_prenorm"]).all()


def test_vit_small_at_224_and_518() -> None:
    torch.manual_seed(0)
    model = build_backbone("vit_small", img_size=518).eval()
    for size in (224, 518):
        with torch.no_grad():
            out = model.forward_features(torch.randn(1, 3, size, size))
        assert out["x_norm_patchtokens"].shape == (1, (size // 14) ** 2, 384)


def test_sizes_not_multiple_of_patch_are_rejected() -> None:
    model = _pico()
    with pytest.raises(ValueError, match="not a multiple of the patch size 14"):
        model(torch.randn(1, 3, 56, 60))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_backbone("vit_pico", img_size=100, patch_size=14)


def test_init_follows_the_official_recipe() -> None:
    model = build_backbone("vit_pico", img_size=224, num_register_tokens=4)
    assert torch.count_nonzero(model.mask_token) == 0
    assert model.cls_token.abs().max() < 1e-4 and model.register_tokens.abs().max() < 1e-4
    # trunc_normal(std=0.02) with the official absolute bounds (-2, 2): in effect a plain normal
    assert 0.018 < model.pos_embed.std() < 0.022
    qkv = model.blocks[0].attn.qkv
    assert 0.018 < qkv.weight.std() < 0.022 and torch.count_nonzero(qkv.bias) == 0
    assert torch.allclose(model.blocks[3].ls2.gamma, torch.full((128,), 1e-5))
    assert not hasattr(build_backbone("vit_pico", init_values=None).blocks[0].ls1, "gamma")


def test_pos_embed_identity_at_native_grid_and_smooth_resize() -> None:
    # a smooth field on the 16 x 16 grid: resizing must track the same field on the new grid
    def field(h: int, w: int) -> torch.Tensor:
        yy, xx = torch.meshgrid(
            (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
        )  # pixel-centre coordinates in [0, 1], as align_corners=False resizing uses
        chans = [torch.sin(2 * yy), torch.cos(3 * xx), yy * xx]
        return torch.stack(chans, -1).reshape(1, h * w, 3)

    pos = field(16, 16)
    assert interpolate_patch_pos(pos, (16, 16)) is pos
    for grid in [(37, 37), (8, 12)]:
        for antialias in (False, True):
            out = interpolate_patch_pos(pos, grid, offset=0.0, antialias=antialias)
            assert out.shape == (1, grid[0] * grid[1], 3)
            # interior points (the borders extrapolate): close to the analytic field
            err = (out - field(*grid)).reshape(*grid, 3)[1:-1, 1:-1].abs().max()
            assert err < 0.05, (grid, antialias, err)


def test_original_and_register_resize_modes() -> None:
    model = _pico(img_size=518)  # a 37 x 37 grid, as the released checkpoints
    pos = model.pos_embed[:, 1:].detach()
    orig = interpolate_patch_pos(pos, (16, 16), offset=0.1, antialias=False)
    reg = interpolate_patch_pos(pos, (16, 16), offset=0.0, antialias=True)
    img = pos.reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(img, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic")  # official kludge
    assert torch.equal(orig, expected.permute(0, 2, 3, 1).reshape(1, 256, -1))
    assert not torch.allclose(orig, reg)
    model.interpolate_offset, model.interpolate_antialias = 0.0, True
    assert torch.equal(model.interpolate_pos_encoding((16, 16))[:, 1:], reg)
    assert torch.equal(model.interpolate_pos_encoding((37, 37)), model.pos_embed)


def test_masked_patches_become_mask_token_before_position_embedding() -> None:
    model = _pico(num_register_tokens=2)
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 3, 56, 56)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [0, 5, 15]] = True
    with torch.no_grad():
        tokens = model.prepare_tokens_with_masks(x, masks)
        pos = model.interpolate_pos_encoding((4, 4))[0, 1:]
        patches = tokens[:, 3:]  # after cls + 2 registers
        assert torch.allclose(patches[0, 5], model.mask_token[0] + pos[5])
        plain = model.prepare_tokens_with_masks(x)
        assert torch.equal(patches[1], plain[1, 3:]) and torch.equal(patches[0, 1], plain[0, 4])
        # images differing only inside masked patches give identical outputs
        y = x.clone()
        y[0, :, 14:28, 14:28] += 5.0  # patch index 5
        a, b = model.forward_features(x, masks), model.forward_features(y, masks)
    assert torch.equal(a["x_norm_clstoken"], b["x_norm_clstoken"]) and a["masks"] is masks


def test_forward_features_list_equals_separate_calls_and_intermediate_layers() -> None:
    model = _pico(num_register_tokens=1)
    g, loc = torch.randn(2, 3, 56, 56), torch.randn(3, 3, 28, 28)
    masks = torch.rand(2, 16) < 0.3
    with torch.no_grad():
        both = model.forward_features_list([g, loc], [masks, None])
        single = [model.forward_features(g, masks), model.forward_features(loc)]
        layers = model.get_intermediate_layers(g, n=2, reshape=True, return_class_token=True)
        last = model.forward_features(g)
        picked = model.get_intermediate_layers(g, n=[0, 5], norm=False)
    for a, b in zip(both, single, strict=True):
        for key in ("x_norm_clstoken", "x_norm_patchtokens", "x_prenorm"):
            assert torch.allclose(a[key], b[key], atol=1e-6)
    assert len(layers) == 2 and layers[1][0].shape == (2, 128, 4, 4)
    assert torch.allclose(layers[1][1], last["x_norm_clstoken"], atol=1e-6)
    assert torch.allclose(layers[1][0].flatten(2).transpose(1, 2), last["x_norm_patchtokens"], atol=1e-6)
    assert torch.allclose(picked[1], last["x_prenorm"][:, 2:], atol=1e-6)


def test_sdpa_attention_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    attn = Attention(64, num_heads=4).eval()
    x = torch.randn(2, 10, 64)
    q, k, v = attn.qkv(x).reshape(2, 10, 3, 4, 16).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-1, -2) / math.sqrt(16)).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 10, 64))
    assert attention_backend(x) == "sdpa"  # CPU tensors never take xformers
    assert torch.allclose(attn(x), expected, atol=1e-5)


@pytest.mark.gpu
def test_xformers_and_sdpa_agree_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: xformers memory_efficient_attention runs on GPU tensors only")
    pytest.importorskip("xformers.ops", reason="xformers not installed (pip install dinoflow[gpu])")
    torch.manual_seed(0)
    model = _pico(img_size=224).cuda()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        assert attention_backend(x) == "xformers"
        fast = model(x)
        for blk in model.blocks:
            blk.attn.backend = "sdpa"
        ref = model(x)
    assert torch.allclose(fast, ref, atol=1e-4)


def test_drop_path_and_batch_subset() -> None:
    torch.manual_seed(0)
    x = torch.ones(4000, 3)
    y = drop_path(x, 0.25, training=True)
    kept = (y[:, 0] != 0).float().mean()
    assert 0.7 < kept < 0.8 and torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))
    assert drop_path(x, 0.25, training=False) is x
    base = torch.zeros(8, 2, 3)
    out = add_residual_subset(base, lambda t: torch.ones_like(t), drop_ratio=0.5)
    touched = out.flatten(1).abs().sum(1) > 0
    assert touched.sum() == 4 and torch.allclose(out[touched], torch.full((4, 2, 3), 2.0))


def test_training_mode_is_stochastic_with_drop_path_and_gradients_flow() -> None:
    torch.manual_seed(0)
    model = build_backbone("vit_pico", patch_size=14, img_size=56, drop_path_rate=0.4, drop_path_uniform=True)
    assert all(b.sample_drop_ratio == 0.4 for b in model.blocks)
    ramp = build_backbone("vit_pico", drop_path_rate=0.4)
    assert ramp.blocks[0].sample_drop_ratio == 0 and ramp.blocks[-1].sample_drop_ratio == pytest.approx(0.4)
    x = torch.randn(8, 3, 56, 56)
    masks = torch.rand(8, 16) < 0.5
    model.train()
    a = model(x, masks, is_training=True)
    b = model(x, masks, is_training=True)
    assert not torch.allclose(a["x_norm_clstoken"], b["x_norm_clstoken"])
    (a["x_norm_clstoken"].sum() + a["x_norm_patchtokens"].sum()).backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
