"""Sources: folder, fsspec URL, tar / webdataset shards, parquet and CSV uri lists."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from curation.config import CurateConfig
from curation.ingest import process_partition
from curation.sources import iter_bytes, list_source, source_kind, split_tar_uri


def _jpeg(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    (root / "a" / "b").mkdir(parents=True)
    (root / "UPPER.JPG").write_bytes(_jpeg(1))
    (root / "a" / "x.jpeg").write_bytes(_jpeg(2))
    (root / "a" / "b" / "deep.Png").write_bytes(_jpeg(3))
    (root / "a" / "readme.txt").write_text("not an image")
    (root / ".hidden").write_bytes(b"")
    return root


def test_folder_lists_every_file_recursively(folder: Path) -> None:
    uris = list(list_source(str(folder)))
    expected = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    assert sorted(uris) == expected and len(uris) == 5  # non-images and hidden files included
    assert source_kind(str(folder)) == "folder"
    assert list(list_source(f"file://{folder}")) == uris  # file:// gives the same stable uris


def test_folder_records_non_images_as_rejected(folder: Path) -> None:
    uris = list(list_source(str(folder)))
    rows = {r["uri"]: r for r in process_partition(uris, str(folder), CurateConfig(), "r").to_pylist()}
    assert rows[str(folder / "UPPER.JPG")]["status"] == "accepted"
    assert rows[str(folder / "a" / "b" / "deep.Png")]["format"] == "JPEG"
    assert rows[str(folder / "a" / "readme.txt")]["reason"] == "not_an_image"
    assert rows[str(folder / ".hidden")]["reason"] == "empty_file"


def test_listing_is_lazy(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = open

    def spy(path, *a, **k):  # type: ignore[no-untyped-def]
        opened.append(str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    it = list_source(str(folder))
    first = next(it)
    assert first.startswith(str(folder)) and opened == []  # no byte read while listing


def test_missing_source_and_bad_kind(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        source_kind(str(tmp_path / "nope"))
    (tmp_path / "one.jpg").write_bytes(_jpeg())
    with pytest.raises(ValueError, match="not a tar shard"):
        source_kind(str(tmp_path / "one.jpg"))


def test_memory_fsspec_url() -> None:
    root = f"dinoflow-test-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    fs.pipe(f"/{root}/x/a.jpg", _jpeg(1))
    fs.pipe(f"/{root}/b.txt", b"hello")
    try:
        uris = list(list_source(f"memory://{root}"))
        assert sorted(uris) == [f"memory://{root}/b.txt", f"memory://{root}/x/a.jpg"]
        assert source_kind(f"memory://{root}") == "fsspec"
        got = dict(iter_bytes(uris))
        assert got[f"memory://{root}/b.txt"] == b"hello"
        rows = {r["uri"]: r for r in process_partition(uris, root, CurateConfig(), "r").to_pylist()}
        assert rows[f"memory://{root}/x/a.jpg"]["status"] == "accepted"
        missing = dict(iter_bytes([f"memory://{root}/gone.jpg"]))
        assert isinstance(missing[f"memory://{root}/gone.jpg"], BaseException)
    finally:
        fs.rm(f"/{root}", recursive=True)


def _write_tar(path: Path, members: dict[str, bytes], mode: str = "w") -> None:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("suffix,mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_tar_shard_members_are_inputs(tmp_path: Path, suffix: str, mode: str) -> None:
    shard = tmp_path / f"shard{suffix}"
    _write_tar(shard, {"dir/0001.jpg": _jpeg(1), "dir/0001.cls": b"3", "0002.jpg": _jpeg(2)}, mode)
    uris = list(list_source(str(shard)))
    assert uris == [f"{shard}#dir/0001.jpg", f"{shard}#dir/0001.cls", f"{shard}#0002.jpg"]
    assert split_tar_uri(uris[0]) == (str(shard), "dir/0001.jpg")
    table = process_partition([*uris, f"{shard}#missing.jpg"], str(shard), CurateConfig(), "r")
    rows = {r["uri"]: r for r in table.to_pylist()}
    assert rows[uris[0]]["status"] == "accepted" and rows[uris[2]]["status"] == "accepted"
    assert rows[uris[1]]["reason"] == "not_an_image"
    assert rows[f"{shard}#missing.jpg"]["reason"] == "read_error"


def test_webdataset_brace_pattern_reads_each_shard_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for s in range(2):
        with wds.TarWriter(str(tmp_path / f"shard-{s:03d}.tar")) as sink:
            for k in range(3):
                sink.write({"__key__": f"s{s}_{k:04d}", "jpg": _jpeg(10 * s + k), "cls": str(k).encode()})
    uris = list(list_source(str(tmp_path / "shard-{000..001}.tar")))
    assert len(uris) == 12 and uris[0].endswith("shard-000.tar#s0_0000.cls")
    assert list(list_source(str(tmp_path / "shard-*.tar"))) == uris
    opened: list[str] = []
    real = tarfile.open

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        opened.append("x")
        return real(*a, **k)

    monkeypatch.setattr(tarfile, "open", spy)
    got = dict(iter_bytes([u for u in uris if u.endswith(".jpg")]))
    assert len(got) == 6 and all(isinstance(v, bytes) for v in got.values())
    assert len(opened) == 2  # one pass per shard, not one per member


def test_parquet_and_csv_lists(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    for k in range(3):
        (tmp_path / "imgs" / f"{k}.jpg").write_bytes(_jpeg(k))
    absolute = [str(tmp_path / "imgs" / f"{k}.jpg") for k in range(2)]
    pq.write_table(pa.table({"uri": absolute, "label": [0, 1]}), tmp_path / "list.parquet")
    (tmp_path / "list.csv").write_text("label,uri\n0,imgs/2.jpg\n1," + absolute[0] + "\n")
    assert source_kind(str(tmp_path / "list.parquet")) == source_kind(str(tmp_path / "list.csv")) == "list"
    assert list(list_source(str(tmp_path / "list.parquet"))) == absolute
    # relative uris resolve against the list's folder
    assert list(list_source(str(tmp_path / "list.csv"))) == [str(tmp_path / "imgs" / "2.jpg"), absolute[0]]
    pq.write_table(pa.table({"path": absolute}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="no 'uri' column"):
        list(list_source(str(tmp_path / "bad.parquet")))


def test_iter_bytes_reports_unreadable(tmp_path: Path) -> None:
    got = dict(iter_bytes([str(tmp_path / "gone.jpg"), str(tmp_path)]))
    assert all(isinstance(v, OSError) for v in got.values()) and len(got) == 2
