"""Backbone checkpoints in three layouts, loaded strictly, converted both ways.

Layouts (``detect_layout`` tells them apart by content, never by file name: ``io_files.locate``
says whether a path holds safetensors, a torch file or an HF directory, and resolves a directory
holding one checkpoint, such as ``assets/bootstrap-backbone/``, to that file):

- ``dinoflow``: a safetensors file whose metadata holds ``format = "dinoflow.backbone"`` and
  ``arch`` = the JSON constructor arguments of :class:`DinoVisionTransformer` (so the file alone
  rebuilds the model, interpolation mode included); or a torch dict ``{"arch": {...},
  "state_dict": {...}}``, which is what we write when the destination ends in ``.pt``/``.pth``/``.bin``.
- ``official``: a bare state dict as released by facebookresearch/dinov2
  (``dinov2_vits14_pretrain.pth``, ``..._reg4_pretrain.pth``); the architecture is inferred from the
  tensor shapes, chunked blocks (``blocks.0.3.``) are flattened, and a ``{"teacher": ...}`` training
  checkpoint is unwrapped (``backbone.`` prefix stripped). Original models get the scale-factor
  position resize (offset 0.1), register models the exact-size antialiased one, as in the official hub.
  Written with ``torch.save``, or as a bare safetensors file when the destination ends in ``.safetensors``.
- ``hf``: a directory with ``config.json`` and ``model.safetensors`` (or a sharded index) of
  ``transformers.Dinov2Model`` / ``Dinov2WithRegistersModel``. We write the hub's tensor names
  (``attention.attention.query``, ``mlp.weights_in``) that transformers 4 and 5 both load, and read
  those and transformers 5's in-memory names (``attention.q_proj``, ``mlp.gate_proj``).
  ``Dinov2Model`` resizes position embeddings to the exact size WITHOUT antialiasing (unlike the
  official originals' offset 0.1): an HF directory without our ``dinoflow`` config entry loads in
  HF's mode, so outputs agree with transformers at every input size; our own export records our
  mode in ``config.json["dinoflow"]`` and gets it back.

Loading is strict: missing or unexpected tensors and shape mismatches raise ``CheckpointError``
naming them; so does a path that holds no backbone (one line: what was expected, what was found).
Writes go to a temporary name and are renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pretrain.models import ARCHS, arch_name
from pretrain.models.io_files import (
    TRAINING_CHECKPOINT,
    CheckpointError,
    load_torch,
    locate,
    read_safetensors,
    safetensors_header,
)
from pretrain.models.io_hf import from_hf, hf_config, read_hf_state, to_hf
from pretrain.models.layers import swiglu_hidden
from pretrain.models.vit import DinoVisionTransformer, interpolate_patch_pos

__all__ = ["CheckpointError", "convert", "describe", "detect_layout", "load_backbone", "read_checkpoint",
           "resize_pos_embed", "save_backbone"]  # fmt: skip

LAYOUTS = ("dinoflow", "official", "hf")
FORMAT = "dinoflow.backbone"
# heads by width for the standard sizes; the official layout does not record the head count
HEADS_BY_DIM = {spec["embed_dim"]: spec["num_heads"] for spec in ARCHS.values()}
# destinations with these suffixes get torch.save's format; any other name, the layout's default
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


# ---------------------------------------------------------------- reading and writing files


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _save_safetensors(state: dict[str, Tensor], path: Path, metadata: dict[str, str] | None) -> None:
    from safetensors.torch import save_file

    tmp = _atomic_target(path)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _not_a_backbone(path: Path, found: str) -> CheckpointError:
    return CheckpointError(f"{path}: expected a backbone checkpoint; found {found}")


def _unwrap_official(obj: Any, path: Path) -> dict[str, Tensor]:
    """A bare state dict from a file's content: ``{"teacher": {"backbone.x": ...}}`` and
    ``{"model"|"state_dict": ...}`` are unwrapped, ``backbone.``/``module.`` prefixes removed."""
    for key in ("teacher", "model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise _not_a_backbone(
            path, f"a torch file holding a {type(obj).__name__}, not a state dict of tensors"
        )
    if any(k.startswith("backbone.") for k in obj):
        obj = {k[len("backbone.") :]: v for k, v in obj.items() if k.startswith("backbone.")}
    return {k.removeprefix("module."): v for k, v in obj.items()}


def unchunk(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Flatten the official ``BlockChunk`` layout ``blocks.{chunk}.{i}.*`` to ``blocks.{i}.*``
    (a chunk holds Identity placeholders before its blocks, so ``i`` is already the global index)."""
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}


