"""The DINO projection head (Caron et al. 2021, section 3; DINOv2, Oquab et al. 2023, section 3).

An MLP (``nlayers`` linear layers, GELU between them) maps a backbone token [N, D] to a bottleneck
[N, bottleneck_dim], which is L2-normalised and projected onto K prototypes by a weight-normalised
linear layer without bias, ``W = g * v / ||v||`` row by row: logit k is ``g_k`` times the cosine
between the bottleneck and prototype direction ``v_k``.

The gain g starts at 1. As in the official DINOv2 head (facebookresearch/dinov2
``dinov2/layers/dino_head.py``: ``weight_g`` filled with 1 and left trainable) it is trained by
default, with the last layer's learning rate, weight decay and early freezing. ``norm_last_layer=True``
is DINO v1's option of that name (Caron et al. 2021): g stays fixed at 1, so the logits are cosines in
[-1, 1] before the temperature.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


def _build_mlp(
    nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int, use_bn: bool, bias: bool
) -> nn.Module:
    """in_dim -> hidden_dim -> ... -> bottleneck_dim, GELU (and optional BatchNorm) between layers."""
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    dims = [in_dim] + [hidden_dim] * (nlayers - 1)
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers.append(nn.Linear(d_in, d_out, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """MLP -> L2 normalisation -> weight-normalised prototypes. ``forward([N, in_dim]) -> [N, out_dim]``.

    ``last_layer`` is ``nn.Linear(bottleneck_dim, out_dim, bias=False)`` under
    ``torch.nn.utils.parametrizations.weight_norm``: parameters
    ``last_layer.parametrizations.weight.original0`` (g, [out_dim, 1], filled with 1; trainable
    unless ``norm_last_layer``, DINO v1's fixed unit norm) and ``...original1`` (v,
    [out_dim, bottleneck_dim]). Both names hold ``last_layer``: the optimizer's param groups give
    them the last layer's multipliers and the trainer drops their gradients while the last layer is
    frozen (``optim.freeze_last_layer_epochs``).

    Linear layers of the MLP are initialised trunc_normal(std 0.02) with zero bias; the prototypes
    keep PyTorch's default init, as in the reference (the init is applied before they exist).
    With in_dim 384, 65,536 prototypes, hidden 2048, bottleneck 256: 22,352,128 parameters.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        mlp_bias: bool = True,
        norm_last_layer: bool = False,
    ) -> None:
        super().__init__()
        if min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1:
            raise ValueError(
                f"DINOHead dims must be positive, got in={in_dim} out={out_dim} "
                f"hidden={hidden_dim} bottleneck={bottleneck_dim}"
            )
        self.mlp = _build_mlp(max(nlayers, 1), in_dim, bottleneck_dim, hidden_dim, use_bn, mlp_bias)
        self.mlp.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        self.norm_last_layer = norm_last_layer
        if norm_last_layer:  # DINO v1: prototypes keep unit norm, logits stay cosine similarities
            g.requires_grad_(False)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """[N, in_dim] -> logits [N, out_dim]: cosine similarities to the prototypes, times their gains g."""
        x = self.mlp(x)
        # fp16 cannot represent 1e-12: a zero bottleneck would divide by zero
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = nn.functional.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)
