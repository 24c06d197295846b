"""One real flow run under Prefect's ephemeral API: curate on real images, then incremental.

This is also the dependency-drift check: a Prefect / fastapi / SQLAlchemy combination that breaks
the ephemeral server fails here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_catalog.catalog import Catalog
from data_catalog.images import read_images

pytestmark = pytest.mark.prefect


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _artifact(key: str):  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found


def test_curate_flow_accounts_for_every_file_and_is_incremental(
    prefect_harness: None, imagededup_testdata: Path, raw_photos: Path, tmp_path: Path
) -> None:
    from flows.config import PipelineConfig
    from flows.curate import curate

    source = tmp_path / "incoming"
    shutil.copytree(imagededup_testdata, source)
    cfg = PipelineConfig.model_validate(
        {
            "catalog": str(tmp_path / "catalog"),
            "source": str(source),
            # ingest and hash dedup only: the semantic stages have their own test (test_flow_semantic.py)
            "curate": {"ingest": {"partition_size": 8, "n_workers": 1}, "embed": {"enabled": False}},
            "dataset": {"enabled": False},
        }
    )
    first = curate(cfg)
    n_inputs = len(_files(source))
    rows = read_images(Catalog(cfg.catalog))
    assert rows.num_rows == n_inputs, "every input file has exactly one row"
    assert sorted(rows.column("uri").to_pylist()) == sorted(set(rows.column("uri").to_pylist()))
    assert sum(int(r["count"]) for r in first["counts"]) == n_inputs
    by_name = {
        Path(u).name: (s, r)
        for u, s, r in zip(*(rows.column(c).to_pylist() for c in ("uri", "status", "reason")), strict=True)
    }
    assert by_name["ukbench09268_corrupt.jpg"] == ("rejected", "decode_error")
    statuses = {s for s, _ in by_name.values()}
    assert statuses == {"accepted", "rejected", "duplicate"}
    assert first["new_partitions"] == -(-n_inputs // 8)
    assert _artifact("hash-dedup-counts"), "the stage publishes its counts as a table artifact"

    # nightly re-run with a few new photos: only they are processed
    for photo in sorted(raw_photos.iterdir())[:5]:
        shutil.copy(photo, source / photo.name)
    second = curate(cfg)
    assert second["new_partitions"] == 1
    assert read_images(Catalog(cfg.catalog)).num_rows == n_inputs + 5
    assert sum(int(r["count"]) for r in second["counts"]) == n_inputs + 5


def test_stage_progress_draws_a_bar_on_a_terminal_and_fills_the_artifact(prefect_harness: None) -> None:
    import asyncio
    import io

    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.artifacts import StageProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen, log = Terminal(), io.StringIO()

    @flow
    def stage() -> tuple[str, str]:
        bar, quiet = (
            StageProgress("t-progress", "embed", "images", stream=screen),
            StageProgress("q-progress", "q", stream=log),
        )
        for done in (3, 7, 10):
            bar(done, 10)
            quiet(done, 10)
        return str(bar.artifact), str(quiet.artifact)

    bar_id, quiet_id = stage()
    assert "10/10" in screen.getvalue() and "embed images" in screen.getvalue()
    assert log.getvalue() == ""  # not a terminal: no bar, the artifact only

    async def progress(artifact_id: str) -> float:
        async with get_client() as client:
            return float(next(a.data for a in await client.read_artifacts() if str(a.id) == artifact_id))

    assert asyncio.run(progress(bar_id)) == 100.0 and asyncio.run(progress(quiet_id)) == 100.0