def _safetensors_layout(path: Path, keys: list[str], meta: dict[str, str]) -> str:
    if meta.get("format") == FORMAT:
        return "dinoflow"
    if "cls_token" in keys or any(k.startswith("blocks.") for k in keys):
        return "official"
    if any(k.startswith(("embeddings.", "encoder.layer.", "dinov2.")) for k in keys):
        raise _not_a_backbone(
            path,
            "the weights of a Hugging Face model without its config.json (pass the directory holding both)",
        )
    shown = ", ".join(repr(k) for k in sorted(keys)[:3]) or "none"
    raise _not_a_backbone(
        path, f"a safetensors file of {len(keys)} tensor(s) without cls_token or blocks.* ({shown})"
    )


def _torch_layout(path: Path, obj: Any) -> str:
    if isinstance(obj, dict) and "arch" in obj and "state_dict" in obj:
        return "dinoflow"
    state = _unwrap_official(obj, path)
    if "cls_token" in state and "pos_embed" in state:
        return "official"
    if any(k.startswith("teacher.backbone.") for k in state):
        raise _not_a_backbone(path, TRAINING_CHECKPOINT)
    shown = ", ".join(repr(k) for k in sorted(state)[:3]) or "none"
    raise _not_a_backbone(
        path, f"a torch state dict of {len(state)} tensor(s) without cls_token/pos_embed ({shown})"
    )


def detect_layout(path: str | Path) -> str:
    """``"dinoflow"``, ``"official"`` or ``"hf"`` for a checkpoint file or directory (by content)."""
    kind, file = locate(path)
    if kind == "hf":
        return "hf"
    if kind == "safetensors":
        return _safetensors_layout(file, *safetensors_header(file))
    return _torch_layout(file, load_torch(file))


# ---------------------------------------------------------------- architecture from shapes


def _mlp_ratio(dim: int, hidden: int, swiglu: bool) -> float:
    if not swiglu:
        return hidden / dim
    for ratio in (4.0, hidden * 1.5 / dim, (hidden * 1.5 + 8) / dim):
        if swiglu_hidden(int(dim * ratio)) == hidden:
            return ratio
    raise CheckpointError(f"cannot find an mlp_ratio giving a SwiGLU width of {hidden} at dim {dim}")


