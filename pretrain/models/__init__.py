"""Backbones: the DINOv2 ViT, its size registry and checkpoint interoperability (:mod:`.io`).

``build_backbone("vit_small", img_size=518)`` builds a model; ``ARCHS`` lists the sizes (DINOv2
paper Table 17 and the official ``vision_transformer.py``; ``vit_tiny``/``vit_pico`` are ours, for
CPU tests and the 2-core demo).
"""

from __future__ import annotations

from typing import Any

from pretrain.models.vit import DinoVisionTransformer

ARCHS: dict[str, dict[str, Any]] = {
    "vit_pico": dict(embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0),
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    # SwiGLU of width 2/3 * 4 * 1536 = 4096 (the official "swiglufused" rounding)
    "vit_giant2": dict(embed_dim=1536, depth=40, num_heads=24, mlp_ratio=4.0, ffn_layer="swiglufused"),
}

# Our own models resize position embeddings to the exact grid with antialiasing (as the register
# models do); the class defaults reproduce the original models' scale-factor resize instead.
OWN_DEFAULTS: dict[str, Any] = dict(interpolate_antialias=True, interpolate_offset=0.0)


def build_backbone(arch: str, **overrides: Any) -> DinoVisionTransformer:
    """A :class:`DinoVisionTransformer` of a registered size; ``overrides`` replace any constructor
    argument (``img_size``, ``patch_size``, ``num_register_tokens``, ``drop_path_rate``, ...)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    return DinoVisionTransformer(**{**OWN_DEFAULTS, **ARCHS[arch], **overrides})


def arch_name(embed_dim: int, depth: int) -> str | None:
    """The registry name of a (width, depth) pair, or None for a custom size."""
    for name, spec in ARCHS.items():
        if spec["embed_dim"] == embed_dim and spec["depth"] == depth:
            return name
    return None


__all__ = ["ARCHS", "DinoVisionTransformer", "arch_name", "build_backbone"]
