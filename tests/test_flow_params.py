"""Under a real Prefect API: a flow run given dict parameters with a misspelled key fails before any
work, naming it; `dinoflow curate --config FILE` takes catalog and source from the file and saves
the resolved config beside the run's outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.prefect


def test_dict_parameters_with_a_misspelled_key_fail_before_work(
    prefect_harness: None, tmp_path: Path
) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.curate import curate

    params = {"catalog": str(tmp_path / "catalog"), "sorce": str(tmp_path), "dask_address": "sync"}
    with pytest.raises(ParameterTypeError, match=r"config\.sorce: unknown key \(did you mean 'source'\)"):
        # as a deployment run with parameters edited in the UI calls it
        curate(config=params)  # type: ignore[call-overload]
    assert not (tmp_path / "catalog").exists()


def test_curate_takes_catalog_and_source_from_the_config_file(
    prefect_harness: None, imagededup_testdata: Path, tmp_path: Path
) -> None:
    from data_catalog.settings import load_model
    from flows.cli import app
    from flows.config import PipelineConfig

    source = tmp_path / "incoming"
    source.mkdir()
    for path in sorted(imagededup_testdata.rglob("*.jpg"))[:6]:
        shutil.copy(path, source / path.name)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"catalog: {tmp_path / 'catalog'}\nsource: {source}\ndask_address: sync\n"
        "curate:\n  dedup:\n    phash_radius: 4\n  embed:\n    enabled: false\n"
    )
    result = CliRunner().invoke(app, ["curate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    (saved,) = (tmp_path / "catalog" / "runs").glob("curate-*/pipeline.yaml")
    again = load_model(PipelineConfig, saved)
    assert again == load_model(PipelineConfig, config)
    assert again.curate.dedup.phash_radius == 4
    # without vectors the dataset version is a uniform sample of the accepted images, as before
    from data_catalog.catalog import Catalog
    from data_catalog.datasets import get_dataset
    from data_catalog.images import accepted

    catalog = Catalog(str(tmp_path / "catalog"))
    record = get_dataset(catalog, "curated", 1)
    assert record.config["stage"]["selection"]["rule"] == "uniform"
    assert record.num_samples == accepted(catalog, columns=["uri"]).num_rows