def infer_arch(state: dict[str, Tensor]) -> dict[str, Any]:
    """Constructor arguments of :class:`DinoVisionTransformer` from an official-layout state dict."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        if key not in state:
            raise CheckpointError(f"cannot infer the architecture: tensor {key!r} missing")
    dim = state["cls_token"].shape[-1]
    proj = state["patch_embed.proj.weight"]
    patch = proj.shape[-1]
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    swiglu = "blocks.0.mlp.w12.weight" in state
    hidden = (
        state["blocks.0.mlp.w12.weight"].shape[0] // 2
        if swiglu
        else state["blocks.0.mlp.fc1.weight"].shape[0]
    )
    regs = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    return dict(
        img_size=grid * patch, patch_size=patch, in_chans=proj.shape[1], embed_dim=dim, depth=depth,
        num_heads=HEADS_BY_DIM.get(dim), mlp_ratio=_mlp_ratio(dim, hidden, swiglu),
        qkv_bias="blocks.0.attn.qkv.bias" in state, proj_bias="blocks.0.attn.proj.bias" in state,
        ffn_bias=("blocks.0.mlp.w12.bias" if swiglu else "blocks.0.mlp.fc1.bias") in state,
        layerscale_init=1e-5 if "blocks.0.ls1.gamma" in state else None,
        ffn_layer="swiglufused" if swiglu else "mlp", num_register_tokens=regs,
        # the official hub: originals resize by scale factor (grid + 0.1) / M, register models exactly
        interpolate_antialias=bool(regs), interpolate_offset=0.0 if regs else 0.1,
    )  # fmt: skip


def load_state_strict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """``model.load_state_dict(state)`` that names every missing/unexpected key and mismatched shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
           for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    problems = []
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if bad:
        problems.append(f"shape mismatches: {bad}")
    if problems:
        raise CheckpointError("checkpoint does not match the model; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- public API


def _read(path: str | Path, layout: str | None) -> tuple[dict[str, Any], dict[str, Tensor], str, Path]:
    """:func:`read_checkpoint` plus the file (or HF directory) that was read."""
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    kind, file = locate(path)
    if layout is not None and (layout == "hf") != (kind == "hf"):
        held = "a Hugging Face directory" if kind == "hf" else f"a {kind} file"
        raise CheckpointError(f"{path}: layout {layout!r} was asked for; found {held} (omit it to detect)")
    if kind == "hf":
        config, hf_state = read_hf_state(file)
        try:
            arch, state = from_hf(config, hf_state)
        except CheckpointError:
            raise
        except ValueError as exc:  # from_hf knows the config, not where it came from
            raise CheckpointError(f"{file}: {exc}") from None
        return arch, state, "hf", file
    if kind == "safetensors":
        keys, meta = safetensors_header(file)
        layout = layout or _safetensors_layout(file, keys, meta)
        obj: Any = read_safetensors(file)[0]
        if layout == "dinoflow":
            if meta.get("format") != FORMAT or "arch" not in meta:
                raise CheckpointError(f"{file}: no dinoflow metadata (format/arch); try layout 'official'")
            return json.loads(meta["arch"]), obj, layout, file
    else:
        obj = load_torch(file)
        layout = layout or _torch_layout(file, obj)
    if layout == "dinoflow":
        if not (isinstance(obj, dict) and "arch" in obj and "state_dict" in obj):
            raise CheckpointError(f"{file}: not a dinoflow dict with 'arch' and 'state_dict'")
        return dict(obj["arch"]), dict(obj["state_dict"]), layout, file
    state = unchunk(_unwrap_official(obj, file))
    try:
        return infer_arch(state), state, layout, file
    except CheckpointError as exc:
        raise CheckpointError(f"{file}: {exc}") from None


def read_checkpoint(
    path: str | Path, layout: str | None = None
) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    """``(arch kwargs, official-layout state dict, layout)`` of a checkpoint, without building a model.

    ``path``: a checkpoint file, an HF directory, or a directory holding one checkpoint file."""
    arch, state, layout, _ = _read(path, layout)
    return arch, state, layout


def load_backbone(path: str | Path, layout: str | None = None, **overrides: Any) -> DinoVisionTransformer:
    """The backbone stored at ``path`` (layout detected when None), loaded strictly, in eval mode.

    ``overrides`` replace inferred constructor arguments, e.g. ``interpolate_offset=0.0,
    interpolate_antialias=True`` for one of our models saved in the official layout (which has no room
    for the interpolation mode). Position embeddings are never resized silently: use
    :func:`resize_pos_embed` on the state dict for another resolution.
    """
    arch, state, _ = read_checkpoint(path, layout)
    arch = {**arch, **overrides}
    if arch["num_heads"] is None:
        raise CheckpointError(
            f"{path}: embed_dim {arch['embed_dim']} is not a standard width and the official layout does "
            f"not record the number of heads; pass num_heads=... (standard: {HEADS_BY_DIM})"
        )
    model = DinoVisionTransformer(**arch)
    load_state_strict(model, state)
    return model.eval()


def _arch_of(model: nn.Module) -> dict[str, Any]:
    arch = getattr(model, "arch_kwargs", None)
    if arch is None:
        raise TypeError(f"{type(model).__name__} is not a DinoVisionTransformer (no arch_kwargs)")
    return dict(arch)


def _check_destination(path: Path, layout: str) -> None:
    """A destination that cannot hold ``layout`` is a one-line error before anything is written."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if layout == "hf":
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path}: layout 'hf' writes a directory; found an existing file")
        if path.suffix in (".safetensors", *TORCH_SUFFIXES):
            raise CheckpointError(
                f"{path}: layout 'hf' writes a directory (config.json + model.safetensors); "
                f"name it without the {path.suffix} suffix"
            )
    elif path.is_dir():
        raise CheckpointError(
            f"{path}: layout {layout!r} writes one file; found a directory (name a file, e.g. "
            f"{path / 'backbone.safetensors'})"
        )


def _torch_save(obj: Any, path: Path) -> None:
    tmp = _atomic_target(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_backbone(model: nn.Module, path: str | Path, layout: str = "dinoflow") -> Path:
    """Write ``model`` (a :class:`DinoVisionTransformer`) in ``layout``; returns ``path``.

    dinoflow: a safetensors file with arch metadata (a torch ``{"arch", "state_dict"}`` dict when
    ``path`` ends in .pt/.pth/.bin/.ckpt); official: a bare ``torch.save`` state dict (bare
    safetensors when ``path`` ends in .safetensors); hf: a directory (``config.json`` +
    ``model.safetensors``), replaced as a whole. So the content always matches a suffix that names a
    format, and every reader here detects the format by content anyway.
    """
    path = Path(path)
    _check_destination(path, layout)
    arch, state = _arch_of(model), {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    as_torch = path.suffix in TORCH_SUFFIXES
    if layout == "dinoflow" and as_torch:
        _torch_save({"arch": arch, "state_dict": state}, path)
    elif layout == "dinoflow":
        _save_safetensors(state, path, {"format": FORMAT, "arch": json.dumps(arch)})
    elif layout == "official" and path.suffix == ".safetensors":
        _save_safetensors(state, path, {"format": "pt"})
    elif layout == "official":
        _torch_save(state, path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        (tmp / "config.json").write_text(json.dumps(hf_config(arch), indent=2) + "\n")
        _save_safetensors(to_hf(state, arch), tmp / "model.safetensors", {"format": "pt"})
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    return path


def convert(src: str | Path, dst: str | Path, to: str, src_layout: str | None = None) -> Path:
    """Rewrite the backbone at ``src`` in layout ``to`` at ``dst`` (strict load, then save)."""
    _check_destination(Path(dst), to)  # before the (possibly long) read
    return save_backbone(load_backbone(src, src_layout), dst, to)


def describe(path: str | Path, layout: str | None = None) -> dict[str, Any]:
    """Summary of a checkpoint: the path given and the file read, layout, arch name (or "custom"),
    params, width/depth/heads, registers, img_size, patch_size, ffn_layer, position-resize mode.
    Reads tensors, builds no model."""
    arch, state, layout, file = _read(path, layout)
    return {
        "path": str(path),
        "file": str(file),
        "layout": layout,
        "arch": arch_name(arch["embed_dim"], arch["depth"]) or "custom",
        "params": int(sum(v.numel() for v in state.values())),
        "embed_dim": arch["embed_dim"],
        "depth": arch["depth"],
        "num_heads": arch["num_heads"],
        "registers": arch.get("num_register_tokens", 0),
        "img_size": arch["img_size"],
        "patch_size": arch["patch_size"],
        "ffn_layer": arch.get("ffn_layer", "mlp"),
        "interpolate_offset": arch.get("interpolate_offset", 0.1),
        "interpolate_antialias": arch.get("interpolate_antialias", False),
    }


def resize_pos_embed(
    state_or_tensor: dict[str, Tensor] | Tensor,
    new_grid: int | tuple[int, int],
    antialias: bool = True,
    offset: float = 0.0,
) -> Any:
    """Position embeddings [1, 1 + M*M, D] resized to ``new_grid`` (bicubic; the class token's entry
    is kept). Given a state dict, returns a copy with every ``*pos_embed`` resized (loading a 224
    checkpoint for the 518 high-resolution phase). Upsampling is unaffected by ``antialias``."""
    grid: tuple[int, int] = (new_grid, new_grid) if isinstance(new_grid, int) else (new_grid[0], new_grid[1])
    if isinstance(state_or_tensor, dict):
        return {k: resize_pos_embed(v, grid, antialias, offset) if k.endswith("pos_embed") else v
                for k, v in state_or_tensor.items()}  # fmt: skip
    pos = state_or_tensor
    if pos.ndim != 3 or pos.shape[0] != 1:
        raise ValueError(f"expected pos_embed [1, 1 + M*M, D], got {tuple(pos.shape)}")
    with torch.no_grad():
        patch = interpolate_patch_pos(pos[:, 1:], grid, offset, antialias)  # type: ignore[arg-type]
        return torch.cat([pos[:, :1], patch], dim=1)
