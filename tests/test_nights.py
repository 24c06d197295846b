"""Nightly runs of ``curate-and-pretrain`` on a growing source: the second night embeds only the new
images (dedup still sees all), writes a new dataset version whose parent is the first, continues
pretraining from the first night's teacher and evaluates it; a night with nothing new says so and
writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from data_catalog.catalog import Catalog
from tests.test_cli_curate import tiny_curation
from tests.test_eval_flow import _tiny_eval
from tests.test_flow_curate import _artifact

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]


def copy_pool(imagenette_dir: Path, dest: Path, first: int, last: int) -> list[Path]:
    """Images ``first:last`` of each of 4 classes copied into ``dest/<class>/``."""
    out = []
    for cls in sorted(p for p in imagenette_dir.iterdir() if p.is_dir())[:4]:
        (dest / cls.name).mkdir(parents=True, exist_ok=True)
        for img in sorted(cls.iterdir())[first:last]:
            out.append(Path(shutil.copy(img, dest / cls.name / img.name)))
    return out


def night_config(tmp_path: Path, source: Path, **pretrain: Any) -> dict[str, Any]:
    """Every stage, tiny: vit_pico embedders, 2 training steps, a 2-class evaluation benchmark."""
    return {
        **tiny_curation(tmp_path, source, "nightly", [6, 2], partition_size=8),
        "pretrain": {
            "enabled": True,
            "max_steps": 2,
            "nproc_per_node": 1,
            "train": {"train": {"batch_size_per_device": 8, "num_workers": 0}},
            **pretrain,
        },
        "evaluate": _tiny_eval(tmp_path),
    }


def rows(catalog: Catalog, table: str) -> list[dict[str, Any]]:
    """Every row of a catalog table, as dicts."""
    from data_catalog.datasets import DATASETS_SCHEMA
    from data_catalog.embeddings import EMBEDDINGS_SCHEMA
    from data_catalog.evaluations import EVALUATIONS_SCHEMA
    from data_catalog.images import IMAGES_SCHEMA
    from data_catalog.runs import RUNS_SCHEMA

    schemas = {"images": IMAGES_SCHEMA, "embeddings": EMBEDDINGS_SCHEMA, "datasets": DATASETS_SCHEMA,
               "runs": RUNS_SCHEMA, "evaluations": EVALUATIONS_SCHEMA}  # fmt: skip
    return list(catalog.read(table, schemas[table]).to_pylist())


def test_three_nights_on_a_growing_source(
    prefect_harness: None, imagenette_dir: Path, tmp_path: Path
) -> None:
    from data_catalog.datasets import get_dataset
    from flows.config import PipelineConfig
    from flows.pipeline import curate_and_pretrain

    source = tmp_path / "pool"
    old = copy_pool(imagenette_dir, source, 0, 6)
    cfg = PipelineConfig.model_validate(night_config(tmp_path, source))
    catalog = Catalog(cfg.catalog)
    first = curate_and_pretrain(cfg)
    assert first["dataset"] == "nightly:v1" and get_dataset(catalog, "nightly", 1).parents == []
    night_1 = {(e["image_id"], e["model_id"]) for e in rows(catalog, "embeddings")}

    # night 2: 8 new images and a new copy of an old one
    new = copy_pool(imagenette_dir, source, 6, 8)
    (source / "zz-later").mkdir()  # sorts after the original: identical files keep the smallest uri
    shutil.copy(old[0], source / "zz-later" / "copy-of-an-old-image.JPEG")
    second = curate_and_pretrain(cfg)
    assert second["dataset"] == "nightly:v2"
    assert get_dataset(catalog, "nightly", 2).parents == ["nightly:v1"]  # lineage
    embeddings = rows(catalog, "embeddings")
    assert len(embeddings) == len({(e["image_id"], e["model_id"]) for e in embeddings})  # unique keys
    images = {r["uri"]: r for r in rows(catalog, "images")}
    assert len(images) == len(old) + len(new) + 1
    copy = images[str(source / "zz-later" / "copy-of-an-old-image.JPEG")]
    assert copy["status"] == "duplicate" and copy["dup_of_uri"] == str(old[0])  # linked to the old one
    # only the new images were embedded, once per embedder (the copy has its original's id and vector)
    added = [e for e in embeddings if (e["image_id"], e["model_id"]) not in night_1]
    new_ids = {images[str(p)]["image_id"] for p in new if images[str(p)]["status"] != "rejected"}
    assert new_ids and {e["image_id"] for e in added} == new_ids and len(added) == 2 * len(new_ids)
    assert len({e["run_id"] for e in added}) == 1
    assert second["cluster"]["pool"] == sum(r["status"] == "accepted" for r in images.values())

    # pretraining continued from night 1's teacher: its start checkpoint, and the evaluation baseline
    run_1, run_2 = Path(first["run_dir"]), Path(second["run_dir"])
    launched = (run_2 / "config.yaml").read_text()
    assert f"init_backbone: {run_1 / 'teacher_backbone.safetensors'}" in launched
    assert "init_backbone: null" in (run_1 / "config.yaml").read_text()
    evaluations = rows(catalog, "evaluations")
    assert {r["run_id"] for r in evaluations} == {run_1.name, run_2.name}
    assert "start_checkpoint" in {r["subject"] for r in evaluations if r["run_id"] == run_2.name}
    assert [r["status"] for r in rows(catalog, "runs")] == ["completed", "completed"]

    # night 3: nothing new
    versions = {t: catalog.version(t) for t in ("images", "embeddings", "datasets", "runs", "evaluations")}
    third = curate_and_pretrain(cfg)
    assert third["unchanged_since"] == "nightly:v2" and third["new_partitions"] == 0
    assert {t: catalog.version(t) for t in versions} == versions  # nothing written
    [said] = _artifact("curate-nothing-new")
    assert "no new images since nightly:v2" in said.description
    assert third["run_dir"] == second["run_dir"] and "evaluations" not in third
    assert "pretrain_skipped" not in third

    # night 4: nothing new, but more steps asked for: the completed run stands, and the night says why
    more = PipelineConfig.model_validate(night_config(tmp_path, source, max_steps=4))
    fourth = curate_and_pretrain(more)
    assert fourth["run_dir"] == second["run_dir"] and {t: catalog.version(t) for t in versions} == versions
    assert "max_steps: 2 -> 4" in fourth["pretrain_skipped"], fourth["pretrain_skipped"]
    assert "output_root" in fourth["pretrain_skipped"]


def test_continue_from_none_starts_fresh(tmp_path: Path) -> None:
    """``continue_from: none`` (and a given ``model.init_backbone``) leave the start as configured."""
    from data_catalog.runs import register_run
    from flows.config import PipelineConfig
    from flows.nights import starting_point

    cfg = PipelineConfig.model_validate({"catalog": str(tmp_path / "cat"), "pretrain": {"enabled": True}})
    backbone = tmp_path / "teacher_backbone.safetensors"
    backbone.write_bytes(b"weights")
    model = json.dumps({"model": cfg.pretrain.train.model.model_dump(mode="json")})
    register_run(Catalog(cfg.catalog), {"run_id": "old", "status": "completed", "config_json": model,
                                        "backbone_uri": str(backbone), "kind": "pretrain"})  # fmt: skip
    run_dir = tmp_path / "runs" / "nightly-v2-demo"
    assert starting_point(cfg.catalog, cfg.pretrain, run_dir).train.model.init_backbone == str(backbone)
    fresh = cfg.pretrain.model_copy(update={"continue_from": "none"})
    assert starting_point(cfg.catalog, fresh, run_dir).train.model.init_backbone is None
    other = cfg.pretrain.train.model.model_copy(update={"patch_size": 16})  # another architecture
    cfg_other = cfg.pretrain.model_copy(
        update={"train": cfg.pretrain.train.model_copy(update={"model": other})}
    )
    assert starting_point(cfg.catalog, cfg_other, run_dir).train.model.init_backbone is None
