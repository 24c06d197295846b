"""The embed stage's placements agree with the in-process run: one spawned process per device (two
CPU 'devices' here: the same code path a multi-GPU machine takes), Dask (sync and a real cluster),
and chunked commits (an interrupted run keeps its committed chunks)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from curation import embed as E
from curation import embed_workers as W
from curation.config import EmbedConfig
from data_catalog.catalog import Catalog
from data_catalog.embeddings import read_embeddings
from pretrain.models import build_backbone
from pretrain.models.descriptors import Descriptor, backbone_descriptor
from pretrain.models.io import save_backbone

CFG = EmbedConfig(batch_size=2, partition_size=3, decode_workers=2, device="cpu")


def images(folder: Path, n: int) -> pa.Table:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    ids = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    return pa.table({"image_id": ids, "uri": [str(p) for p in paths]})


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_backbone("vit_pico", img_size=32, patch_size=8, layerscale_init=1.0).eval()


@pytest.fixture
def from_file(tmp_path: Path) -> Descriptor:
    return E.load_embedder(save_backbone(model(), tmp_path / "bb.safetensors"), "semantic")


def reference(tmp_path: Path, descriptor: Descriptor, items: pa.Table) -> np.ndarray:
    catalog = Catalog(str(tmp_path / "reference"))
    E.embed_items(catalog, descriptor, items, CFG, "ref")
    return read_embeddings(catalog, descriptor.model_id)[1]


@pytest.mark.slow  # two spawned processes import torch: ~30 s on 2 busy cores
def test_one_process_per_device_embeds_the_same_vectors(
    tmp_path: Path, from_file: Descriptor, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = images(tmp_path / "img", 7)  # 3 chunks of 3, 3, 1 dealt to two processes
    monkeypatch.setattr(W, "plan_devices", lambda *a: ["cpu", "cpu"])
    catalog = Catalog(str(tmp_path / "cat"))
    calls: list[tuple[int, int]] = []
    out = E.embed_items(catalog, from_file, items, CFG, "run", lambda d, t: calls.append((d, t)))
    assert (out["embedded"], out["failed"], out["processes"], out["device"]) == (7, [], 2, "cpu,cpu")
    assert out["chunks"] == 3
    assert calls[0] == (0, 7) and calls[-1] == (7, 7)
    np.testing.assert_array_equal(
        read_embeddings(catalog, from_file.model_id)[1], reference(tmp_path, from_file, items)
    )


def test_dask_partitions_embed_the_same_vectors(tmp_path: Path, from_file: Descriptor) -> None:
    items = images(tmp_path / "img", 5)
    catalog = Catalog(str(tmp_path / "cat"))
    calls: list[tuple[int, int]] = []
    out = E.embed_items(
        catalog, from_file, items, CFG, "run", lambda d, t: calls.append((d, t)), dask_address="sync"
    )
    assert (out["embedded"], out["chunks"], calls[0], calls[-1]) == (5, 2, (0, 5), (5, 5))
    np.testing.assert_array_equal(
        read_embeddings(catalog, from_file.model_id)[1], reference(tmp_path, from_file, items)
    )


@pytest.mark.slow  # a LocalCluster worker process: ~15 s
def test_a_real_dask_cluster_with_an_in_memory_descriptor(tmp_path: Path) -> None:
    from distributed import LocalCluster

    descriptor = backbone_descriptor(model(3), "random-seed3")  # no file: pickled to the worker
    items = images(tmp_path / "img", 4)
    catalog = Catalog(str(tmp_path / "cat"))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        out = E.embed_items(catalog, descriptor, items, CFG, "run", dask_address=cluster.scheduler_address)
    assert (out["embedded"], out["chunks"], out["processes"]) == (4, 2, None)
    np.testing.assert_array_equal(
        read_embeddings(catalog, descriptor.model_id)[1], reference(tmp_path, descriptor, items)
    )


def test_an_interrupted_run_keeps_its_committed_chunks(tmp_path: Path, from_file: Descriptor) -> None:
    items = images(tmp_path / "img", 7)
    catalog = Catalog(str(tmp_path / "cat"))

    def stop_in_the_second_chunk(done: int, total: int) -> None:
        if done >= 4:  # chunk 1 (3 images) committed, chunk 2 half done
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        E.embed_items(catalog, from_file, items, CFG, "run-1", stop_in_the_second_chunk)
    assert len(read_embeddings(catalog, from_file.model_id)[0]) == 3
    again = E.embed_items(catalog, from_file, items, CFG, "run-2")
    assert (again["embedded"], again["already"]) == (4, 3)
    np.testing.assert_array_equal(
        read_embeddings(catalog, from_file.model_id)[1], reference(tmp_path, from_file, items)
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_on_every_visible_gpu_matches_the_cpu_vectors(
    tmp_path: Path, from_file: Descriptor
) -> None:
    items = images(tmp_path / "img", 9)
    cpu = reference(tmp_path, from_file, items)
    catalog = Catalog(str(tmp_path / "cat"))
    out = E.embed_items(catalog, from_file, items, CFG.model_copy(update={"device": "auto"}), "run")
    assert out["bf16"] is True and out["device"].startswith("cuda:0")
    assert out["processes"] == torch.cuda.device_count() and out["embedded"] == 9
    got = read_embeddings(catalog, from_file.model_id)[1]
    assert (got * cpu).sum(axis=1).min() > 0.99  # bf16 autocast against fp32
