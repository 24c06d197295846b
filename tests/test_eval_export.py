"""``dinoflow catalog export evaluations``: the evaluations table leaves the catalog like the others."""

from __future__ import annotations

from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from data_catalog.catalog import Catalog
from data_catalog.evaluations import read_evaluations, record_evaluation
from data_catalog.export import export_table


def test_evaluations_export_to_parquet_and_csv(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "cat"))
    base = {"eval_id": "e1", "benchmark": "cifar10", "settings_key": "s", "subject": "checkpoint"}
    record_evaluation(catalog, [{**base, "protocol": "knn", "metric": "top1@k20", "value": 0.61},
                                {**base, "protocol": "linear", "metric": "top1", "value": 0.72}])  # fmt: skip
    assert export_table(catalog, "evaluations", tmp_path / "ev.parquet") == 2
    assert pq.read_table(tmp_path / "ev.parquet").equals(read_evaluations(catalog))
    assert export_table(catalog, "evaluations", tmp_path / "ev.csv") == 2
    csv = pacsv.read_csv(tmp_path / "ev.csv")
    assert sorted(csv.column("value").to_pylist()) == [0.61, 0.72]
