"""What is evaluated: a checkpoint (by content), and the baselines measured beside it.

A checkpoint is loaded strictly by ``pretrain.models.io.load_backbone`` (official DINOv2 ``.pth``,
our safetensors, Hugging Face directories, a folder holding one of them): a file that does not match
its model is a ``CheckpointError`` naming the tensors, never a silently random network. Its identity
is the sha256 of its bytes (every file of an HF directory), which keys the feature cache and the
``evaluations`` table.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_catalog.catalog import Catalog
from data_catalog.runs import get_run
from pretrain.models import arch_name
from pretrain.models.io import load_backbone
from pretrain.models.io_files import CheckpointError, locate
from pretrain.models.vit import DinoVisionTransformer

SUBJECTS = ("checkpoint", "start_checkpoint", "random_init", "raw_pixels")


def content_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint's bytes (an HF directory: of its files' names and bytes, sorted)."""
    kind, resolved = locate(path)
    files = sorted(p for p in resolved.iterdir() if p.is_file()) if kind == "hf" else [resolved]
    h = hashlib.sha256()
    for file in files:
        if kind == "hf":
            h.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class Subject:
    """One thing evaluated: ``name`` (one of SUBJECTS), a model (None for pixels), its cache key."""

    name: str
    key: str  # feature cache key: content hash, or what defines a baseline
    model: torch.nn.Module | None
    info: dict[str, Any]


def model_id(model: DinoVisionTransformer, sha: str) -> str:
    """``vit_small-p14@<12 hex of sha256>``: architecture and weights."""
    arch = model.arch_kwargs
    return f"{arch_name(arch['embed_dim'], arch['depth']) or 'custom'}-p{arch['patch_size']}@{sha[:12]}"


def checkpoint_subject(path: str | Path, name: str = "checkpoint") -> Subject:
    """The backbone at ``path``, loaded strictly (``CheckpointError`` naming what did not match)."""
    sha = content_sha256(path)
    try:
        model = load_backbone(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from None
    info = {"path": str(path), "sha256": sha, "model_id": model_id(model, sha), "arch": model.arch_kwargs}
    return Subject(name, f"sha256:{sha}", model, info)


def random_init_subject(like: DinoVisionTransformer, seed: int = 0) -> Subject:
    """The same architecture, freshly initialised from ``seed`` (no trained weight)."""
    arch = dict(like.arch_kwargs)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = DinoVisionTransformer(**arch).eval()
    finally:
        torch.random.set_rng_state(state)
    key = "random-init:" + json.dumps(
        {"arch": arch, "seed": seed, "torch": torch.__version__}, sort_keys=True
    )
    return Subject("random_init", key, model, {"arch": arch, "seed": seed})


def pixels_subject(size: int) -> Subject:
    return Subject("raw_pixels", f"raw-pixels:{size}", None, {"size": size})


def resolve_checkpoint(spec: str, catalog: str | None) -> tuple[str, str | None]:
    """``(path, run_id)``: an existing path as is; otherwise a run id of the catalog's ``runs``
    table, whose exported teacher backbone (or run directory) is evaluated."""
    if os.path.exists(spec):
        return spec, None
    if catalog is None:
        raise CheckpointError(f"{spec}: no such file or directory (with --catalog, a run id names a run)")
    try:
        run = get_run(Catalog(catalog), spec)
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {spec!r} is neither a path nor a run: {exc.args[0]}") from None
    path = run.get("backbone_uri") or run.get("output_dir")
    if not path:
        raise CheckpointError(f"run {spec!r} has no exported backbone yet (status {run.get('status')})")
    return str(path), spec
