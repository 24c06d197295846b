"""The curate flow's semantic stages under a real Prefect API, on real photos with tiny embedders:
a mirrored copy (which pHash misses) becomes near_duplicate_embedding, a copy of an --eval-set image
eval_leak; the clusters table is written; the dataset version's samples carry their cluster ids and
the version records the rule, embedders and thresholds; a second run embeds only the new images."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageOps

from data_catalog.catalog import Catalog
from data_catalog.images import read_images
from tests.test_cli_curate import tiny_backbone, tiny_copy_descriptor

BOOTSTRAP = Path(__file__).resolve().parents[1] / "assets" / "bootstrap-backbone"
pytestmark = [pytest.mark.prefect, pytest.mark.filterwarnings("ignore::FutureWarning")]


def _mirrored_jpeg(src: Path, dest: Path) -> None:
    ImageOps.mirror(Image.open(src).convert("RGB")).save(dest, "JPEG", quality=85)


def _config(tmp_path: Path, source: Path, bench: Path, **sample: Any) -> Any:
    from flows.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "catalog": str(tmp_path / "catalog"),
            "source": str(source),
            "dask_address": "sync",
            "dataset": {"name": "cur", "shard_max_bytes": 400_000},
            "curate": {
                "ingest": {"partition_size": 64, "n_workers": 1},
                "embed": {
                    "semantic_checkpoint": str(tiny_backbone(tmp_path / "bb.safetensors")),
                    "copy_checkpoint": str(tiny_copy_descriptor(tmp_path / "copy.pt")),
                    "batch_size": 16,
                    "device": "cpu",
                },
                # the thumbnail descriptor: distinct raw photos reach cosine 0.70, a mirrored copy 0.9999
                "semdedup": {"threshold": 0.95},
                "leaks": {"threshold": 0.95, "eval_sets": {"bench": str(bench)}},
                "cluster": {"n_clusters": [4, 2], "resampling_steps": [1], "sample_sizes": [2]},
                "sample": {"target_size": 6, **sample},
            },
        }
    )


def _by_name(catalog: Catalog) -> dict[str, tuple[str, str | None, str | None]]:
    rows = read_images(catalog, columns=["uri", "status", "reason", "detail"]).to_pylist()
    return {Path(r["uri"]).name: (r["status"], r["reason"], r["detail"]) for r in rows}


def _artifact(key: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return list(client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))))


def _samples(shards: Path) -> list[dict[str, Any]]:
    out = []
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    data = tar.extractfile(member)
                    assert data is not None
                    out.append(json.load(io.BytesIO(data.read())))
    return out


@pytest.mark.slow  # two curate runs: about 75 s on 2 loaded cores
def test_curate_flow_removes_embedding_duplicates_and_leaks_and_writes_a_balanced_version(
    prefect_harness: None, raw_photos: Path, tmp_path: Path
) -> None:
    from data_catalog.clusters import read_clusters
    from data_catalog.datasets import get_dataset
    from data_catalog.embeddings import model_counts
    from flows.curate import curate

    photos = sorted(raw_photos.iterdir())
    source, bench = tmp_path / "pool", tmp_path / "bench" / "fish"
    source.mkdir()
    bench.mkdir(parents=True)
    for photo in photos[:16]:
        shutil.copy(photo, source / photo.name)
    _mirrored_jpeg(photos[0], source / "mirrored-copy.jpg")  # pHash distance 30: only vectors link it
    shutil.copy(photos[5], bench / "benchmark-image.jpg")  # the pool holds photos[5]: a leak
    cfg = _config(tmp_path, source, bench.parent)

    first = curate(cfg)
    catalog = Catalog(cfg.catalog)
    rows = _by_name(catalog)
    assert rows["mirrored-copy.jpg"][:2] == ("duplicate", "near_duplicate_embedding") or rows[photos[0].name][
        :2
    ] == ("duplicate", "near_duplicate_embedding"), "the mirrored copy and its original are one group"
    status, reason, detail = rows[photos[5].name]
    assert (status, reason) == ("rejected", "eval_leak") and detail is not None and detail.startswith("bench")
    assert sum(1 for s, _, _ in rows.values() if s == "accepted") == 17 - 2
    assert first["embed"]["copy"]["embedded"] == 17 and first["embed"]["semantic"]["embedded"] == 17

    # clusters: every pool image (accepted, with a vector) at both levels
    clusters = read_clusters(catalog, first["cluster"]["clustering_id"])
    assert clusters.num_rows == 15 and set(clusters.column("n_levels").to_pylist()) == {2}

    # the dataset version: the balanced sample, cluster ids in each sample's json, the rule recorded
    name, version = first["dataset"].split(":v")
    record = get_dataset(catalog, name, int(version))
    assert record.num_samples == 6
    samples = _samples(Path(record.shards_uri))
    assert len(samples) == 6 and all(len(s["cluster_ids"]) == 2 for s in samples)
    by_id = {r["image_id"]: r["cluster_ids"] for r in clusters.to_pylist()}
    assert all(by_id[s["image_id"]] == s["cluster_ids"] for s in samples)
    rule = record.config["stage"]["selection"]
    assert rule["rule"] == "balanced_hierarchical" and rule["target_size"] == 6 and rule["pool"] == 15
    assert rule["embedders"]["copy"]["model_id"] == first["embed"]["copy"]["model_id"]
    assert rule["embedders"]["semantic"]["model_id"].startswith("dinoflow-backbone/vit_pico")
    assert (
        rule["thresholds"]["near_duplicate_cosine"] == 0.95 and rule["thresholds"]["eval_leak_cosine"] == 0.95
    )
    geometric = rule["thresholds"]["near_duplicate_geometric"]  # how pairs were verified, to reproduce it
    assert geometric["verify_from"] == 0.8 and geometric["verifier"].startswith("sift")
    assert rule["thresholds"]["eval_leak_geometric"]["verify_from"] == 0.7

    # each stage published its counts, and its report embeds its PNGs
    for key in ("semantic-dedup-counts", "leak-removal-counts"):
        assert _artifact(key), key
    assert "| level | clusters |" in _artifact("cluster")[0].data
    for key in ("semantic-dedup", "leak-removal", "sample"):
        (report,) = _artifact(key)[:1]
        assert "data:image/png;base64," in report.data, key
    assert (
        (Path(cfg.catalog) / "runs" / first["cluster"]["clustering_id"] / "cluster-sizes.png").stat().st_size
    )

    # incremental: two new photos and a new mirrored copy of an old one; only they are embedded,
    # and the new copy is linked to the old image
    for photo in photos[16:18]:
        shutil.copy(photo, source / photo.name)
    _mirrored_jpeg(photos[3], source / "late-copy.jpg")
    second = curate(cfg)
    # (already: the 16 accepted or duplicate images; the leak is rejected, so not an item to embed)
    assert second["embed"]["copy"]["embedded"] == 3 and second["embed"]["copy"]["already"] == 16
    assert second["embed"]["semantic"]["embedded"] == 3
    assert model_counts(catalog) == {first["embed"]["copy"]["model_id"]: 20,
                                     first["embed"]["semantic"]["model_id"]: 20}  # fmt: skip
    links = {
        Path(r["uri"]).name: Path(r["dup_of_uri"]).name
        for r in read_images(catalog, columns=["uri", "reason", "dup_of_uri"]).to_pylist()
        if r["reason"] == "near_duplicate_embedding"
    }
    assert links.get("late-copy.jpg") == photos[3].name or links.get(photos[3].name) == "late-copy.jpg"
    assert _by_name(catalog)[photos[5].name][1] == "eval_leak", "the leak stays a leak"


def test_target_larger_than_the_pool_is_one_line_before_writing(
    prefect_harness: None, raw_photos: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from data_catalog.settings import dump_yaml
    from flows.cli import app

    source, bench = tmp_path / "pool", tmp_path / "bench" / "c"
    source.mkdir()
    bench.mkdir(parents=True)
    photos = sorted(raw_photos.iterdir())
    for photo in photos[:8]:
        shutil.copy(photo, source / photo.name)
    shutil.copy(photos[20], bench / "x.jpg")
    dump_yaml(_config(tmp_path, source, bench.parent, target_size=50), tmp_path / "pipeline.yaml")
    result = CliRunner().invoke(app, ["curate", "--config", str(tmp_path / "pipeline.yaml")])
    assert result.exit_code == 2, result.output
    expected = "error: curate.sample.target_size=50 is larger than the pool: 8 accepted images"
    assert expected in result.output and "Traceback" not in result.output
    catalog = Catalog(str(tmp_path / "catalog"))
    assert catalog.version("images") is not None, "the pool is known only after ingest"
    assert catalog.version("clusters") is None and catalog.version("datasets") is None, "nothing written"


def test_retrieval_selects_the_pool_images_nearest_the_seeds(
    prefect_harness: None, raw_photos: Path, tmp_path: Path
) -> None:
    from data_catalog.datasets import get_dataset
    from flows.config import PipelineConfig
    from flows.curate import curate

    photos = sorted(raw_photos.iterdir())
    source, seeds = tmp_path / "pool", tmp_path / "seeds" / "picked"
    source.mkdir()
    seeds.mkdir(parents=True)
    for photo in photos[:10]:
        shutil.copy(photo, source / photo.name)
    for photo in (photos[2], photos[7]):  # re-encoded copies: their nearest pool image is the original
        Image.open(photo).convert("RGB").save(seeds / f"{photo.stem}.png")
    catalog = Catalog(str(tmp_path / "catalog"))
    tree: dict[str, Any] = {
        "catalog": catalog.root, "source": str(source), "dask_address": "sync",
        "dataset": {"name": "near"},
        "curate": {
            # the shipped bootstrap backbone (vit_pico): a random init's class tokens are near constant
            "embed": {"semantic_checkpoint": str(BOOTSTRAP), "device": "cpu"},
            "semdedup": {"enabled": False, "confirm_phash": False},
            "sample": {"mode": "retrieval", "retrieval_seed_set": str(seeds.parent), "retrieval_k": 1},
        },
    }  # fmt: skip
    first = curate(PipelineConfig.model_validate(tree))
    assert "copy" not in first["embed"], "no stage needs copy vectors"
    record = get_dataset(catalog, "near", 1)
    names = sorted(Path(s["uri"]).name for s in _samples(Path(record.shards_uri)))
    assert names == sorted([photos[2].name, photos[7].name])
    rule = record.config["stage"]["selection"]
    assert rule["rule"] == "retrieval" and rule["seeds"] == 2 and rule["k"] == 1 and rule["pool"] == 10

    # a dataset version as the seed set: its own images come back
    tree["curate"]["sample"]["retrieval_seed_set"] = "near:v1"
    second = curate(PipelineConfig.model_validate(tree))
    again = get_dataset(catalog, "near", 2)
    assert second["retrieval"]["seeds"] == 2 and again.num_samples == 2
    assert sorted(Path(s["uri"]).name for s in _samples(Path(again.shards_uri))) == names

    from data_catalog.settings import ConfigError

    tree["curate"]["sample"]["retrieval_seed_set"] = "nope:v3"
    with pytest.raises(ConfigError, match=r"retrieval_seed_set: dataset 'nope:v3' not found"):
        curate(PipelineConfig.model_validate(tree))
