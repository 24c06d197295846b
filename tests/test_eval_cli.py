"""``dinoflow evaluate`` on bad input: one line on stderr and an exit code, before any work starts
(these stop in the pre-flight check, so no Prefect server is started)."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from flows.cli import app
from pretrain.models import build_backbone
from tests.test_eval_data import make_image_folder
from tests.test_eval_evaluate import pico_checkpoint


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["evaluate", *args])
    return result.exit_code, result.output


def test_mismatched_checkpoint_names_what_did_not_match(tmp_path: Path) -> None:
    state = build_backbone("vit_pico", img_size=32, patch_size=8).state_dict()
    state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:, :64]
    torch.save(state, tmp_path / "bad.pth")
    train = make_image_folder(tmp_path / "train", 2, 2)
    code, out = run("--checkpoint", str(tmp_path / "bad.pth"), "--train", str(train), "--test", str(train))
    assert code == 1 and "shape mismatches" in out and "blocks.0.attn.qkv.weight" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1


def test_missing_checkpoint_and_unknown_run(tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", 2, 2)
    code, out = run("--checkpoint", str(tmp_path / "nope.pt"), "--train", str(train), "--test", str(train))
    assert code == 1 and "no such file or directory" in out
    code, out = run("--checkpoint", "run-42", "--catalog", str(tmp_path / "cat"), "--benchmark", "cifar10")
    assert code == 1 and "neither a path nor a run" in out and "known runs: none" in out


def test_empty_split_and_unknown_class_stop_before_work(tmp_path: Path) -> None:
    ck = str(pico_checkpoint(tmp_path / "ck.safetensors"))
    train = make_image_folder(tmp_path / "train", 2, 2)
    (tmp_path / "empty" / "class_0").mkdir(parents=True)
    code, out = run("--checkpoint", ck, "--train", str(train), "--test", str(tmp_path / "empty"))
    assert code == 1 and "test split" in out and "is empty" in out
    other = make_image_folder(tmp_path / "other", 3, 1)
    code, out = run("--checkpoint", ck, "--train", str(train), "--test", str(other))
    assert code == 1 and "test classes ['class_2'] are not among the train classes" in out


def test_usage_mistakes_are_config_errors(tmp_path: Path) -> None:
    ck = str(pico_checkpoint(tmp_path / "ck.safetensors"))
    code, out = run("--checkpoint", ck, "--benchmark", "cifar100")
    assert code == 2 and "unknown benchmark 'cifar100'" in out
    code, out = run("--checkpoint", ck, "--train", str(tmp_path))
    assert code == 2 and "needs both --train and --test" in out
    code, out = run("--checkpoint", ck)
    assert code == 2 and "either --benchmark NAME or both --train and --test" in out
    code, out = run("--checkpoint", ck, "--benchmark", "cifar10", "--set", "evaluate.linear.c_stpes=3")
    assert (
        code == 2
        and "unknown config key 'evaluate.linear.c_stpes' (did you mean 'evaluate.linear.c_steps'" in out
    )


def test_a_run_id_resolves_to_its_exported_backbone(tmp_path: Path) -> None:
    import pytest

    from data_catalog.catalog import Catalog
    from data_catalog.runs import register_run
    from evaluation.checkpoints import resolve_checkpoint
    from pretrain.models.io_files import CheckpointError

    catalog = Catalog(str(tmp_path / "cat"))
    ck = pico_checkpoint(tmp_path / "run" / "teacher_backbone.safetensors")
    register_run(catalog, {"run_id": "r1", "status": "completed", "backbone_uri": str(ck)})
    register_run(catalog, {"run_id": "r2", "status": "running"})
    assert resolve_checkpoint("r1", catalog.root) == (str(ck), "r1")
    assert resolve_checkpoint(str(ck), catalog.root) == (str(ck), None)  # a path stays a path
    with pytest.raises(CheckpointError, match="run 'r2' has no exported backbone yet \\(status running\\)"):
        resolve_checkpoint("r2", catalog.root)
