"""Frozen features of a split: decoded by the one image opener, transformed, embedded, cached.

Extractors turn a batch of normalised images [B, 3, S, S] into ``(cls [B, D], patch_mean [B, D] | None)``:

- :class:`BackboneExtractor`: a DINOv2 ViT's normalised class token and the mean of its normalised
  patch tokens (``x_norm_clstoken``, ``x_norm_patchtokens``), the two features of the DINOv2 linear
  evaluation (Oquab et al. 2023, section 7);
- :class:`PixelExtractor`: the normalised pixels, area-downsampled to ``size`` x ``size`` and flattened
  (3 * size^2 dims): the raw-pixels baseline.

A file that does not decode is skipped and reported (path and reason), never a crash. Features are
cached per (model key, split fingerprint, transform) in a safetensors file: a model key holds the
checkpoint's content hash, so a changed checkpoint (or a changed image) never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from data_catalog.image import open_image
from evaluation.config import IMAGENET_MEAN, IMAGENET_STD, TransformConfig
from evaluation.datasets import Split

CACHE_FORMAT = "dinoflow.eval-features.v1"


def build_transform(cfg: TransformConfig) -> Callable[[Any], Tensor]:
    """PIL RGB image -> normalised float tensor [3, S, S] (S = ``cfg.size``), per ``cfg``'s policy."""
    from torchvision.transforms import v2

    mode = v2.InterpolationMode.BICUBIC if cfg.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
    size: int | tuple[int, int] = cfg.resize if cfg.policy == "short_side" else (cfg.resize, cfg.resize)
    steps: list[Any] = [v2.ToImage(), v2.Resize(size, interpolation=mode, antialias=True)]
    if cfg.crop is not None:
        steps.append(v2.CenterCrop(cfg.crop))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]
    return v2.Compose(steps)


