"""AdamW parameter groups for DINOv2 pretraining (layer-wise lr decay, BEiT / Oquab et al. 2023).

A parameter's learning rate is ``lr * lr_multiplier`` and its weight decay ``wd * wd_multiplier``:

- layer-wise decay: block ``i`` gets ``rate ** (n_blocks + 1 - (i + 1))``; embeddings and tokens
  count as layer 0 and everything else (final norm, heads) as layer ``n_blocks + 1`` (multiplier 1);
- the patch embedding's multiplier is further scaled by ``patch_embed_lr_mult`` (0.2);
- norms, biases, LayerScale gammas and the tokens (cls, position, register, mask) get no weight
  decay (the reference decays the tokens; we do not, as ViT/DeiT practice);
- parameters of the heads' ``last_layer`` are flagged so the loop can freeze them early on.

Parameters with equal multipliers share one group to keep the fused optimizer's group count small.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

TOKEN_NAMES = ("cls_token", "pos_embed", "register_tokens", "mask_token")


def _backbone_name(name: str) -> str | None:
    """The name inside the backbone (``blocks.3.attn.qkv.weight``) or None for a head parameter."""
    marker = "backbone."
    idx = name.find(marker)
    return name[idx + len(marker) :] if idx >= 0 else None


def layer_id(name: str, n_blocks: int) -> int:
    """0 for embeddings/tokens, ``i + 1`` for block ``i``, ``n_blocks + 1`` for the rest."""
    inner = _backbone_name(name)
    if inner is None:
        return n_blocks + 1
    if inner.startswith("patch_embed") or inner.split(".")[0] in TOKEN_NAMES:
        return 0
    parts = inner.split(".")
    if parts[0] == "blocks":
        # "blocks.{i}.*", or chunked "blocks.{chunk}.{i}.*" (FSDP block chunks): the last integer wins
        ints = [int(p) for p in parts[1:3] if p.isdigit()]
        return ints[-1] + 1
    return n_blocks + 1


def lr_multiplier(name: str, n_blocks: int, layerwise_decay: float, patch_embed_lr_mult: float) -> float:
    mult = layerwise_decay ** (n_blocks + 1 - layer_id(name, n_blocks))
    if (_backbone_name(name) or "").startswith("patch_embed"):
        mult *= patch_embed_lr_mult
    return mult


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norms, biases, LayerScale gammas, 1-d parameters and the tokens are not decayed."""
    last = name.split(".")[-1]
    return (
        param.ndim <= 1
        or last == "bias"
        or "norm" in name
        or "gamma" in last
        or any(tok in name.split(".") for tok in TOKEN_NAMES)
    )


def param_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    n_blocks: int,
    layerwise_decay: float,
    patch_embed_lr_mult: float,
) -> list[dict[str, Any]]:
    """Groups ``{"params", "lr_multiplier", "wd_multiplier", "is_last_layer", "names"}``.

    ``named_params`` come from the student (names containing ``backbone.`` for the ViT and
    ``last_layer`` for the heads' final weight-normalised layer); frozen parameters are skipped.
    """
    groups: dict[tuple[float, float, bool], dict[str, Any]] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        key = (
            lr_multiplier(name, n_blocks, layerwise_decay, patch_embed_lr_mult),
            0.0 if no_weight_decay(name, param) else 1.0,
            "last_layer" in name,
        )
        group = groups.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr_multiplier": key[0],
                "wd_multiplier": key[1],
                "is_last_layer": key[2],
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(
    groups: list[dict[str, Any]], betas: tuple[float, float], fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW over ``groups``; fused kernels when every parameter is on CUDA (unless ``fused=False``)."""
    params = [p for g in groups for p in g["params"]]
    if fused is None:
        fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, betas=betas, fused=fused or None)


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_frozen: bool) -> None:
    """Set each group's lr and weight decay for this step; a frozen last layer gets lr 0."""
    for group in optimizer.param_groups:
        frozen = last_layer_frozen and group["is_last_layer"]
        group["lr"] = 0.0 if frozen else lr * group["lr_multiplier"]
        group["weight_decay"] = wd * group["wd_multiplier"]
