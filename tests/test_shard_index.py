"""The shard index: one schema, one writer, one reader; hand-written indexes and mistakes in them."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest

from data_catalog.shard_index import ShardEntry, ShardIndex, index_filename, read_index, write_index
from pretrain.data import open_dataset


def test_written_index_reads_back_equal(tmp_path: Path) -> None:
    index = ShardIndex(
        shards=(ShardEntry("d-v2-000000.tar", 3, 3072, "ab" * 16), ShardEntry("d-v2-000001.tar", 1, 1024, "cd" * 16)),
        name="d", version=2, brace_pattern="d-v2-{000000..000001}.tar", created_at="2026-01-02T03:04:05+00:00",
        images_table_version=7, parents=("base:v1",), config={"seed": 0}, duplicate_ids_merged=1,
        skipped=({"image_id": "f" * 64, "reason": "read_error", "detail": "gone"},),
    )  # fmt: skip
    path = tmp_path / index_filename("d", 2)
    write_index(fsspec.filesystem("file"), str(path), index)
    assert path.name == "d-v2.index.json" and not (tmp_path / "d-v2.index.json.part").exists()
    raw = json.loads(path.read_text())
    assert (raw["num_samples"], raw["num_shards"], raw["total_bytes"]) == (4, 2, 4096)  # totals are written
    back = read_index(str(path))
    assert back == index and back.folder == str(tmp_path)
    assert back.urls() == [str(tmp_path / "d-v2-000000.tar"), str(tmp_path / "d-v2-000001.tar")]
    assert back.urls("s3://b/x") == ["s3://b/x/d-v2-000000.tar", "s3://b/x/d-v2-000001.tar"]


def test_hand_written_index_trains(tmp_path: Path) -> None:
    """Only shard urls and counts are needed: one's own webdataset tars, absolute or relative."""
    path = tmp_path / "mine.json"
    path.write_text(
        json.dumps({"shards": [{"url": "a.tar", "num_samples": 5}, {"url": "/abs/b.tar", "num_samples": 2}]})
    )
    shards, meta = open_dataset(None, str(path))
    assert [(s.url, s.num_samples) for s in shards] == [(str(tmp_path / "a.tar"), 5), ("/abs/b.tar", 2)]
    assert meta == {"name": str(path), "version": None, "index_uri": str(path)}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not valid JSON"),
        (json.dumps([1, 2]), "expected a JSON object with a 'shards' list"),
        (json.dumps({"shards": []}), "lists no shards"),
        (json.dumps({"shards": [{"num_samples": 1}]}), r"shards\[0\]: expected"),
        (json.dumps({"shards": [{"url": "a.tar", "num_samples": "3"}]}), "'num_samples' must be"),
        (
            json.dumps({"shards": [{"url": "a.tar", "num_samples": 3}], "num_samples": 4}),
            "'num_samples' is 4",
        ),
    ],
)
def test_broken_indexes_name_the_file_and_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.index.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        read_index(str(path))
    assert str(path) in str(err.value)
