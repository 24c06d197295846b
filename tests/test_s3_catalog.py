"""A catalog and a source on S3: ingest, dedup, a dataset version, training's reader and the CLI.

The S3 API is real (moto's server on a local port, spoken to over HTTP by deltalake's object_store,
s3fs and boto3), configured the way a user configures AWS: environment variables only
(``AWS_ENDPOINT_URL``, credentials, region; ``AWS_ALLOW_HTTP`` for a plain-HTTP endpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import pytest

from curation.config import CurateConfig
from curation.dataset_version import create_dataset_version
from curation.hashdedup import apply_hash_dedup
from curation.ingest import ingest
from curation.shards import verify_dataset
from data_catalog.catalog import Catalog
from data_catalog.images import read_images, status_counts
from pretrain.data import open_dataset, raw_sample_stream

REPO = Path(__file__).resolve().parents[1]
BUCKET = "lake"


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",  # deltalake: the local endpoint speaks plain HTTP
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _upload(raw_photos: Path, tmp_path: Path) -> tuple[int, list[str]]:
    """12 real photos, an exact copy of one, a zero-byte file and a text file -> s3://lake/incoming/."""
    import boto3

    photos = sorted(raw_photos.glob("*.JPEG"))[:12]
    s3 = boto3.client("s3")
    for p in photos:
        s3.upload_file(str(p), BUCKET, f"incoming/photos/{p.name}")
    copy = tmp_path / "copy.jpg"
    shutil.copy(photos[0], copy)
    s3.upload_file(str(copy), BUCKET, "incoming/copies/copy.jpg")
    s3.put_object(Bucket=BUCKET, Key="incoming/empty.jpg", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="incoming/notes.txt", Body=b"not an image\n")
    return len(photos) + 3, [p.name for p in photos]


def test_catalog_and_source_on_s3(s3_env: dict[str, str], raw_photos: Path, tmp_path: Path) -> None:
    n_inputs, _ = _upload(raw_photos, tmp_path)
    catalog = Catalog(f"s3://{BUCKET}/catalog")
    cfg = CurateConfig()

    first = ingest(catalog, f"s3://{BUCKET}/incoming", cfg, run_id="s3-run-1", client_or_address="sync")
    assert first.n_new == n_inputs
    images = read_images(catalog)
    assert images.num_rows == n_inputs  # every input has exactly one row
    assert all(u.startswith(f"s3://{BUCKET}/incoming/") for u in images.column("uri").to_pylist())
    reasons = {r["uri"].rsplit("/", 1)[-1]: r["reason"] for r in images.to_pylist()}
    assert reasons["empty.jpg"] == "empty_file" and reasons["notes.txt"] == "not_an_image"

    again = ingest(catalog, f"s3://{BUCKET}/incoming", cfg, run_id="s3-run-2", client_or_address="sync")
    assert again.n_new == 0  # incremental on S3 too: nothing listed twice, nothing decoded again

    dedup = apply_hash_dedup(catalog, cfg.dedup, "s3-dedup")
    assert dedup["exact_duplicate"] == 1
    counts = {(c["status"], c["reason"]): c["count"] for c in status_counts(catalog)}
    assert sum(counts.values()) == n_inputs
    assert counts[("duplicate", "exact_duplicate")] == 1
    n_accepted = counts[("accepted", None)]
    assert read_images(catalog, version=0).num_rows == n_inputs  # time travel on S3

    record = create_dataset_version(catalog, "s3set", shard_max_samples=4, workers=2)
    assert record.shards_uri.startswith(f"s3://{BUCKET}/catalog/datasets/s3set/v1")
    assert record.num_samples == n_accepted and record.num_shards == -(-n_accepted // 4)
    assert verify_dataset(catalog, "s3set")["ok"]

    # the training reader streams the shards from S3 (one pass of the infinite stream)
    shards, meta = open_dataset(catalog.root, "s3set:v1")
    assert meta["version"] == 1 and len(shards) == record.num_shards
    samples = list(islice(raw_sample_stream(shards, seed=0, stream_id=0, n_streams=1, bufsize=1), n_accepted))
    assert len({json.loads(s["json"])["image_id"] for s in samples}) <= n_accepted
    assert all(s["jpg"][:2] == b"\xff\xd8" for s in samples)

    # the CLI reads the same catalog with nothing but the environment
    env = {**os.environ, **s3_env}
    out = tmp_path / "images.csv"
    for args in (["catalog", "stats"], ["catalog", "export", "images", "--out", str(out)]):
        done = subprocess.run(
            [str(Path(sys.executable).with_name("dinoflow")), *args, "--catalog", catalog.root],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(out.read_text().splitlines()) == n_inputs + 1


def test_reading_an_s3_table_exits_cleanly(s3_env: dict[str, str]) -> None:
    """deltalake's object-store filesystem is Python-backed: reads must not abort the interpreter at
    exit (see tests/test_catalog_read.py). 6 processes read a 5,000-row table from S3."""
    from benchmarks.bench_catalog import synthetic_rows
    from data_catalog.images import upsert_images

    catalog = Catalog(f"s3://{BUCKET}/exit-catalog")
    upsert_images(catalog, synthetic_rows(range(5000), "a"), "a")
    script = (
        "import sys; from data_catalog.catalog import Catalog; from data_catalog.images import read_images; "
        "assert read_images(Catalog(sys.argv[1])).num_rows == 5000; print('read ok')"
    )
    for _ in range(6):
        done = subprocess.run(
            [sys.executable, "-c", script, catalog.root],
            cwd=REPO, env={**os.environ, **s3_env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0 and "read ok" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_pipeline_config_saved_on_s3_is_what_a_dataset_version_records(
    s3_env: dict[str, str], raw_photos: Path, tmp_path: Path
) -> None:
    import yaml

    from data_catalog.settings import validate
    from flows.config import PipelineConfig
    from flows.settings import pipeline_config, save_pipeline_config

    catalog = Catalog(f"s3://{BUCKET}/config-catalog")
    cfg = pipeline_config(None, ["curate.dedup.phash_radius=4"], catalog=catalog.root)
    local = tmp_path / "one"
    local.mkdir()
    shutil.copy(sorted(raw_photos.glob("*.JPEG"))[0], local / "a.jpg")
    ingest(catalog, str(local), cfg.curate, run_id="run-cfg", client_or_address="sync")
    uri = save_pipeline_config(cfg, "run-cfg")
    assert uri == f"s3://{BUCKET}/config-catalog/runs/run-cfg/pipeline.yaml"
    assert validate(PipelineConfig, yaml.safe_load(catalog.filesystem().cat_file(uri))) == cfg
    # in a child process: deltalake's history() holds the GIL while it waits for moto's in-process
    # server (a deadlock of this test harness only; a real S3 endpoint is another process)
    script = (
        "import sys, json; from data_catalog.catalog import Catalog; from flows.settings import curation_record; "
        "print(json.dumps(curation_record(Catalog(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, catalog.root],
        cwd=REPO, env={**os.environ, **s3_env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["run_id"] == "run-cfg" and record["pipeline_config"] == uri
    assert record["curate"] == cfg.curate.model_dump(mode="json")
