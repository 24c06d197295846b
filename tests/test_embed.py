"""The embed stage: vectors equal the descriptor's own, incremental per model id, corrupt files
listed, strict roles, default checkpoints, devices and precision (CPU)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from curation import embed as E
from curation.config import EmbedConfig
from curation.embed_workers import plan_devices
from data_catalog.catalog import Catalog
from data_catalog.embeddings import read_embeddings
from data_catalog.image import open_image
from data_catalog.images import IMAGES_SCHEMA, upsert_images
from data_catalog.runs import register_run
from pretrain.models import build_backbone
from pretrain.models.descriptors import Descriptor
from pretrain.models.io import save_backbone
from pretrain.models.io_files import CheckpointError

CFG = EmbedConfig(batch_size=3, partition_size=4, decode_workers=2, device="cpu")


def tiny_backbone(path: Path, seed: int = 0) -> Path:
    """A random-init vit_pico at 32 px (patch 8) saved as dinoflow safetensors. LayerScale starts at 1,
    not DINOv2's 1e-5, which makes every image's class token the same to 5 decimals at init."""
    torch.manual_seed(seed)
    model = build_backbone("vit_pico", img_size=32, patch_size=8, layerscale_init=1.0).eval()
    return save_backbone(model, path)


def make_pngs(folder: Path, n: int, seed: int = 0, size: tuple[int, int] = (40, 30)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"img{seed}_{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def items_of(paths: list[Path]) -> pa.Table:
    ids = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    return pa.table({"image_id": ids, "uri": [str(p) for p in paths]})


def direct(descriptor: Descriptor, paths: list[Path]) -> np.ndarray:
    """The descriptor called on the one opener's images (JPEGs draft-decoded to >= S, as the stage)."""
    side = descriptor.input_size
    x = torch.stack([descriptor.preprocess(open_image(p.read_bytes(), draft=(side, side))) for p in paths])
    return descriptor(x).numpy()


@pytest.fixture
def semantic(tmp_path: Path) -> Descriptor:
    return E.load_embedder(tiny_backbone(tmp_path / "bb.safetensors"), "semantic")


def test_vectors_are_unit_and_equal_the_descriptor_on_the_same_images(
    tmp_path: Path, semantic: Descriptor, raw_photos: Path
) -> None:
    photos = sorted(raw_photos.glob("*"))[:5]  # JPEGs of a few hundred pixels a side
    paths = photos + make_pngs(tmp_path / "png", 3)
    catalog = Catalog(str(tmp_path / "cat"))
    calls: list[tuple[int, int]] = []
    out = E.embed_items(catalog, semantic, items_of(paths), CFG, "run-1", lambda d, t: calls.append((d, t)))
    assert (out["embedded"], out["already"], out["failed"], out["model_id"]) == (8, 0, [], semantic.model_id)
    assert calls[0] == (0, 8) and calls[-1] == (8, 8) and len(calls) >= 4  # per batch
    ids, vectors = read_embeddings(catalog, semantic.model_id, items_of(paths).column("image_id").to_pylist())
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    ref = direct(semantic, paths)
    assert (ref @ ref.T).min() < 0.9  # distinct images, distinct vectors: the comparison can fail
    np.testing.assert_allclose(vectors, ref, atol=2e-3)  # float16 storage
    np.testing.assert_allclose(
        E.embed_arrays(semantic, [open_image(p.read_bytes()) for p in paths[5:]]), ref[5:], atol=1e-5
    )


def test_a_second_call_embeds_only_new_images_and_model_ids_never_mix(
    tmp_path: Path, semantic: Descriptor
) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    old, new = make_pngs(tmp_path / "a", 5, seed=1), make_pngs(tmp_path / "b", 3, seed=2)
    assert E.embed_items(catalog, semantic, items_of(old), CFG, "run-1")["embedded"] == 5
    _, before = read_embeddings(catalog, semantic.model_id)
    calls: list[tuple[int, int]] = []
    again = E.embed_items(
        catalog, semantic, items_of(old + new), CFG, "run-2", lambda d, t: calls.append((d, t))
    )
    assert (again["embedded"], again["already"]) == (3, 5) and calls[0] == (0, 3) and calls[-1] == (3, 3)
    assert E.embed_items(catalog, semantic, items_of(old + new), CFG, "run-3")["embedded"] == 0
    # other weights, same architecture: another model id; all 8 embedded for it, the first model's rows untouched
    other = E.load_embedder(tiny_backbone(tmp_path / "bb2.safetensors", seed=7), "semantic")
    assert other.model_id != semantic.model_id
    assert E.embed_items(catalog, other, items_of(old + new), CFG, "run-4")["embedded"] == 8
    old_ids = items_of(old).column("image_id").to_pylist()
    _, after = read_embeddings(catalog, semantic.model_id, old_ids)
    np.testing.assert_array_equal(np.sort(read_embeddings(catalog, semantic.model_id)[0]), np.sort(
        items_of(old + new).column("image_id").to_pylist()))  # fmt: skip
    np.testing.assert_array_equal(after, before[np.argsort(np.argsort(old_ids))])
    assert np.abs(read_embeddings(catalog, other.model_id, old_ids)[1] - after).max() > 0.05


