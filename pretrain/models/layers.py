"""Building blocks of the DINOv2 ViT: patch embedding, attention, feed-forwards, LayerScale, DropPath.

Parameter names follow the official facebookresearch/dinov2 layout (``attn.qkv``, ``attn.proj``,
``mlp.fc1``/``mlp.fc2`` or ``mlp.w12``/``mlp.w3``, ``ls1.gamma``), so official checkpoints load as
they are. Attention uses ``torch.nn.functional.scaled_dot_product_attention``; xformers'
``memory_efficient_attention`` is used instead when it is importable and the tensors are on CUDA,
decided per call (nothing is probed at import time).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@functools.lru_cache(maxsize=1)
def _xformers_ops() -> Any:
    """The ``xformers.ops`` module, or None when xformers is not installed (checked once, lazily)."""
    try:
        return importlib.import_module("xformers.ops")
    except Exception:  # noqa: BLE001 - a broken xformers install must fall back, not crash
        return None


def attention_backend(x: Tensor, backend: str = "auto") -> str:
    """``"xformers"`` or ``"sdpa"`` for a tensor ``x``: ``auto`` picks xformers only on CUDA tensors
    with xformers importable and outside ``torch.compile`` tracing."""
    if backend not in ("auto", "sdpa", "xformers"):
        raise ValueError(f"unknown attention backend {backend!r}; valid: auto, sdpa, xformers")
    if backend == "auto":
        if torch.compiler.is_compiling() or not x.is_cuda or _xformers_ops() is None:
            return "sdpa"
        return "xformers"
    if backend == "xformers" and _xformers_ops() is None:
        raise RuntimeError("attention backend 'xformers' requested but xformers is not importable")
    return backend


def multihead_attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "auto") -> Tensor:
    """Softmax attention of ``q, k, v`` [B, N, H, Dh] (scale Dh^-0.5, no mask) -> [B, N, H, Dh]."""
    if attention_backend(q, backend) == "xformers":
        return _xformers_ops().memory_efficient_attention(q, k, v)
    # SDPA wants [B, H, N, Dh]; transposes are views, SDPA handles the strides
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class PatchEmbed(nn.Module):
    """Image [B, C, H, W] -> patch tokens [B, (H/p)*(W/p), D] by a stride-p convolution (``proj``)."""

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input size {h}x{w} is not a multiple of the patch size {p}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (official layout)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.backend = "auto"  # "auto" | "sdpa" | "xformers" (tests compare the two)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        # [B, N, 3, H, Dh] and unbind: q, k, v are views of one projection, no copies
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        out = multihead_attention(q, k, v, self.backend)
        return self.proj(out.reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (hidden ``hidden_features``)."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def swiglu_hidden(hidden_features: int) -> int:
    """The official fused SwiGLU width: 2/3 of the MLP width rounded up to a multiple of 8 (6144 -> 4096)."""
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): w3(silu(x W1) * (x W2)), W1 and W2 fused as ``w12``.

    ``hidden_features`` is the MLP width (dim * mlp_ratio); the official ``SwiGLUFFNFused`` (used for
    both "swiglu" and "swiglufused") shrinks it with :func:`swiglu_hidden`, and so do we.
    """

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True) -> None:
        super().__init__()
        hidden = swiglu_hidden(hidden_features)
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


FFN_LAYERS: dict[str, Callable[..., nn.Module]] = {"mlp": Mlp, "swiglu": SwiGLUFFN, "swiglufused": SwiGLUFFN}


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` (Touvron et al. 2021, CaiT), initialised to ``init_values``."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016): zero whole samples of a residual branch, rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)


def add_residual_subset(x: Tensor, branch: Callable[[Tensor], Tensor], drop_ratio: float) -> Tensor:
    """The official batch-subset stochastic depth: run ``branch`` on a random ``1 - drop_ratio`` share
    of the batch only and add it, scaled by B / subset, to those rows (saves the dropped compute)."""
    b = x.shape[0]
    keep = max(int(b * (1 - drop_ratio)), 1)
    idx = torch.randperm(b, device=x.device)[:keep]
    residual = branch(x[idx])
    return torch.index_add(x, 0, idx, residual.to(x.dtype), alpha=b / keep)


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))).

    ``batch_subset`` turns on the official trick for drop ratios above 0.1 in training (the branch
    runs on the kept samples only); otherwise per-sample DropPath is used.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop_path: float = 0.0,
        init_values: float | None = None,
        ffn_layer: str = "mlp",
        batch_subset: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FFN_LAYERS[ffn_layer](dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.drop_path2 = DropPath(drop_path)
        self.sample_drop_ratio = drop_path
        self.batch_subset = batch_subset

    def _attn_branch(self, x: Tensor) -> Tensor:
        return self.ls1(self.attn(self.norm1(x)))

    def _ffn_branch(self, x: Tensor) -> Tensor:
        return self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.sample_drop_ratio > 0:
            if self.batch_subset and self.sample_drop_ratio > 0.1:
                x = add_residual_subset(x, self._attn_branch, self.sample_drop_ratio)
                return add_residual_subset(x, self._ffn_branch, self.sample_drop_ratio)
            x = x + self.drop_path1(self._attn_branch(x))
            return x + self.drop_path2(self._ffn_branch(x))
        # no stochastic depth: LayerScale multiply and residual add in one pass (addcmul)
        x = _scaled_add(x, self.attn(self.norm1(x)), self.ls1)
        return _scaled_add(x, self.mlp(self.norm2(x)), self.ls2)


def _scaled_add(x: Tensor, branch: Tensor, ls: nn.Module) -> Tensor:
    """``x + ls(branch)``; one fused kernel when ``ls`` is a LayerScale (same dtype promotion)."""
    if isinstance(ls, LayerScale):
        return torch.addcmul(x, branch, ls.gamma)
    return x + ls(branch)
