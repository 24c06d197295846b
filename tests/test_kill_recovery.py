"""A ``dinoflow run`` SIGKILLed mid-ingest, then mid-embedding, then mid-training, and started again
each time: it resumes from the last completed stage (staged partitions reused, committed embedding
chunks kept, training resumed from its checkpoint in the same run directory, no second dataset
version) and ends with the catalog an uninterrupted run writes, no row lost or duplicated.

The kill comes from inside the CLI process at a chosen moment (``KILLER`` wraps a library function
and SIGKILLs its own process after it), so the test does not race the stages."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from data_catalog.catalog import Catalog
from tests.test_cli_curate import tiny_backbone, tiny_copy_descriptor
from tests.test_nights import copy_pool, rows

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

KILLER = """
import glob, os, signal, sys
point, after = os.environ.get("KILL_AT", "none:0").split(":")
calls = [0]

def after_call(module, name, when=lambda out: True):
    original = getattr(module, name)
    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        if when(out):
            calls[0] += 1
            if calls[0] >= int(after):
                os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(module, name, wrapped)

if point == "ingest":  # after the Nth staged partition is written
    from curation import ingest
    after_call(ingest, "write_staged")
elif point == "embed":  # after the Nth committed chunk of vectors
    from curation import embed_workers
    after_call(embed_workers, "write_embeddings")
elif point == "train":  # at the first metrics line after a checkpoint exists
    from pretrain import launch
    after_call(launch, "parse_metrics", lambda out: bool(glob.glob(os.environ["KILL_GLOB"])))
elif point == "rank":  # SIGKILL the training rank (not the CLI, not torchrun) once a checkpoint exists
    import psutil
    from pretrain import launch
    original_parse = launch.parse_metrics
    def kill_a_rank(line):
        out = original_parse(line)
        if out is not None and calls[0] == 0 and glob.glob(os.environ["KILL_GLOB"]):
            for p in psutil.Process().children(recursive=True):
                cmd = p.cmdline()
                if "pretrain.train" in cmd and "torch.distributed.run" not in cmd:
                    calls[0] = 1
                    print(f"KILLED RANK {p.pid} after step {out['step']:.0f}", flush=True)
                    p.kill()
        return out
    launch.parse_metrics = kill_a_rank