def test_unreadable_images_are_counted_and_listed_not_a_crash(tmp_path: Path, semantic: Descriptor) -> None:
    good = make_pngs(tmp_path / "ok", 4)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)  # a JPEG header, then nothing
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    items = pa.concat_tables(
        [
            items_of(good + [broken, text]),
            pa.table({"image_id": ["f" * 64], "uri": [str(tmp_path / "gone.png")]}),  # deleted since ingest
        ]
    )
    catalog = Catalog(str(tmp_path / "cat"))
    out = E.embed_items(catalog, semantic, items, CFG, "run-1")
    assert out["embedded"] == 4 and len(out["failed"]) == 3
    errors = {Path(f["uri"]).name: f["error"] for f in out["failed"]}
    assert set(errors) == {"broken.jpg", "notes.png", "gone.png"}
    assert errors["gone.png"].startswith("FileNotFoundError") and all("\n" not in e for e in errors.values())
    # failures are tried again next time (they have no vector), the rest is not re-embedded
    again = E.embed_items(catalog, semantic, items, CFG, "run-2")
    assert (again["embedded"], again["already"], len(again["failed"])) == (0, 4, 3)


def test_tar_members_plain_and_gzipped_are_read_by_uri(tmp_path: Path, semantic: Descriptor) -> None:
    import tarfile

    paths = make_pngs(tmp_path / "png", 4, seed=3)
    uris = []
    for suffix, mode in ((".tar", "w"), (".tar.gz", "w:gz")):
        shard = tmp_path / f"shard{suffix}"
        with tarfile.open(shard, mode) as tar:  # type: ignore[call-overload]
            for p in paths[:2] if suffix == ".tar" else paths[2:]:
                tar.add(p, arcname=f"imgs/{p.name}")
        uris += [f"{shard}#imgs/{p.name}" for p in (paths[:2] if suffix == ".tar" else paths[2:])]
    items = items_of(paths).set_column(1, "uri", pa.array(uris))
    catalog = Catalog(str(tmp_path / "cat"))
    out = E.embed_items(catalog, semantic, items, CFG, "run-1")
    assert (out["embedded"], out["failed"]) == (4, [])
    _, vectors = read_embeddings(catalog, semantic.model_id, items.column("image_id").to_pylist())
    np.testing.assert_allclose(vectors, direct(semantic, paths), atol=2e-3)


def test_fsspec_urls_are_read_like_local_files(tmp_path: Path, semantic: Descriptor) -> None:
    import fsspec

    paths = make_pngs(tmp_path / "png", 3, seed=4)
    fs = fsspec.filesystem("memory")
    uris = []
    for p in paths:
        fs.pipe(f"/embed-test/{p.name}", p.read_bytes())
        uris.append(f"memory:///embed-test/{p.name}")
    items = items_of(paths).set_column(1, "uri", pa.array(uris))
    catalog = Catalog(str(tmp_path / "cat"))
    assert E.embed_items(catalog, semantic, items, CFG, "run-1")["embedded"] == 3
    _, vectors = read_embeddings(catalog, semantic.model_id, items.column("image_id").to_pylist())
    np.testing.assert_allclose(vectors, direct(semantic, paths), atol=2e-3)
    fs.rm("/embed-test", recursive=True)


