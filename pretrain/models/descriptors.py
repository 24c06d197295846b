"""Copy-detection descriptors by path, with a model id naming architecture and weights.

:func:`load_descriptor` tells three kinds of file apart by content (never by name) and returns a
:class:`Descriptor`, whose ``__call__`` maps a batch of images [B, 3, S, S] (RGB, ImageNet-normalised,
resized to the square ``input_size`` S) to L2-normalised descriptors [B, D] (fp32):

- ``dinoflow-sscd``: a copy descriptor trained here (``pretrain.models.descriptor``: safetensors with
  metadata ``format = "dinoflow-copy-descriptor"``), read by ``load_descriptor_file``; S = the
  ``input_size`` it was trained at;
- ``sscd-torchscript``: a TorchScript file, such as the public SSCD models (Pizzi et al. 2022,
  arXiv:2202.10261; ``sscd_disc_mixup.torchscript.pt``, ``sscd_disc_large.torchscript.pt`` (1024-d),
  ``sscd_imagenet_mixup.torchscript.pt`` and their siblings, from facebookresearch/sscd-copy-detection).
  Their README's preprocessing: RGB, ``ToTensor`` then ``Normalize(mean=[0.485, 0.456, 0.406],
  std=[0.229, 0.224, 0.225])``, after either ``Resize(288)`` (short side 288, aspect kept) or
  ``Resize([320, 320])`` (a square, aspect not kept; "copy detection using square tensors benefits
  from directly resizing to the target tensor size"). We use the square form, S = 320 by default, so
  images batch; the output [B, 512] (1024 for ``sscd_disc_large``) is L2-normalised by the model and
  again here. Loading runs the module once on a [2, 3, S, S] batch: an output other than [2, D] is an error;
- ``dinoflow-backbone``: any backbone ``pretrain.models.io.load_backbone`` accepts (dinoflow, official
  DINOv2 or Hugging Face layout; a folder holding one, such as ``assets/bootstrap-backbone/``), whose
  L2-normalised class token is the descriptor: a semantic baseline to compare against. S = the
  backbone's ``img_size`` by default.

Images are resized to S x S whatever their aspect (SSCD's square form) by :meth:`Descriptor.preprocess`.

**Model ids**: ``<kind>/<architecture>@<first 12 hex of the sha256 of the weights file>``, e.g.
``dinoflow-sscd/vit_pico-p8-d256@1a2b3c4d5e6f``, ``sscd-torchscript/sscd_disc_mixup@...`` (the file's
name without ``.torchscript.pt``), ``dinoflow-backbone/vit_pico-p8-d128@...``; an ``input_size`` other
than the default adds ``-s<S>`` (other pixels, other vectors). An HF directory hashes its config and
weight files. Vectors of different ids never mix (the embed stage keys embeddings by id).

Loading is strict and local: a missing file, a file of none of these kinds, a TorchScript module whose
output is not [B, D], or a mismatched checkpoint is a one-line :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from pretrain.models import arch_name
from pretrain.models.io import load_backbone
from pretrain.models.io_files import HF_WEIGHTS, CheckpointError, locate, safetensors_header

__all__ = ["Descriptor", "backbone_descriptor", "load_descriptor", "weights_digest"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHSCRIPT_SIZE = 320  # SSCD's square preprocessing
EXPECTED = "expected a copy descriptor (dinoflow descriptor safetensors or a TorchScript file) or a backbone checkpoint"
DESCRIPTOR_FORMAT = "dinoflow-copy-descriptor"
_SUFFIXES = (".torchscript.pt", ".torchscript.pth", ".pt", ".pth", ".jit")


@dataclass(eq=False)
class Descriptor:
    """A loaded descriptor: ``module`` maps [B, 3, S, S] to [B, D]; ``kind`` is one of the module
    docstring's; ``interpolation`` the PIL filter :meth:`preprocess` resizes with."""

    model_id: str
    kind: str
    input_size: int
    dim: int
    module: nn.Module
    interpolation: Image.Resampling = Image.Resampling.BICUBIC

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        """Descriptors [B, D] (fp32, rows of norm 1) of ImageNet-normalised images [B, 3, S, S]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W]; got {tuple(images.shape)}")
        param = next(iter(self.module.parameters()), None)
        out = self.module(images.to(param.device if param is not None else images.device, torch.float32))
        return F.normalize(out.float(), dim=1)

    def preprocess(self, img: Image.Image) -> Tensor:
        """[3, S, S] float32: ``img`` as RGB, resized to S x S (aspect not kept), ImageNet-normalised."""
        rgb = img.convert("RGB").resize((self.input_size, self.input_size), self.interpolation)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
        return (x - mean) / std

    def to(self, device: str | torch.device) -> Descriptor:
        self.module.to(device)
        return self


def weights_digest(path: str | Path) -> str:
    """sha256 (hex) of a weights file; of an HF directory, of its config.json and weight files in order."""
    path = Path(path)
    files = (
        [path / n for n in ("config.json", *HF_WEIGHTS) if (path / n).is_file()] if path.is_dir() else [path]
    )
    h = hashlib.sha256()
    for file in files:
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _vit_name(model: Any, dim: int) -> str:
    """``vit_pico-p8-d128`` (registry name of width and depth, patch size, descriptor dimension)."""
    arch = model.arch_kwargs
    name = arch_name(arch["embed_dim"], arch["depth"]) or f"vit_w{arch['embed_dim']}x{arch['depth']}"
    regs = f"-r{arch['num_register_tokens']}" if arch.get("num_register_tokens") else ""
    return f"{name}-p{arch['patch_size']}{regs}-d{dim}"


def _size_tag(input_size: int, default: int) -> str:
    return "" if input_size == default else f"-s{input_size}"


def _check_size(input_size: int, patch: int | None, where: str) -> int:
    if input_size < 1 or (patch and input_size % patch):
        raise ValueError(
            f"{where}: input_size {input_size} must be a positive multiple of the patch size {patch}"
        )
    return int(input_size)


def backbone_descriptor(model: nn.Module, weights: str, input_size: int | None = None) -> Descriptor:
    """The class-token descriptor of a :class:`DinoVisionTransformer` in memory; ``weights`` names its
    weights in the id (a file digest, or e.g. ``"random-seed0"`` for an untrained model)."""
    arch: dict[str, Any] = getattr(model, "arch_kwargs", {})
    if not arch:
        raise TypeError(f"{type(model).__name__} is not a DinoVisionTransformer (no arch_kwargs)")
    default = int(arch["img_size"])
    size = _check_size(input_size or default, arch["patch_size"], "backbone")
    model_id = f"dinoflow-backbone/{_vit_name(model, arch['embed_dim'])}{_size_tag(size, default)}@{weights}"
    return Descriptor(model_id, "dinoflow-backbone", size, int(arch["embed_dim"]), model.eval())


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip holding ``<root>/constants.pkl`` and ``<root>/code/`` (torch.save's
    zip has neither)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _torchscript_name(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _load_torchscript(path: Path, input_size: int | None) -> Descriptor:
    size = _check_size(input_size or TORCHSCRIPT_SIZE, None, str(path))
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated; the public SSCD files are TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a damaged archive
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: a TorchScript archive torch.jit.load cannot read ({first})") from None
    module.eval()
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    shape = f"[2, 3, {size}, {size}]"
    try:
        with torch.inference_mode():
            out = module(probe)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module is one line
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path}: the TorchScript module fails on a {shape} ImageNet-normalised batch "
            f"({type(exc).__name__}: {first})"
        ) from None
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != 2 or not out.is_floating_point():
        found = (
            f"a tensor of shape {list(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
        )
        raise CheckpointError(
            f"{path}: the TorchScript module returns {found} for a {shape} batch; expected [2, D]"
        )
    dim = int(out.shape[1])
    digest = weights_digest(path)[:12]
    model_id = f"sscd-torchscript/{_torchscript_name(path)}{_size_tag(size, TORCHSCRIPT_SIZE)}@{digest}"
    return Descriptor(model_id, "sscd-torchscript", size, dim, module, Image.Resampling.BILINEAR)


def _load_copy_descriptor(path: Path, input_size: int | None) -> Descriptor:
    from pretrain.models.descriptor import load_descriptor_file

    model = load_descriptor_file(path)
    if input_size not in (None, model.input_size):
        raise ValueError(
            f"{path}: a trained descriptor runs at its input_size {model.input_size}, not {input_size}"
        )
    model_id = f"dinoflow-sscd/{_vit_name(model.backbone, model.dim)}@{weights_digest(path)[:12]}"
    return Descriptor(model_id, "dinoflow-sscd", int(model.input_size), int(model.dim), model)


def load_descriptor(path: str | Path, input_size: int | None = None) -> Descriptor:
    """The descriptor stored at ``path`` (kind told by content; see the module docstring), on CPU, in
    eval mode. ``input_size`` overrides the square side S for TorchScript and backbone files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file() and _is_torchscript(path):
        return _load_torchscript(path, input_size)
    try:
        kind, file = locate(path)
    except CheckpointError as exc:
        found = str(exc).split("; found ", 1)[-1] if "; found " in str(exc) else str(exc)
        raise CheckpointError(f"{path}: {EXPECTED}; found {found}") from None
    if kind == "safetensors" and safetensors_header(file)[1].get("format") == DESCRIPTOR_FORMAT:
        return _load_copy_descriptor(file, input_size)
    if kind == "torch" and _is_torchscript(file):
        return _load_torchscript(file, input_size)
    try:
        model = load_backbone(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} ({EXPECTED[len('expected ') :]})") from None
    return backbone_descriptor(model, weights_digest(file)[:12], input_size)