from flows.cli import app
app(sys.argv[1:], prog_name="dinoflow")
"""


def config_file(tmp_path: Path, source: Path, catalog: Path, max_steps: int = 4) -> Path:
    """Curation with tiny embedders (made once, shared by both catalogs) in small partitions and
    chunks; ``max_steps`` training steps, a checkpoint every 2, no evaluation."""
    semantic, copy = tmp_path / "bb.safetensors", tmp_path / "copy.pt"
    if not semantic.exists():
        tiny_backbone(semantic), tiny_copy_descriptor(copy)
    cfg = {
        "catalog": str(catalog),
        "source": str(source),
        "dask_address": "sync",
        "dataset": {"name": "nightly", "shard_max_bytes": 200_000},
        "curate": {
            "ingest": {"partition_size": 6},
            "embed": {
                "semantic_checkpoint": str(semantic),
                "copy_checkpoint": str(copy),
                "partition_size": 8,
            },
            "cluster": {"n_clusters": [6, 2], "resampling_steps": [1], "sample_sizes": [2]},
        },
        "pretrain": {
            "enabled": True,
            "max_steps": max_steps,
            "nproc_per_node": 1,
            "train": {
                "train": {"batch_size_per_device": 8, "num_workers": 0, "checkpoint_every": 2, "log_every": 1}
            },
        },
    }
    path = tmp_path / f"{catalog.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def dinoflow(tmp_path: Path, args: list[str], kill_at: str | None = None, **env: str) -> tuple[int, str]:
    """Run the CLI (wrapped by ``KILLER``) in its own session; what it left (Prefect's temporary
    server) is killed with its process group. Returns (exit code, output)."""
    full_env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "KILL_AT": kill_at or "none:0", **env}  # fmt: skip
    full_env.pop("PREFECT_API_URL", None)
    log = tmp_path / "dinoflow.log"
    with log.open("w") as sink:  # a file, not a pipe: a process left holding it cannot block the test
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLER, *args], cwd=REPO, env=full_env, stdout=sink,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout=240)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    out = log.read_text()
    return proc.returncode, out


def left_behind(marker: str) -> list[psutil.Process]:
    """Processes whose command line names ``marker`` (a run's catalog), waited for up to 20 s."""
    deadline = time.monotonic() + 20
    while True:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            if any(marker in part for part in p.info["cmdline"] or []) and p.pid != os.getpid():
                found.append(p)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def curated(catalog: Catalog) -> dict[str, Any]:
    """What curation wrote, comparable across catalogs: every image's status, the embedded keys."""
    return {
        "images": sorted(
            (r["uri"], r["image_id"], r["status"], r["reason"], r["dup_of_uri"])
            for r in rows(catalog, "images")
        ),  # fmt: skip
        "embeddings": sorted((r["image_id"], r["model_id"]) for r in rows(catalog, "embeddings")),
        "samples": [r["num_samples"] for r in rows(catalog, "datasets")],
    }


def test_killed_three_times_then_resumed_matches_an_uninterrupted_run(
    imagenette_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "pool"
    copy_pool(imagenette_dir, source, 0, 6)  # 24 images: 4 ingest partitions, 3 chunks per embedder
    ref_cat, cat = tmp_path / "reference", tmp_path / "killed"
    code, out = dinoflow(tmp_path, ["curate", "--config", str(config_file(tmp_path, source, ref_cat))])
    assert code == 0, out[-3000:]
    reference = curated(Catalog(str(ref_cat)))
    run = ["run", "--config", str(config_file(tmp_path, source, cat))]
    catalog = Catalog(str(cat))

    # 1. killed mid-ingest: some partitions staged (2, or 3 when one in flight finished), none committed
    code, out = dinoflow(tmp_path, run, kill_at="ingest:2")
    assert code == -signal.SIGKILL, out[-3000:]
    staged = len(list(cat.glob("runs/*/staging/part-*.parquet")))
    assert not catalog.exists("images") and 2 <= staged < 4

    # 2. killed mid-embedding: the staged partitions reused, every image committed, one chunk of vectors
    code, out = dinoflow(tmp_path, run, kill_at="embed:1")
    assert code == -signal.SIGKILL, out[-3000:]
    assert f"{staged} of 4 partitions were staged by a killed run: reused" in out
    assert not list(cat.glob("runs/*/staging/.tmp-*"))  # the killed run's half-written file is gone
    images = rows(catalog, "images")
    assert len(images) == len({r["uri"] for r in images}) == 24
    assert len({r["run_id"] for r in images}) == 1  # one run committed them all
    first_chunk = rows(catalog, "embeddings")
    assert len(first_chunk) == 8

    # 3. killed mid-training, after its first checkpoint
    ckpts = str(cat / "runs" / "nightly-v1-demo" / "checkpoints" / "step_*")
    code, out = dinoflow(tmp_path, run, kill_at="train:1", KILL_GLOB=ckpts)
    assert code == -signal.SIGKILL, out[-3000:]
    assert not left_behind(str(cat)), "a training rank outlived its killed flow"
    embeddings = rows(catalog, "embeddings")
    assert {r["run_id"] for r in first_chunk} < {r["run_id"] for r in embeddings}  # kept, not redone
    assert [r["status"] for r in rows(catalog, "runs")] == ["running"]
    assert len(rows(catalog, "datasets")) == 1

    # 4. started again: nothing new to curate; training resumes in the same run directory
    rerun_at = time.time()
    code, out = dinoflow(tmp_path, run)
    assert code == 0, out[-3000:]
    assert "no new images since nightly:v1" in out
    metrics = [
        json.loads(x) for x in (cat / "runs" / "nightly-v1-demo" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]  # each step once
    before = [m["step"] for m in metrics if m["time"] < rerun_at]
    assert before == list(range(1, len(before) + 1)) and len(before) >= 2  # steps up to the checkpoint kept
    [row] = rows(catalog, "runs")
    assert (row["status"], row["steps"], row["run_id"]) == ("completed", 4, "nightly-v1-demo")
    assert curated(catalog) == reference  # no row lost or duplicated, same statuses, one version
    assert not left_behind(str(cat))


def test_a_killed_training_rank_is_retried_and_resumes_from_its_checkpoint(
    imagenette_dir: Path, tmp_path: Path
) -> None:
    # SIGKILL of the rank (an OOM kill, a lost node): torchrun fails, the torchrun task is retried
    # and training resumes from the last checkpoint in the same run directory; each step once
    source = tmp_path / "pool"
    copy_pool(imagenette_dir, source, 0, 4)
    cat = tmp_path / "catalog"
    ckpts = str(cat / "runs" / "nightly-v1-demo" / "checkpoints" / "step_*")
    run = ["run", "--config", str(config_file(tmp_path, source, cat, max_steps=12))]
    code, out = dinoflow(tmp_path, run, kill_at="rank:1", KILL_GLOB=ckpts)
    assert code == 0, out[-3000:]
    [killed_after] = [int(step) for step in re.findall(r"KILLED RANK \d+ after step (\d+)", out)]
    assert 2 <= killed_after < 12, out[-3000:]  # mid-training, after a checkpoint
    assert "pretraining exited with code" in out and "Retry" in out  # the failure is logged, then retried
    metrics = [
        json.loads(x) for x in (cat / "runs" / "nightly-v1-demo" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in metrics] == list(range(1, 13))  # each step once
    catalog = Catalog(str(cat))
    [row] = rows(catalog, "runs")
    assert (row["status"], row["steps"]) == ("completed", 12)
    assert len(rows(catalog, "datasets")) == 1
    assert not left_behind(str(cat))