def test_a_checkpoint_of_the_wrong_kind_is_a_one_line_error(tmp_path: Path) -> None:
    backbone = tiny_backbone(tmp_path / "bb.safetensors")
    with pytest.raises(CheckpointError) as info:
        E.load_embedder(backbone, "copy")
    msg = str(info.value)
    assert "\n" not in msg and str(backbone) in msg and "cannot be the copy embedder" in msg
    assert "dinoflow-backbone" in msg and "SSCD TorchScript" in msg
    from pretrain.models.descriptor import CopyDescriptor, save_descriptor

    torch.manual_seed(0)
    desc = CopyDescriptor(
        build_backbone("vit_pico", img_size=32, patch_size=8), dim=16, pooling="cls", input_size=32
    )
    path = save_descriptor(desc, tmp_path / "copy.safetensors")
    assert E.load_embedder(path, "copy").kind == "dinoflow-sscd"
    with pytest.raises(
        CheckpointError, match="a dinoflow-sscd .* cannot be the semantic embedder; expected a backbone"
    ):
        E.load_embedder(path, "semantic")
    with pytest.raises(ValueError, match="role 'style' is not one of"):
        E.load_embedder(backbone, "style")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(CheckpointError, match="found a text file"):
        E.load_embedder(notes, "semantic")


def test_default_copy_checkpoint_names_the_missing_asset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(E, "COPY_DESCRIPTOR", tmp_path / "assets" / "copy-descriptor")
    with pytest.raises(CheckpointError) as info:
        E.default_copy_checkpoint()
    assert str(tmp_path / "assets" / "copy-descriptor") in str(info.value) and "--copy-checkpoint" in str(
        info.value
    )
    (tmp_path / "assets" / "copy-descriptor").mkdir(parents=True)
    assert E.default_copy_checkpoint() == str(tmp_path / "assets" / "copy-descriptor")


def run_row(run_id: str, status: str, backbone: Path | None, minute: int) -> dict[str, Any]:
    from datetime import UTC, datetime

    at = datetime(2026, 12, 1, 10, minute, tzinfo=UTC)
    return {"run_id": run_id, "kind": "pretrain", "status": status, "started_at": at,
            "finished_at": at if status != "running" else None,
            "backbone_uri": str(backbone) if backbone else None}  # fmt: skip


def test_default_semantic_checkpoint_is_the_newest_registered_backbone(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    assert E.default_semantic_checkpoint(catalog) == str(E.BOOTSTRAP_BACKBONE)
    older, newer = tiny_backbone(tmp_path / "r1.safetensors"), tiny_backbone(tmp_path / "r2.safetensors", 1)
    register_run(catalog, run_row("r1", "completed", older, 1))
    register_run(catalog, run_row("r2", "completed", newer, 2))
    register_run(catalog, run_row("r3", "running", None, 3))  # no backbone yet
    register_run(catalog, run_row("r4", "failed", None, 4))
    assert E.default_semantic_checkpoint(catalog) == str(newer)
    register_run(catalog, run_row("r5", "completed", tmp_path / "deleted.safetensors", 5))  # file gone
    assert E.default_semantic_checkpoint(catalog) == str(newer)
    newer.unlink()
    assert E.default_semantic_checkpoint(catalog) == str(older)
    untimed = tiny_backbone(tmp_path / "r0.safetensors", 2)  # registered by hand, no timestamps: oldest
    register_run(catalog, {"run_id": "r0", "status": "completed", "backbone_uri": str(untimed)})
    assert E.default_semantic_checkpoint(catalog) == str(older)


def test_embed_catalog_takes_accepted_and_duplicate_images_once_each_with_the_bootstrap_backbone(
    tmp_path: Path, raw_photos: Path
) -> None:
    photos = sorted(raw_photos.glob("*"))[:4]
    copy = tmp_path / "copy-of-0.jpg"
    shutil.copy(photos[0], copy)  # same bytes, same image_id: embedded once
    paths = [*photos, copy]
    status = ["accepted", "accepted", "duplicate", "rejected", "duplicate"]
    ids = items_of(paths).column("image_id").to_pylist()
    rows = [{name: None for name in IMAGES_SCHEMA.names} | {"uri": str(p), "image_id": i, "status": s}
            for p, i, s in zip(paths, ids, status, strict=True)]  # fmt: skip
    catalog = Catalog(str(tmp_path / "cat"))
    upsert_images(catalog, pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), "ingest")
    bootstrap = E.load_embedder(E.default_semantic_checkpoint(catalog), "semantic")
    assert bootstrap.model_id.startswith("dinoflow-backbone/vit_pico-p8-d128@") and bootstrap.input_size == 64
    out = E.embed_catalog(catalog, bootstrap, CFG, "run-1")
    assert (out["embedded"], out["failed"]) == (3, [])
    got_ids, vectors = read_embeddings(catalog, bootstrap.model_id)
    assert sorted(got_ids.tolist()) == sorted({ids[0], ids[1], ids[2]})
    np.testing.assert_allclose(
        vectors, direct(bootstrap, [photos[i] for i in np.argsort([ids[0], ids[1], ids[2]])]), atol=2e-3
    )


