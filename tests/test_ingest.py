"""Ingest end to end: accounting, incremental runs, staging idempotence, Dask runners, one commit."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import curation.ingest as ingest_mod
from curation.config import CurateConfig, IngestConfig
from curation.ingest import commit_ingest, ingest, plan_partitions, process_partitions, staging_path
from data_catalog.catalog import Catalog
from data_catalog.images import IMAGES_SCHEMA, read_images, status_counts


def _cfg(partition_size: int = 3, **ingest_kw: object) -> CurateConfig:
    return CurateConfig(ingest=IngestConfig(partition_size=partition_size, **ingest_kw))  # type: ignore[arg-type]


def _write_jpegs(folder: Path, start: int, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(start, start + n):
        rng = np.random.default_rng(k)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(buf, "JPEG")
        (folder / f"img{k:03d}.jpg").write_bytes(buf.getvalue())


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_accounting_invariant_on_real_data(
    tmp_path: Path, raw_photos: Path, imagededup_testdata: Path
) -> None:
    catalog = Catalog(tmp_path / "cat")
    cfg = _cfg(partition_size=200)
    for run, source in (("r1", raw_photos), ("r2", imagededup_testdata)):
        ingest(catalog, str(source), cfg, run, client_or_address="sync")
    n_files = len(_files(raw_photos)) + len(_files(imagededup_testdata))
    table = read_images(catalog)
    assert table.num_rows == n_files == len(set(table.column("uri").to_pylist()))
    counts = status_counts(catalog)
    assert sum(int(c["count"]) for c in counts) == n_files  # type: ignore[call-overload]
    by_reason = {(c["status"], c["reason"]): c["count"] for c in counts}
    assert by_reason[("rejected", "decode_error")] == 2 and by_reason[("rejected", "not_an_image")] == 1
    assert all(s in ("accepted", "rejected") for s, _ in by_reason)
    raw = table.filter(np.array([u.startswith(str(raw_photos)) for u in table.column("uri").to_pylist()]))
    assert set(raw.column("status").to_pylist()) == {"accepted"}  # defaults keep every raw photo


def test_incremental_run_reads_only_new_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, catalog = tmp_path / "src", Catalog(tmp_path / "cat")
    _write_jpegs(src, 0, 5)
    first = ingest(catalog, str(src), _cfg(), "run-1", client_or_address="sync")
    assert first.n_new == 5 and first.version == 0

    _write_jpegs(src, 5, 2)
    read_uris: list[str] = []
    decoded: list[str] = []
    real_iter, real_decode = ingest_mod.iter_bytes, ingest_mod.decode_record

    def counting_iter(uris, *a, **k):  # type: ignore[no-untyped-def]
        read_uris.extend(uris)
        return real_iter(uris, *a, **k)

    def counting_decode(uri, *a, **k):  # type: ignore[no-untyped-def]
        decoded.append(uri)
        return real_decode(uri, *a, **k)

    monkeypatch.setattr(ingest_mod, "iter_bytes", counting_iter)
    monkeypatch.setattr(ingest_mod, "decode_record", counting_decode)
    second = ingest(catalog, str(src), _cfg(), "run-2", client_or_address="sync")
    new = {str(src / "img005.jpg"), str(src / "img006.jpg")}
    assert set(read_uris) == set(decoded) == new and second.n_new == 2
    assert second.version == 1  # one Delta commit per run
    table = read_images(catalog, columns=["uri", "first_run_id"]).to_pylist()
    assert len(table) == 7
    assert {r["first_run_id"] for r in table if r["uri"] not in new} == {"run-1"}

    third = ingest(catalog, str(src), _cfg(), "run-3", client_or_address="sync")
    assert third.n_new == 0 and len(read_uris) == 2


def test_staging_is_reused_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, catalog = tmp_path / "src", Catalog(tmp_path / "cat")
    _write_jpegs(src, 0, 7)
    cfg = _cfg(partition_size=3)
    parts = plan_partitions(catalog, str(src), cfg)
    assert [len(p) for p in parts] == [3, 3, 1]
    staged = process_partitions(catalog, parts, str(src), cfg, "run-x", client_or_address="sync")
    assert staged == [staging_path(catalog, "run-x", i) for i in range(3)]
    assert pq.read_table(staged[0]).schema.names == IMAGES_SCHEMA.names

    calls: list[int] = []
    real = ingest_mod.process_partition
    monkeypatch.setattr(
        ingest_mod, "process_partition", lambda uris, *a, **k: calls.append(1) or real(uris, *a, **k)
    )
    again = process_partitions(catalog, parts, str(src), cfg, "run-x", client_or_address="sync")
    assert again == staged and calls == []  # a re-run of the same run_id reuses the staging files
    changed = [parts[0][:2], parts[1], parts[2]]
    process_partitions(catalog, changed, str(src), cfg, "run-x", client_or_address="sync")
    assert calls == [1]  # a staging file for other uris is recomputed, not trusted
    assert commit_ingest(catalog, again, "run-x") == 0
    assert read_images(catalog).num_rows == 6
    assert not list((tmp_path / "cat" / "runs" / "run-x" / "staging").glob(".tmp-*"))


@pytest.fixture(scope="module")
def dask_address():  # type: ignore[no-untyped-def]
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def test_dask_cluster_runs_match_sync(tmp_path: Path, dask_address: str) -> None:
    src = tmp_path / "src"
    _write_jpegs(src, 0, 5)
    (src / "note.txt").write_text("not an image")
    results = {}
    for name, where in (("sync", "sync"), ("address", dask_address), ("local", None)):
        catalog = Catalog(tmp_path / f"cat-{name}")
        seen: list[tuple[int, int]] = []
        out = ingest(
            catalog,
            str(src),
            _cfg(2, n_workers=1),
            f"run-{name}",
            where,
            lambda d, t, seen=seen: seen.append((d, t)),
        )
        assert out.n_new == 6 and seen[0] == (0, 3) and seen[-1] == (3, 3) and len(seen) == 4
        table = read_images(catalog, columns=["uri", "image_id", "status", "reason", "phash"])
        results[name] = sorted(table.to_pylist(), key=lambda r: r["uri"])
    assert results["sync"] == results["address"] == results["local"]
    assert sum(r["status"] == "accepted" for r in results["sync"]) == 5
