"""The DINOv2 Vision Transformer backbone (Oquab et al. 2023, arXiv:2304.07193; registers: Darcet et al.
2023, arXiv:2309.16588).

Same constructor arguments, defaults, outputs and state-dict names as the official
``dinov2.models.vision_transformer.DinoVisionTransformer`` (without block chunks: the loader in
:mod:`pretrain.models.io` strips the chunk level of chunked checkpoints).

Token layout: ``[cls, register_1..R, patch_1..N]``; position embeddings cover the class token and the
``img_size / patch_size`` square grid and are resized bicubically to the input's grid at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.layers import FFN_LAYERS, Block, PatchEmbed


def interpolate_patch_pos(
    pos: Tensor, grid: tuple[int, int], offset: float = 0.0, antialias: bool = True
) -> Tensor:
    """Resize patch position embeddings [1, M*M, D] (a square M x M grid) to ``grid`` (h, w) -> [1, h*w, D].

    Bicubic, computed in float32. ``offset > 0`` reproduces the original DINOv2 models: the resize is
    given as a scale factor ``(grid + offset) / M`` (a kludge from DINO, kept for compatibility);
    ``offset == 0`` gives the exact output size (the register models, with ``antialias=True``).
    """
    n, dim = pos.shape[1], pos.shape[2]
    m = int(round(math.sqrt(n)))
    if m * m != n:
        raise ValueError(f"position embeddings hold {n} patches, not a square grid")
    if (m, m) == tuple(grid):
        return pos
    img = pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        scale = ((grid[0] + offset) / m, (grid[1] + offset) / m)
        out = F.interpolate(img, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        out = F.interpolate(img, size=tuple(grid), mode="bicubic", antialias=antialias)
    if tuple(out.shape[-2:]) != tuple(grid):
        raise RuntimeError(f"interpolated grid {tuple(out.shape[-2:])} != requested {tuple(grid)}")
    return out.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos.dtype)


class DinoVisionTransformer(nn.Module):
    """ViT backbone of DINOv2. ``forward(x)`` returns the normalised class token [B, D] (eval features).

    ``layerscale_init`` (alias ``init_values``, the official name) None or 0 disables LayerScale.
    ``drop_path_uniform`` gives every block the same drop rate instead of a 0..rate linear ramp.
    ``batch_subset_drop_path`` uses the official batch-subset trick for drop rates above 0.1.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 14,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        ffn_bias: bool = True,
        proj_bias: bool = True,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        layerscale_init: float | None = 1e-5,
        ffn_layer: str = "mlp",
        num_register_tokens: int = 0,
        interpolate_antialias: bool = False,
        interpolate_offset: float = 0.1,
        batch_subset_drop_path: bool = True,
        **official: Any,
    ) -> None:
        super().__init__()
        layerscale_init = official.pop("init_values", layerscale_init)
        official.pop("block_chunks", None)  # we never chunk; the loader strips chunk levels
        if official:
            raise TypeError(f"unexpected arguments: {sorted(official)}")
        if ffn_layer not in FFN_LAYERS:
            raise ValueError(f"unknown ffn_layer {ffn_layer!r}; valid: {', '.join(FFN_LAYERS)}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.n_blocks = depth
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = interpolate_offset
        self.arch_kwargs: dict[str, Any] = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, ffn_bias=ffn_bias,
            proj_bias=proj_bias, layerscale_init=layerscale_init or None, ffn_layer=ffn_layer,
            num_register_tokens=num_register_tokens, interpolate_antialias=interpolate_antialias,
            interpolate_offset=interpolate_offset,
        )  # fmt: skip

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        # a plain-Python ramp (torch.linspace would fail under a meta-device context)
        ramp = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        rates = [drop_path_rate] * depth if drop_path_uniform else ramp
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                proj_bias,
                ffn_bias,
                rates[i],
                layerscale_init or None,
                ffn_layer,
                batch_subset_drop_path,
            )  # fmt: skip
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Official init: pos_embed and Linear weights trunc-normal(0.02), cls/register tokens
        normal(1e-6), Linear biases and mask_token zero; the patch conv keeps PyTorch's default."""
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def interpolate_pos_encoding(self, grid: tuple[int, int]) -> Tensor:
        """Position embeddings [1, 1 + h*w, D] for a patch grid (h, w), in this model's resize mode."""
        patch = interpolate_patch_pos(
            self.pos_embed[:, 1:], grid, self.interpolate_offset, self.interpolate_antialias
        )
        return torch.cat([self.pos_embed[:, :1], patch], dim=1)

    def prepare_tokens_with_masks(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Image [B, C, H, W] (+ bool masks [B, N]) -> tokens [B, 1 + R + N, D].

        Masked patch embeddings become ``mask_token`` before the position embedding is added.
        """
        if x.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.patch_embed(x)  # raises on sizes that are not multiples of the patch
        if masks is not None:
            if masks.shape != tokens.shape[:2]:
                raise ValueError(
                    f"masks shape {tuple(masks.shape)} != patch tokens {tuple(tokens.shape[:2])}"
                )
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        # no casts below, as official: under autocast the bf16 patch tokens meet fp32 parameters here
        # and the residual stream is promoted to fp32
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_encoding((h, w)).to(tokens.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
        return tokens

    def _split(self, x_norm: Tensor, x: Tensor, masks: Tensor | None) -> dict[str, Any]:
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Any]:
        """Tokens of images ``x`` [B, 3, H, W]: ``x_norm_clstoken`` [B, D], ``x_norm_regtokens`` [B, R, D],
        ``x_norm_patchtokens`` [B, N, D], ``x_prenorm`` [B, 1 + R + N, D] and ``masks``."""
        if isinstance(x, list):
            return self.forward_features_list(x, masks)  # type: ignore[arg-type,return-value]
        t = self.prepare_tokens_with_masks(x, masks)
        for blk in self.blocks:
            t = blk(t)
        return self._split(self.norm(t), t, masks)

    def forward_features_list(
        self, xs: list[Tensor], masks_list: Sequence[Tensor | None]
    ) -> list[dict[str, Any]]:
        """:meth:`forward_features` of each batch in ``xs`` (crops of different sizes), block by block."""
        if len(xs) != len(masks_list):
            raise ValueError(f"{len(xs)} inputs but {len(masks_list)} masks")
        ts = [self.prepare_tokens_with_masks(x, m) for x, m in zip(xs, masks_list, strict=True)]
        for blk in self.blocks:
            ts = [blk(t) for t in ts]
        return [self._split(self.norm(t), t, m) for t, m in zip(ts, masks_list, strict=True)]

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Any, ...]:
        """Outputs of the last ``n`` blocks (or of the block indices in ``n``), as the official model:
        patch tokens [B, N, D] (``reshape``: [B, D, h, w]), with class tokens [B, D] if asked."""
        t = self.prepare_tokens_with_masks(x)
        take = set(range(len(self.blocks) - n, len(self.blocks)) if isinstance(n, int) else n)
        outputs = []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if i in take:
                outputs.append(t)
        if len(outputs) != len(take):
            raise ValueError(f"only {len(outputs)} of the {len(take)} requested blocks exist")
        if norm:
            outputs = [self.norm(o) for o in outputs]
        cls_tokens = [o[:, 0] for o in outputs]
        patches = [o[:, 1 + self.num_register_tokens :] for o in outputs]
        if reshape:
            b, _, hh, ww = x.shape
            h, w = hh // self.patch_size, ww // self.patch_size
            patches = [p.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, cls_tokens, strict=True))
        return tuple(patches)

    def forward(self, x: Tensor, masks: Tensor | None = None, is_training: bool = False) -> Any:
        """Class token [B, D] (``is_training=True``: the :meth:`forward_features` dict, as official)."""
        out = self.forward_features(x, masks)
        return out if is_training else self.head(out["x_norm_clstoken"])
