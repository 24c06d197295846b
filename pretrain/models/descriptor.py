"""A copy-detection descriptor: ViT backbone, pooled tokens, linear projection, L2 norm (SSCD-style).

SSCD (Pizzi et al. 2022, arXiv:2202.10261, section 3.1) pools a ResNet's last feature map with GeM
(p = 3; Radenovic et al. 2018), projects it linearly to 512 dimensions and L2-normalises it. For a
ViT, :class:`CopyDescriptor` offers three poolings (``POOLINGS``):

- ``cls``: the class token, the feature DINOv2 trains for semantics;
- ``gem``: GeM of the patch tokens, the ViT counterpart of SSCD's GeM over the feature map;
- ``cls_gem`` (the default): both, concatenated, before the projection.

Why ``cls_gem``: copy detection must survive tight crops and overlays, where a pooled summary of
local evidence (the patches still visible) says more than one global token, while the class token
attends to the whole image and carries the layout; the projection learns how to weigh them and
costs 2 x width x dim parameters more. Measured (80 steps of sscd-demo at 32 px on 100 Imagenette
photos, recall@1 of 40 held-out photos' edits, before -> after training; 360 planted edits /
160 training-family edits): cls 0.675 -> 0.717 / 0.162 -> 0.200, gem 0.656 -> 0.772 /
0.138 -> 0.175, cls_gem 0.722 -> 0.769 / 0.138 -> 0.225. The class token alone learns least on
crops and flips; the concatenation is best or tied on both sets (a few points of noise: 40 photos).

GeM on signed tokens: SSCD's GeM runs on post-ReLU (non-negative) features and clamps at 1e-6. ViT
tokens leave a LayerNorm and are signed; clamping would zero half of them. We take the power mean
with the sign kept, ``m = mean(sign(x) |x|^p)``, ``gem = sign(m) |m|^(1/p)``: for p = 3 the real
cube root of the mean cube, equal to SSCD's GeM on non-negative inputs and to the mean at p = 1.

Files: :func:`save_descriptor` writes safetensors with metadata ``format = "dinoflow-copy-descriptor"``
and ``arch`` (JSON: the backbone's constructor arguments, ``dim``, ``pooling``, ``gem_p``,
``input_size``), so :func:`load_descriptor_file` rebuilds the model from the file alone; loading
is strict and a wrong file is a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretrain.models.io import _save_safetensors, load_state_strict
from pretrain.models.io_files import CheckpointError, read_safetensors, safetensors_header, sniff
from pretrain.models.vit import DinoVisionTransformer

FORMAT = "dinoflow-copy-descriptor"
POOLINGS = ("cls", "gem", "cls_gem")
BACKBONE_FORMAT = "dinoflow.backbone"


def gem(x: Tensor, p: float = 3.0, eps: float = 1e-6) -> Tensor:
    """Sign-preserving generalised mean over dim 1: tokens [B, N, D] -> [B, D] (fp32).

    ``sign(m) |m|^(1/p)`` with ``m = mean_n sign(x) |x|^p`` (module docstring); ``|m|`` is clamped at
    ``eps`` so the root's gradient stays finite.
    """
    x = x.float()
    m = (x.sign() * x.abs().pow(p)).mean(dim=1)
    return m.sign() * m.abs().clamp_min(eps).pow(1.0 / p)


class CopyDescriptor(nn.Module):
    """``forward(x [B, 3, H, W], ImageNet-normalised) -> [B, dim]``, rows L2-normalised (fp32).

    ``backbone``: a :class:`DinoVisionTransformer`; ``pooling``: one of :data:`POOLINGS`;
    ``input_size``: the square side images are resized to at inference (``pretrain.models.descriptors``
    and evaluation read it). The backbone's ``mask_token`` is frozen: copy detection never masks,
    and a parameter without a gradient would stop DDP.
    """

    def __init__(
        self,
        backbone: DinoVisionTransformer,
        dim: int = 512,
        pooling: str = "cls_gem",
        gem_p: float = 3.0,
        input_size: int = 224,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid poolings: {', '.join(POOLINGS)}")
        if input_size % backbone.patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch size {backbone.patch_size}")
        self.backbone = backbone
        self.dim, self.pooling, self.gem_p, self.input_size = int(dim), pooling, float(gem_p), int(input_size)
        width = backbone.embed_dim * (2 if pooling == "cls_gem" else 1)
        self.proj = nn.Linear(width, self.dim)
        nn.init.xavier_uniform_(self.proj.weight)  # as SSCD's projection
        nn.init.zeros_(self.proj.bias)
        backbone.mask_token.requires_grad_(False)

    def pooled(self, x: Tensor) -> Tensor:
        """The pooled backbone tokens [B, width] (before projection)."""
        out = self.backbone.forward_features(x)
        if self.pooling == "cls":
            return out["x_norm_clstoken"]
        g = gem(out["x_norm_patchtokens"], self.gem_p).to(out["x_norm_clstoken"].dtype)
        return g if self.pooling == "gem" else torch.cat([out["x_norm_clstoken"], g], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(self.pooled(x)).float(), dim=-1)

    def arch(self) -> dict[str, Any]:
        """Everything needed to rebuild this model (stored in the file's metadata)."""
        return {
            "backbone": dict(self.backbone.arch_kwargs),
            "dim": self.dim,
            "pooling": self.pooling,
            "gem_p": self.gem_p,
            "input_size": self.input_size,
        }


def save_descriptor(model: CopyDescriptor, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as safetensors (temp name, then rename); ``dtype`` (e.g. ``torch.float16``)
    casts the floating-point tensors. Returns ``path``."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: a descriptor is one file; found a directory (name a file inside it)")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    _save_safetensors(state, path, {"format": FORMAT, "arch": json.dumps(model.arch())})
    return path


def _descriptor_file(path: Path) -> Path:
    """The safetensors file at ``path`` (a directory holding exactly one file is resolved to it)."""
    expected = f"expected a dinoflow copy descriptor (safetensors, format {FORMAT!r})"
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and sniff(p)[0] == "safetensors")
        if len(files) != 1:
            raise CheckpointError(
                f"{path}: {expected}; found a directory with {len(files)} safetensors files"
            )
        path = files[0]
    kind, what = sniff(path)
    if kind != "safetensors":
        raise CheckpointError(f"{path}: {expected}; found {what}")
    return path


def load_descriptor_file(path: str | Path) -> CopyDescriptor:
    """The :class:`CopyDescriptor` saved at ``path``, strictly loaded, fp32, in eval mode.

    A file that is not one (another safetensors file, a backbone, text, a damaged or mismatched
    file) is a one-line :class:`CheckpointError` saying what was expected and what was found."""
    file = _descriptor_file(Path(path))
    expected = f"expected a dinoflow copy descriptor (format {FORMAT!r})"
    _, meta = safetensors_header(file)
    fmt = meta.get("format")
    if fmt != FORMAT:
        found = (
            "a dinoflow backbone (pretrain.models.io.load_backbone reads it)"
            if fmt == BACKBONE_FORMAT
            else f"a safetensors file with format {fmt!r}"
        )
        raise CheckpointError(f"{file}: {expected}; found {found}")
    try:
        arch = json.loads(meta["arch"])
        backbone = DinoVisionTransformer(**arch["backbone"])
        model = CopyDescriptor(backbone, arch["dim"], arch["pooling"], arch["gem_p"], arch["input_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: its 'arch' metadata does not build a descriptor ({exc})") from None
    state, _ = read_safetensors(file)
    try:
        load_state_strict(model, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{file}: {exc}") from None
    return model.float().eval()
