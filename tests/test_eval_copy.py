"""The copy-detection protocol of an evaluation (evaluation/copy_protocol.py): planted copies of real
photos, μAP for the backbone, its baselines and a copy descriptor, in the metrics document and table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.config import CopyDetectionConfig
from evaluation.copy_detection import PoolItem, micro_average_precision
from evaluation.copy_protocol import pool_metrics
from evaluation.evaluate import catalog_rows, evaluate_checkpoint
from tests.test_descriptors import TinySSCD, trace
from tests.test_eval_data import make_image_folder
from tests.test_eval_evaluate import _bench, pico_checkpoint, small_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace/save are deprecated


def _items(spec: list[tuple[str, str]]) -> list[PoolItem]:
    return [PoolItem(f"{src}#{edit}", src, edit, b"") for src, edit in spec]


def test_pool_metrics_against_a_direct_computation() -> None:
    pool = _items([("a", "original"), ("a", "hflip"), ("a", "exact"), ("b", "original"), ("b", "hflip")])
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5, 8))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    m = pool_metrics(vectors, pool, 0.99)
    # direct: all 10 pairs, positive when the sources agree; μAP ranks by cosine, ties negatives first
    sim = vectors @ vectors.T
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5)]
    score = np.array([sim[i, j] for i, j in pairs])
    positive = np.array([pool[i].source == pool[j].source for i, j in pairs])
    assert m["muap"] == pytest.approx(micro_average_precision(score, positive))
    # top1: a copy's original beats every image of the other photo
    for g, copies in {"hard": [1, 4], "exact": [2]}.items():
        wins = []
        for c in copies:
            own = sim[c, 0 if pool[c].source == "a" else 3]
            others = [sim[c, k] for k in range(5) if pool[k].source != pool[c].source]
            wins.append(all(o < own for o in others))
        assert m["top1"][g] == pytest.approx(np.mean(wins))
    # identical vectors for copies of one photo: perfect μAP and recall at any precision
    perfect = np.repeat(np.eye(2), [3, 2], axis=0)
    p = pool_metrics(perfect, pool, 0.99)
    assert p["muap"] == 1.0 and p["recall_at_p"]["recall"] == 1.0 and p["top1"]["hard"] == 1.0


def test_unknown_edits_and_missing_descriptor_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown edits \\['sepia'\\]"):
        CopyDetectionConfig(edits=["exact", "sepia"])
    from evaluation.copy_protocol import copy_descriptor_path

    with pytest.raises(ValueError, match="copy_detection.descriptor: .*nowhere.pt not found"):
        copy_descriptor_path(CopyDetectionConfig(descriptor=str(tmp_path / "nowhere.pt")))


def test_evaluation_reports_copy_detection_for_every_subject(tmp_path: Path, raw_photos: Path) -> None:
    desc = trace(TinySSCD(), tmp_path / "tiny_sscd.torchscript.pt")
    copy = {"photos": str(raw_photos), "max_photos": 4, "edits": ["exact", "resize_50", "hflip"],
            "descriptor": str(desc)}  # fmt: skip
    cfg = small_config(tmp_path, copy_detection=copy, linear={"enabled": False})
    train = make_image_folder(tmp_path / "train", 2, 4)
    test = make_image_folder(tmp_path / "test", 2, 2, seed=1)
    doc = evaluate_checkpoint(
        str(pico_checkpoint(tmp_path / "ck.safetensors")), _bench(tmp_path, train, test, cfg), cfg
    ).document
    assert doc["copy_detection_pool"]["photos"] == 4 and doc["copy_detection_pool"]["images"] == 16
    for subject in ("checkpoint", "random_init", "raw_pixels", "copy_descriptor"):
        cd = doc["copy_detection"] if subject == "checkpoint" else doc[subject]["copy_detection"]
        assert 0.0 <= cd["muap"] <= 1.0
        if subject in ("raw_pixels", "copy_descriptor"):  # (an untrained ViT maps every image alike)
            assert cd["top1"]["exact"] == 1.0  # a byte copy is its original's nearest image
        assert set(cd["top1"]) == {"exact", "easy", "hard"}
        assert doc["summary"][subject]["copy_detection"] == cd["muap"]
    assert doc["copy_descriptor"]["model_id"].startswith("sscd-torchscript/tiny_sscd@")
    rows = catalog_rows(doc, "eval-1")
    muap = {
        r["subject"]: r["value"] for r in rows if r["protocol"] == "copy_detection" and r["metric"] == "muap"
    }
    assert set(muap) == {"checkpoint", "random_init", "raw_pixels", "copy_descriptor"}


def test_copy_detection_is_skipped_with_a_note_without_photos(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DINOFLOW_SHARED_DATA", str(tmp_path / "absent"))
    cfg = small_config(tmp_path, copy_detection={"enabled": True}, linear={"enabled": False})
    train = make_image_folder(tmp_path / "train", 2, 4)
    test = make_image_folder(tmp_path / "test", 2, 2, seed=1)
    doc = evaluate_checkpoint(
        str(pico_checkpoint(tmp_path / "ck.safetensors")), _bench(tmp_path, train, test, cfg), cfg
    ).document
    assert (
        "copy_detection" not in doc
        and "set evaluate.copy_detection.photos" in doc["copy_detection_pool"]["skipped"]
    )