def denormalize(images: Tensor) -> Tensor:
    """Normalised images [B, 3, H, W] back to RGB in 0..1 (for pictures)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)


class SplitImages(torch.utils.data.Dataset):
    """``(image [3, S, S] | None, label, index, error)`` per file; the error is the reason a file
    did not decode (then the image is None)."""

    def __init__(self, files: list[tuple[str, int]], transform: Callable[[Any], Tensor]) -> None:
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int, int, str | None]:
        path, label = self.files[i]
        try:
            with open(path, "rb") as f:
                img = open_image(f.read())
            return self.transform(img), label, i, None
        except Exception as exc:  # any undecodable file is reported and skipped, never a crash
            return None, label, i, f"{type(exc).__name__}: {exc}"


def collate_ok(items: list[tuple[Tensor | None, int, int, str | None]]) -> dict[str, Any]:
    """Stack the decoded images; keep the failures (index, reason) aside."""
    ok = [it for it in items if it[0] is not None]
    return {
        "images": torch.stack([it[0] for it in ok]) if ok else None,  # type: ignore[misc]
        "labels": torch.tensor([it[1] for it in ok], dtype=torch.long),
        "index": torch.tensor([it[2] for it in ok], dtype=torch.long),
        "failed": [(it[2], it[3]) for it in items if it[0] is None],
    }


def loader(split: Split, transform: TransformConfig, batch_size: int, num_workers: int = 0) -> Any:
    dataset = SplitImages(split.files, build_transform(transform))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_ok
    )


@dataclass
class Features:
    """Features of the decodable files of a split: rows align with ``index`` (into ``split.files``)."""

    cls: Tensor  # [N, D] float32
    patch_mean: Tensor | None  # [N, D] float32, None for pixel features
    labels: Tensor  # [N] int64
    index: Tensor  # [N] int64
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def select(self, kind: str) -> Tensor:
        """``cls`` or ``cls+patch_mean`` (concatenated, [N, 2D]); pixels have only one kind."""
        if kind == "cls" or self.patch_mean is None:
            return self.cls
        if kind == "cls+patch_mean":
            return torch.cat([self.cls, self.patch_mean], dim=1)
        raise ValueError(f"unknown feature kind {kind!r}; valid: cls, cls+patch_mean")


class BackboneExtractor:
    """Class token and mean patch token of a DINOv2 ViT (``forward_features``), on ``device``; under
    bf16 autocast when ``bf16`` (weights stay fp32, as in DINOv2's evaluations; features come out fp32)."""

    def __init__(
        self, model: torch.nn.Module, device: str | torch.device = "cpu", bf16: bool = False
    ) -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.bf16 = bf16

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model.forward_features(images.to(self.device))  # type: ignore[operator]
        # clone: the class token is a view of the [B, 1 + patches, D] output (fp32 after the final
        # LayerNorm, so .float() and .cpu() return the view itself on CPU); kept for every batch, views
        # held 257x the memory (a full CIFAR-10 probe at 224 px reached 15 GB before this).
        cls = out["x_norm_clstoken"].float().cpu().clone()
        return cls, out["x_norm_patchtokens"].float().mean(1).cpu()


class PixelExtractor:
    """Normalised pixels, area-downsampled to ``size`` x ``size``, flattened: [B, 3 * size^2]."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        small = F.adaptive_avg_pool2d(images.float(), self.size)
        return small.flatten(1), None


def extract(
    split: Split,
    extractor: Callable[[Tensor], tuple[Tensor, Tensor | None]],
    transform: TransformConfig,
    batch_size: int = 64,
    num_workers: int = 0,
) -> Features:
    """Features of every decodable file of ``split``; the others listed in ``skipped``."""
    cls, patch, labels, index, skipped = [], [], [], [], []
    for batch in loader(split, transform, batch_size, num_workers):
        skipped += [(split.files[i][0], reason) for i, reason in batch["failed"]]
        if batch["images"] is None:
            continue
        c, p = extractor(batch["images"])
        cls.append(c)
        if p is not None:
            patch.append(p)
        labels.append(batch["labels"])
        index.append(batch["index"])
    if not cls:
        raise ValueError(f"no image of the split at {split.root} could be decoded ({len(skipped)} skipped)")
    return Features(
        torch.cat(cls), torch.cat(patch) if patch else None, torch.cat(labels), torch.cat(index), skipped
    )


def cache_key(model_key: str, split: Split, transform: TransformConfig) -> str:
    """sha256 of (model key, split fingerprint, transform): the cache file's name."""
    text = json.dumps({"model": model_key, "split": split.fingerprint, "transform": transform.key()})
    return hashlib.sha256(text.encode()).hexdigest()


def _save(features: Features, path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {"cls": features.cls, "labels": features.labels, "index": features.index}
    if features.patch_mean is not None:
        tensors["patch_mean"] = features.patch_mean
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    metadata = {**meta, "format": CACHE_FORMAT, "skipped": json.dumps(features.skipped)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _load(path: Path) -> Features | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT:
                return None
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except Exception:  # a torn or foreign file is a cache miss, recomputed and replaced
        return None
    skipped = [tuple(s) for s in json.loads(meta.get("skipped", "[]"))]
    return Features(t["cls"], t.get("patch_mean"), t["labels"], t["index"], skipped)  # type: ignore[arg-type]


def cached_features(
    cache_root: Path | None,
    model_key: str,
    split: Split,
    transform: TransformConfig,
    compute: Callable[[], Features],
) -> tuple[Features, bool]:
    """``(features, hit)``: read from ``cache_root/features/<key>.safetensors`` or computed and saved."""
    if cache_root is None:
        return compute(), False
    path = cache_root / "features" / f"{cache_key(model_key, split, transform)}.safetensors"
    if path.is_file():
        hit = _load(path)
        if hit is not None:
            return hit, True
    features = compute()
    _save(features, path, {"model": model_key, "split": split.fingerprint, "transform": transform.key()})
    return features, False
