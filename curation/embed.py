"""The embed stage: catalog images -> the ``embeddings`` table, for each model a later stage needs.

Two roles, each a :class:`pretrain.models.descriptors.Descriptor` (images [B, 3, S, S] -> L2-normalised
vectors [B, D]):

- ``semantic`` (clustering, leaks, retrieval): a backbone's class token. Default: the newest
  completed pretraining run of the catalog's ``runs`` table whose exported teacher backbone still
  exists (self-curation: the pipeline's own model embeds the next round), else the shipped
  ``assets/bootstrap-backbone``. Any backbone file ``load_backbone`` reads: dinoflow safetensors,
  an official DINOv2 ``.pth``, a Hugging Face directory.
- ``copy`` (near-duplicates): a copy-detection descriptor: a dinoflow SSCD descriptor or an SSCD
  TorchScript file. Default: the shipped ``assets/copy-descriptor``.

:func:`embed_items` embeds only the images without a vector for the descriptor's model id, reading
bytes through ``data_catalog.uris`` and opening them with ``data_catalog.image.open_image`` (the one
image path) in a thread pool, and commits every ``cfg.partition_size`` images (a kill loses at most
one chunk). An unreadable image is counted and listed, never a crash (it is tried again next run).
Where it runs (``curation.embed_workers``): this process (CPU, or one GPU with bf16 autocast), one
process per GPU when several are visible, or partitions on a Dask cluster (``dask_address``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from curation.embed_workers import forward, remember_source, resolve_device, run_embedding, use_bf16
from data_catalog.catalog import Catalog
from data_catalog.embeddings import embedded_table
from data_catalog.images import Status, read_images
from data_catalog.runs import read_runs
from pretrain.models.descriptors import Descriptor, load_descriptor
from pretrain.models.io_files import CheckpointError

if TYPE_CHECKING:
    from curation.config import EmbedConfig

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP_BACKBONE = REPO / "assets" / "bootstrap-backbone"
COPY_DESCRIPTOR = REPO / "assets" / "copy-descriptor"
ROLES = {"semantic": ("dinoflow-backbone",), "copy": ("dinoflow-sscd", "sscd-torchscript")}
_ROLE_WANTS = {
    "semantic": "a backbone checkpoint (dinoflow safetensors, official DINOv2 .pth or a Hugging Face directory)",
    "copy": "a copy-detection descriptor (a dinoflow SSCD descriptor or an SSCD TorchScript file)",
}
Progress = Callable[[int, int], None]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # a run registered without timestamps sorts oldest


def pinned_semantic_checkpoint(catalog: Catalog, dataset: str) -> str | None:
    """The semantic checkpoint recorded in the selection of the newest version of ``dataset`` (its
    ``config.selection.embedders.semantic.checkpoint``) while that file exists; None when no version
    records one (logged when the recorded file is gone)."""
    from data_catalog.datasets import get_dataset

    if not catalog.exists("datasets"):
        return None
    try:
        record = get_dataset(catalog, dataset)
    except KeyError:
        return None
    semantic = record.config.get("selection", {}).get("embedders", {}).get("semantic") or {}
    path = semantic.get("checkpoint")
    if path is None:
        return None
    if not Path(path).exists():
        log.warning("%s: its semantic backbone %s no longer exists; taking the newest", record.ref, path)
        return None
    return str(path)


def default_semantic_checkpoint(catalog: Catalog, pinned_to: str | None = None) -> str:
    """With ``pinned_to`` (a dataset name), the backbone that embedded its newest version when one
    is recorded (``pinned_semantic_checkpoint``); otherwise as follows."""
    if pinned_to is not None:
        pinned = pinned_semantic_checkpoint(catalog, pinned_to)
        if pinned is not None:
            return pinned
    return newest_semantic_checkpoint(catalog)


def newest_semantic_checkpoint(catalog: Catalog) -> str:
    """The newest completed pretraining run's exported teacher backbone (``runs.backbone_uri``) whose
    file exists, else the shipped bootstrap backbone; a run whose file is gone is skipped (logged)."""
    runs = read_runs(catalog)
    if runs.num_rows:
        done = runs.filter(
            pc.and_(pc.equal(runs.column("status"), "completed"), pc.is_valid(runs.column("backbone_uri")))
        )
        rows = sorted(
            done.select(["run_id", "backbone_uri", "finished_at", "started_at"]).to_pylist(),
            key=lambda r: (r["finished_at"] or r["started_at"] or _EPOCH, r["run_id"]),
            reverse=True,
        )
        for row in rows:
            if Path(row["backbone_uri"]).exists():
                return str(row["backbone_uri"])
            log.warning(
                "run %s: its backbone %s no longer exists; skipped", row["run_id"], row["backbone_uri"]
            )
    return str(BOOTSTRAP_BACKBONE)


def default_copy_checkpoint() -> str:
    """The shipped copy-detection descriptor ``REPO/assets/copy-descriptor`` (a one-line
    ``CheckpointError`` naming it when absent)."""
    if not COPY_DESCRIPTOR.exists():
        raise CheckpointError(
            f"{COPY_DESCRIPTOR}: the shipped copy descriptor is missing; pass --copy-checkpoint PATH "
            "(a dinoflow SSCD descriptor or an SSCD TorchScript file)"
        )
    return str(COPY_DESCRIPTOR)


def configured_checkpoint(catalog: Catalog, embed: EmbedConfig, role: str, dataset: str) -> str:
    """The checkpoint of ``role`` a run with ``embed`` uses: the configured path, else the default
    (semantic: per ``embed.semantic_default``, pinned to the pipeline's ``dataset`` name)."""
    if role == "semantic":
        if embed.semantic_checkpoint is not None:
            return embed.semantic_checkpoint
        return default_semantic_checkpoint(catalog, dataset if embed.semantic_default == "pinned" else None)
    return embed.copy_checkpoint or default_copy_checkpoint()


def load_embedder(path: str | Path, role: str, input_size: int | None = None) -> Descriptor:
    """The descriptor at ``path`` for ``role`` ("semantic" | "copy"), strictly: a file of the other
    role's kind (a backbone given as the copy descriptor, or the reverse) is a one-line
    ``CheckpointError`` naming the file, what it is and what the role needs."""
    if role not in ROLES:
        raise ValueError(f"embedder role {role!r} is not one of {sorted(ROLES)}")
    descriptor = load_descriptor(path, input_size=input_size)
    if descriptor.kind not in ROLES[role]:
        raise CheckpointError(
            f"{path}: a {descriptor.kind} ({descriptor.model_id}) cannot be the {role} embedder; "
            f"expected {_ROLE_WANTS[role]}"
        )
    remember_source(descriptor, path, input_size)
    return descriptor


def embed_arrays(
    descriptor: Descriptor,
    images: Sequence[Image.Image],
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
) -> np.ndarray:
    """[N, D] float32 unit vectors of images in memory (small sets: eval images, tests), in order."""
    dev = resolve_device(device)
    bf16 = use_bf16(dev, precision)
    descriptor.to(dev)
    out = [np.zeros((0, descriptor.dim), np.float32)]
    for start in range(0, len(images), batch_size):
        batch = torch.stack([descriptor.preprocess(img) for img in images[start : start + batch_size]])
        out.append(forward(descriptor, batch, dev, bf16))
    return np.concatenate(out)


def _unique_items(items: pa.Table) -> pa.Table:
    """(image_id, uri) rows, one per image id (the first uri in sorted order: deterministic)."""
    missing = [c for c in ("image_id", "uri") if c not in items.column_names]
    if missing:
        raise ValueError(f"embed_items: items need columns image_id and uri; missing {missing}")
    items = items.select(["image_id", "uri"]).cast(
        pa.schema([("image_id", pa.string()), ("uri", pa.string())])
    )
    if items.column("image_id").null_count:
        raise ValueError(f"embed_items: {items.column('image_id').null_count} item(s) have no image_id")
    items = items.sort_by([("image_id", "ascending"), ("uri", "ascending")])
    ids = items.column("image_id").combine_chunks()
    if len(ids) == 0:
        return items
    first = np.ones(len(ids), bool)
    first[1:] = np.asarray(pc.not_equal(ids[1:], ids[:-1]))
    return items.filter(pa.array(first))


def missing_items(catalog: Catalog, model_id: str, items: pa.Table) -> tuple[pa.Table, int]:
    """(items without a vector for ``model_id``, sorted by image id; how many unique items have one)."""
    unique = _unique_items(items)
    done = embedded_table(catalog, model_id).cast(pa.schema([("image_id", pa.string())]))
    todo = unique.join(done, keys="image_id", join_type="left anti").sort_by("image_id")
    return todo, unique.num_rows - todo.num_rows


def embed_items(
    catalog: Catalog,
    descriptor: Descriptor,
    items: pa.Table,
    cfg: Any,
    run_id: str,
    progress: Progress | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Embed the items (columns ``image_id``, ``uri``; repeated ids embedded once) that have no vector
    for ``descriptor.model_id`` and store them (``cfg``: an ``EmbedConfig``).

    Returns ``{"model_id", "kind", "dim", "input_size", "embedded", "already", "failed": [{"image_id",
    "uri", "error"}], "device", "bf16", "processes", "chunks"}`` (what the stage's report says);
    ``progress(done, total)`` counts images of this call's work (embedded or failed), from
    ``(0, total)``. ``dask_address`` (a scheduler address or ``"sync"``): one Dask task per
    ``cfg.partition_size`` images; None: this process, or one process per visible GPU.
    """
    todo, already = missing_items(catalog, descriptor.model_id, items)
    result = run_embedding(catalog, descriptor, todo, cfg, run_id, progress, dask_address)
    about = {"model_id": descriptor.model_id, "kind": descriptor.kind, "dim": descriptor.dim}
    return {**about, "input_size": descriptor.input_size, "already": already, **result}


def catalog_items(catalog: Catalog) -> pa.Table:
    """(image_id, uri) of every accepted or duplicate image of the images table (null ids dropped)."""
    keep = pc.field("status").isin([Status.ACCEPTED.value, Status.DUPLICATE.value])
    rows = read_images(catalog, columns=["uri", "image_id", "status"], where=keep)
    rows = rows.filter(pc.is_valid(rows.column("image_id")))
    return rows.select(["image_id", "uri"])


def embed_catalog(
    catalog: Catalog,
    descriptor: Descriptor,
    cfg: Any,
    run_id: str,
    progress: Progress | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """:func:`embed_items` over :func:`catalog_items` (each image id once)."""
    return embed_items(catalog, descriptor, catalog_items(catalog), cfg, run_id, progress, dask_address)
