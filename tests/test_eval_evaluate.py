"""A checkpoint evaluated end to end with its baselines: metrics document, feature cache, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evaluation.config import BenchmarkConfig, EvalConfig
from evaluation.datasets import load_benchmark
from evaluation.evaluate import evaluate_checkpoint
from pretrain.models import build_backbone
from pretrain.models.io import save_backbone
from pretrain.models.io_files import CheckpointError
from tests.test_eval_data import make_image_folder

SMALL = {"policy": "squash", "resize": 32, "crop": None}


def small_config(tmp_path: Path, **extra: object) -> EvalConfig:
    return EvalConfig.model_validate(
        {
            "cache_dir": str(tmp_path / "cache"),
            "knn": {"ks": [1, 5]},
            "linear": {"c_min_power": -2, "c_max_power": 2, "c_steps": 5, "max_iter": 200},
            "batch_size": 16,
            "copy_detection": {"enabled": False},  # its own tests below (it plants copies of real photos)
            **extra,
        }
    )


def pico_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    return save_backbone(build_backbone("vit_pico", img_size=32, patch_size=8), path)


@pytest.fixture()
def bench_dirs(tmp_path: Path) -> tuple[Path, Path]:
    return (make_image_folder(tmp_path / "train", 3, 8), make_image_folder(tmp_path / "test", 3, 4, seed=1))


def _bench(tmp_path: Path, train: Path, test: Path, cfg: EvalConfig):  # type: ignore[no-untyped-def]
    bc = BenchmarkConfig.model_validate({"train": str(train), "test": str(test), "transform": SMALL})
    return load_benchmark("tiny", bc, cfg.cache_root())


def test_metrics_document_has_every_protocol_and_baseline(tmp_path: Path, bench_dirs) -> None:  # type: ignore[no-untyped-def]
    cfg = small_config(tmp_path)
    ck = pico_checkpoint(tmp_path / "ck.safetensors")
    result = evaluate_checkpoint(str(ck), _bench(tmp_path, *bench_dirs, cfg), cfg)
    doc = result.document
    assert set(doc["knn"]["top1"]) == {"1", "5"} and 0 <= doc["linear"]["top1"] <= 1
    assert set(doc["retrieval"]) == {"recall@1", "recall@5"}
    assert doc["linear"]["features"] == "cls+patch_mean"
    for baseline in ("random_init", "raw_pixels"):
        assert set(doc[baseline]) == {"knn", "linear", "retrieval"}
    assert doc["raw_pixels"]["linear"]["features"] == "pixels"
    assert doc["raw_pixels"]["linear"]["top1"] == 1.0  # colour classes: pixels separate them
    assert doc["benchmark"]["n_train"] == 24 and doc["benchmark"]["n_test"] == 12
    assert doc["checkpoint"]["model_id"].startswith("vit_pico-p8@")
    assert result.main.test.cls.shape == (12, 128)


def test_feature_cache_is_reused_and_a_changed_checkpoint_never_is(tmp_path: Path, bench_dirs) -> None:  # type: ignore[no-untyped-def]
    cfg = small_config(tmp_path, baselines={"raw_pixels": False})
    bench = _bench(tmp_path, *bench_dirs, cfg)
    ck = pico_checkpoint(tmp_path / "ck.safetensors", seed=0)
    first = evaluate_checkpoint(str(ck), bench, cfg)
    assert first.outcomes["checkpoint"].cache_hits == 0
    again = evaluate_checkpoint(str(ck), bench, cfg)
    assert again.outcomes["checkpoint"].cache_hits == 2 and again.outcomes["random_init"].cache_hits == 2
    assert torch.equal(again.main.test.cls, first.main.test.cls)
    pico_checkpoint(ck, seed=1)  # same path and architecture, other weights
    changed = evaluate_checkpoint(str(ck), bench, cfg)
    assert changed.outcomes["checkpoint"].cache_hits == 0
    assert not torch.allclose(changed.main.test.cls, first.main.test.cls)
    assert changed.outcomes["random_init"].cache_hits == 2  # the baseline did not change


def test_bf16_features_are_close_to_fp32_and_cached_apart(tmp_path: Path, bench_dirs) -> None:  # type: ignore[no-untyped-def]
    """precision bf16 (autocast, as DINOv2 evaluates on GPUs) also runs on CPU; its features are other
    numbers, so a bf16 run never reads fp32 features from the cache (nor the reverse)."""
    bench_cfg = {"baselines": {"raw_pixels": False, "random_init": False}, "device": "cpu"}
    fp32, bf16 = (small_config(tmp_path, precision=p, **bench_cfg) for p in ("auto", "bf16"))
    bench = _bench(tmp_path, *bench_dirs, fp32)
    ck = str(pico_checkpoint(tmp_path / "ck.safetensors"))
    a = evaluate_checkpoint(ck, bench, fp32)
    b = evaluate_checkpoint(ck, bench, bf16)
    assert b.outcomes["checkpoint"].cache_hits == 0  # not the fp32 file
    assert not torch.equal(a.main.test.cls, b.main.test.cls)
    cos = torch.nn.functional.cosine_similarity(a.main.test.cls, b.main.test.cls, dim=1)
    assert cos.min() > 0.99, cos
    assert evaluate_checkpoint(ck, bench, bf16).outcomes["checkpoint"].cache_hits == 2
    assert evaluate_checkpoint(ck, bench, fp32).outcomes["checkpoint"].cache_hits == 2


@pytest.mark.parametrize("bf16", [False, True])
def test_the_features_kept_per_batch_own_only_their_rows(bf16: bool) -> None:
    """Extraction keeps each batch's features until the split is done: they must own just their
    [B, D] rows, not the [B, 1 + patches, D] token tensor they are sliced from (views of it made a
    60,000-image CIFAR-10 probe at 224 px hold 15 GB on its way to 23)."""
    from evaluation.features import BackboneExtractor

    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    cls, patch_mean = BackboneExtractor(model, bf16=bf16)(torch.randn(4, 3, 32, 32))
    for t in (cls, patch_mean):
        assert t is not None and t.dtype == torch.float32 and t.shape == (4, model.embed_dim)
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def test_corrupt_image_is_skipped_and_counted(tmp_path: Path, bench_dirs) -> None:  # type: ignore[no-untyped-def]
    train, test = bench_dirs
    (test / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = small_config(tmp_path, baselines={"random_init": False})
    doc = evaluate_checkpoint(
        str(pico_checkpoint(tmp_path / "ck.pt")), _bench(tmp_path, train, test, cfg), cfg
    ).document
    skipped = doc["benchmark"]["skipped"]
    assert skipped["test"] == 1 and skipped["train"] == 0
    assert skipped["files"][0]["path"].endswith("broken.jpg") and "Error" in skipped["files"][0]["reason"]
    assert doc["benchmark"]["n_test"] == 12  # the 12 good ones


def test_checkpoint_that_does_not_match_names_the_tensors(tmp_path: Path, bench_dirs) -> None:  # type: ignore[no-untyped-def]
    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    state = {k: v for k, v in model.state_dict().items() if k != "norm.weight"}
    torch.save(state, tmp_path / "broken.pth")
    cfg = small_config(tmp_path)
    with pytest.raises(CheckpointError, match=r"missing keys: \['norm.weight'\]"):
        evaluate_checkpoint(str(tmp_path / "broken.pth"), _bench(tmp_path, *bench_dirs, cfg), cfg)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="expected"):
        evaluate_checkpoint(str(tmp_path / "notes.txt"), _bench(tmp_path, *bench_dirs, cfg), cfg)


def test_start_checkpoint_is_evaluated_beside(tmp_path: Path, bench_dirs) -> None:  # type: ignore[no-untyped-def]
    cfg = small_config(tmp_path, baselines={"random_init": False, "raw_pixels": False})
    start = pico_checkpoint(tmp_path / "start.safetensors", seed=3)
    ck = pico_checkpoint(tmp_path / "ck.safetensors", seed=4)
    doc = evaluate_checkpoint(
        str(ck), _bench(tmp_path, *bench_dirs, cfg), cfg, start_checkpoint=str(start)
    ).document
    assert set(doc["start_checkpoint"]) == {"knn", "linear", "retrieval"}
    assert set(doc["summary"]) == {"checkpoint", "start_checkpoint"}


def test_document_rows_land_in_the_evaluations_table(tmp_path: Path, bench_dirs) -> None:  # type: ignore[no-untyped-def]
    from data_catalog.catalog import Catalog
    from data_catalog.evaluations import read_evaluations, record_evaluation
    from evaluation.evaluate import catalog_rows

    cfg = small_config(tmp_path, baselines={"random_init": False})
    doc = evaluate_checkpoint(
        str(pico_checkpoint(tmp_path / "ck.pt")), _bench(tmp_path, *bench_dirs, cfg), cfg
    ).document
    rows = catalog_rows(doc, "e1", run_id="r1")
    # knn at 2 ks, linear, recall@1 and @5, for the checkpoint and the pixels
    assert len(rows) == 2 * 5 and {r["subject"] for r in rows} == {"checkpoint", "raw_pixels"}
    record_evaluation(Catalog(str(tmp_path / "cat")), rows)
    table = read_evaluations(Catalog(str(tmp_path / "cat")))
    linear = [r for r in table.to_pylist() if r["protocol"] == "linear" and r["subject"] == "checkpoint"]
    assert linear[0]["value"] == doc["linear"]["top1"] and linear[0]["run_id"] == "r1"
    assert linear[0]["checkpoint_sha256"] == doc["checkpoint"]["sha256"]


def test_official_layout_checkpoint_is_evaluated(tmp_path: Path, bench_dirs) -> None:  # type: ignore[no-untyped-def]
    """A bare state dict as facebookresearch/dinov2 releases it (dinov2_vits14_pretrain.pth's layout)."""
    torch.manual_seed(0)
    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    path = save_backbone(model, tmp_path / "dinov2_pico_pretrain.pth", layout="official")
    cfg = small_config(tmp_path, baselines={"random_init": False, "raw_pixels": False})
    result = evaluate_checkpoint(str(path), _bench(tmp_path, *bench_dirs, cfg), cfg)
    assert result.document["checkpoint"]["model_id"].startswith("vit_pico-p8@")
    with torch.inference_mode():
        x = torch.zeros(1, 3, 32, 32)
        assert torch.allclose(result.main.subject.model(x), model.eval()(x), atol=1e-5)  # type: ignore[misc]


@pytest.mark.slow
def test_shipped_backbone_beats_its_random_init_on_imagenette(shared_data: Path, tmp_path: Path) -> None:
    """Real photos, the built-in fixed hold-out, at the backbone's 64 px: trained features help."""
    from evaluation.config import REPO

    cfg = small_config(tmp_path, knn={"ks": [20]}, baselines={"raw_pixels": False},
                       benchmarks={"nette64": {"train": "${shared}/imagenette-train-subset.tar.gz",
                                               "holdout_fraction": 0.2, "transform": {"policy": "squash", "resize": 64, "crop": None}}})  # fmt: skip
    bench = load_benchmark("nette64", cfg.benchmark("nette64"), cfg.cache_root())
    doc = evaluate_checkpoint(str(REPO / "assets" / "bootstrap-backbone"), bench, cfg).document
    assert doc["benchmark"]["n_train"] == 1600 and doc["benchmark"]["n_test"] == 400
    assert doc["knn"]["top1"]["20"] > doc["random_init"]["knn"]["top1"]["20"] + 0.05
    assert doc["linear"]["top1"] > doc["random_init"]["linear"]["top1"]