def test_bf16_autocast_on_cpu_stays_close_to_fp32(tmp_path: Path, semantic: Descriptor) -> None:
    paths = make_pngs(tmp_path / "png", 4)
    images = [open_image(p.read_bytes()) for p in paths]
    fp32 = E.embed_arrays(semantic, images, device="cpu", precision="fp32")
    bf16 = E.embed_arrays(semantic, images, device="cpu", precision="bf16")
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    assert (fp32 * bf16).sum(axis=1).min() > 0.99


def test_device_plan_one_process_per_gpu() -> None:
    assert plan_devices("auto", None, 0) == ["cpu"]
    assert plan_devices("cpu", None, 4) == ["cpu"]
    assert plan_devices("auto", None, 4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert plan_devices("cuda", None, 1) == ["cuda:0"]
    assert plan_devices("cuda", 2, 4) == ["cuda:0", "cuda:1"]
    assert plan_devices("cuda:1", None, 2) == ["cuda:1"]
    with pytest.raises(ValueError, match="no CUDA device visible"):
        plan_devices("cuda", None, 0)
    with pytest.raises(ValueError, match="'cuda:2': 2 CUDA device"):
        plan_devices("cuda:2", None, 2)
    with pytest.raises(ValueError, match="is not one of 'auto', 'cpu', 'cuda'"):
        plan_devices("tpu", None, 0)
    if not torch.cuda.is_available():
        assert E.resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="no CUDA device visible"):
            E.resolve_device("cuda")


def test_the_default_semantic_backbone_is_pinned_to_the_dataset_it_embedded(tmp_path: Path) -> None:
    # a nightly pipeline keeps the backbone that embedded its newest dataset version (so a night
    # embeds only its new images), even after a pretraining run registered a newer one; `newest`
    # takes that run's; a recorded file that is gone falls back to the newest
    import json
    from datetime import UTC, datetime

    from curation.config import EmbedConfig
    from data_catalog.datasets import DatasetRecord, register_dataset

    def version(n: int, selection: dict[str, Any]) -> DatasetRecord:
        return DatasetRecord(name="nightly", version=n, created_at=datetime.now(UTC), num_samples=1,
                             num_shards=1, total_bytes=1, shards_uri="s", shard_pattern="p", index_uri="i",
                             config_json=json.dumps(selection))  # fmt: skip

    catalog = Catalog(str(tmp_path / "cat"))
    pinned, newest = EmbedConfig(), EmbedConfig(semantic_default="newest")
    first = str(E.BOOTSTRAP_BACKBONE)
    assert E.configured_checkpoint(catalog, pinned, "semantic", "nightly") == first  # nothing recorded yet
    selection = {"selection": {"embedders": {"semantic": {"model_id": "m", "checkpoint": first}}}}
    register_dataset(catalog, version(1, selection))
    run_backbone = tiny_backbone(tmp_path / "r1.safetensors")
    register_run(catalog, run_row("r1", "completed", run_backbone, 1))
    assert E.configured_checkpoint(catalog, pinned, "semantic", "nightly") == first
    assert E.configured_checkpoint(catalog, newest, "semantic", "nightly") == str(run_backbone)
    assert E.configured_checkpoint(catalog, pinned, "semantic", "other") == str(run_backbone)  # another name
    given = EmbedConfig(semantic_checkpoint=str(tmp_path / "mine.pth"))
    assert E.configured_checkpoint(catalog, given, "semantic", "nightly") == str(tmp_path / "mine.pth")

    moved = tiny_backbone(tmp_path / "v2.safetensors", 1)
    selection["selection"]["embedders"]["semantic"]["checkpoint"] = str(moved)
    register_dataset(catalog, version(2, selection))
    assert E.configured_checkpoint(catalog, pinned, "semantic", "nightly") == str(
        moved
    )  # the newest version's
    moved.unlink()
    assert E.configured_checkpoint(catalog, pinned, "semantic", "nightly") == str(run_backbone)
    with pytest.raises(ValueError, match="semantic_default"):
        EmbedConfig.model_validate({"semantic_default": "latest"})
