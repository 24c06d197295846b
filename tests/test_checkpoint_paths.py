"""Checkpoints as users hand them over: formats told by content (not suffix), a directory holding one
checkpoint standing for it, and every wrong kind of path a one-line error with exit code 1 from
``dinoflow model`` (never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flows.cli_model import model_app
from pretrain.models import build_backbone
from pretrain.models.io import CheckpointError, describe, load_backbone, save_backbone
from pretrain.models.io_files import sniff

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = ROOT / "assets" / "bootstrap-backbone"
EXPECTED = "expected a safetensors file, a torch checkpoint (.pth) or a Hugging Face Dinov2 directory"


def _model():
    torch.manual_seed(0)
    return build_backbone("vit_pico", patch_size=14, img_size=56).eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _cli(*args: str):
    return CliRunner().invoke(model_app, [str(a) for a in args])


def _assert_one_line_error(result, path: Path, found: str) -> None:
    """exit code 1, no exception escaped, and exactly one line: ``error: PATH: expected ...; found ...``."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: expected ") and found in lines[0], lines[0]


def _hf_dir(tmp_path: Path, maker: str) -> Path:
    """An HF Dinov2 directory written by transformers itself, or by our own export."""
    out = tmp_path / f"hf-{maker}"
    if maker == "ours":
        save_backbone(_model(), out, layout="hf")
        return out
    transformers = pytest.importorskip(
        "transformers", reason="transformers (a dev dependency) is not installed"
    )
    config = transformers.Dinov2Config(
        hidden_size=96, num_hidden_layers=2, num_attention_heads=3, patch_size=14, image_size=56
    )
    torch.manual_seed(0)
    transformers.Dinov2Model(config).save_pretrained(out)
    return out


@pytest.mark.parametrize("maker", ["transformers", "ours"])
def test_convert_hf_dir_to_dinoflow_and_read_back(tmp_path: Path, maker: str) -> None:
    hf = _hf_dir(tmp_path, maker)
    out = tmp_path / "out"  # no suffix: the command; it used to be read back with torch.load
    result = _cli("convert", hf, out, "--to", "dinoflow")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out} (dinoflow, ")
    assert sniff(out)[0] == "safetensors"
    assert _same_weights(load_backbone(out), load_backbone(hf))
    info = json.loads(_cli("info", out, "--json").output)
    assert info["layout"] == "dinoflow" and info["file"] == str(out)


@pytest.mark.parametrize(
    "to,name,container",
    [
        ("dinoflow", "b.safetensors", "safetensors"),
        ("dinoflow", "b", "safetensors"),
        ("dinoflow", "b.pt", "torch"),
        ("dinoflow", "b.bin", "torch"),
        ("official", "o.pth", "torch"),
        ("official", "o", "torch"),
        ("official", "o.safetensors", "safetensors"),
        ("hf", "h", "hf"),
    ],
)
def test_convert_to_each_layout_with_and_without_its_suffix(
    tmp_path: Path, to: str, name: str, container: str
) -> None:
    model = _model()
    src = save_backbone(model, tmp_path / "src.safetensors")
    dst = tmp_path / name
    result = _cli("convert", src, dst, "--to", to)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {dst} ({to}, vit_pico, ")
    if container == "hf":
        assert (dst / "config.json").is_file() and (dst / "model.safetensors").is_file()
    else:  # the content matches a suffix that names a format, so other tools read it too
        assert sniff(dst)[0] == container
        if container == "torch":
            assert isinstance(torch.load(dst, map_location="cpu", weights_only=True), dict)
        else:
            from safetensors.torch import load_file

            assert load_file(str(dst))
    assert describe(dst)["layout"] == to
    overrides = {"interpolate_offset": 0.0, "interpolate_antialias": True} if to == "official" else {}
    back = load_backbone(dst, **overrides)  # the official layout has no room for the resize mode
    assert _same_weights(back, model) and back.arch_kwargs == model.arch_kwargs


def test_hf_destination_that_names_a_file_is_refused(tmp_path: Path) -> None:
    src = save_backbone(_model(), tmp_path / "src.safetensors")
    result = _cli("convert", src, tmp_path / "h.safetensors", "--to", "hf")
    assert result.exit_code == 1 and "layout 'hf' writes a directory" in result.output
    assert not (tmp_path / "h.safetensors").exists()
    (tmp_path / "d").mkdir()
    result = _cli("convert", src, tmp_path / "d", "--to", "dinoflow")
    assert result.exit_code == 1 and "writes one file; found a directory" in result.output


def test_info_and_convert_on_the_bootstrap_backbone_directory(tmp_path: Path) -> None:
    if not (BOOTSTRAP / "backbone.safetensors").is_file():
        pytest.skip(f"{BOOTSTRAP}/backbone.safetensors is not in this checkout")
    result = _cli("info", BOOTSTRAP, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["file"] == str(BOOTSTRAP / "backbone.safetensors") and info["path"] == str(BOOTSTRAP)
    assert info["layout"] == "dinoflow" and info["arch"] == "vit_pico" and info["params"] == 1_224_704
    result = _cli("convert", BOOTSTRAP, tmp_path / "boot.pth", "--to", "official")
    assert result.exit_code == 0, result.output
    direct = load_backbone(BOOTSTRAP / "backbone.safetensors")
    assert _same_weights(load_backbone(BOOTSTRAP), direct)
    assert _same_weights(load_backbone(tmp_path / "boot.pth", interpolate_antialias=True), direct)


def test_a_run_like_directory_resolves_to_its_one_checkpoint_and_several_are_listed(tmp_path: Path) -> None:
    model = _model()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "config.yaml").write_text("seed: 0\n")
    save_backbone(model, run / "teacher_backbone.safetensors")
    (run / "export").mkdir()  # subfolders are not searched
    assert _same_weights(load_backbone(run), model)
    save_backbone(model, run / "other.pth", layout="official")
    with pytest.raises(CheckpointError, match=r"2 checkpoints \(other.pth, teacher_backbone.safetensors\)"):
        load_backbone(run)
    result = _cli("info", run)
    assert result.exit_code == 1 and result.output.count("\n") == 1


def _wrong_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the error must say was found)."""
    from safetensors.torch import save_file

    (tmp_path / "notes.bin").write_text("these are my weights, promise\n")
    (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    save_file({"classifier.weight": torch.zeros(2, 3)}, str(tmp_path / "head.safetensors"))
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("# not a model\n")
    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as z:
        z.writestr("a.txt", "x")
    torch.save({"model": {"teacher.backbone.cls_token": torch.zeros(1)}, "rng": np.random.get_state()},
               tmp_path / "step_00000010.pt")  # fmt: skip
    hf = tmp_path / "hf-weights-only"
    save_backbone(_model(), hf, layout="hf")
    (hf / "config.json").unlink()
    return {
        "text": (tmp_path / "notes.bin", "found a text file"),
        "random bytes": (tmp_path / "random.pth", "found unrecognised binary data"),
        "empty file": (tmp_path / "empty.safetensors", "found an empty file"),
        "not a backbone": (tmp_path / "head.safetensors", "found a safetensors file of 1 tensor(s) without"),
        "empty dir": (tmp_path / "empty-dir", "found an empty directory"),
        "dir without checkpoint": (tmp_path / "docs", "found a directory without a checkpoint (1 files: README.md)"),
        "zip": (tmp_path / "archive.pt", "found a zip archive that is not a torch checkpoint"),
        "training checkpoint": (tmp_path / "step_00000010.pt", "found a dinoflow training checkpoint"),
        "hf weights alone": (hf / "model.safetensors", "weights of a Hugging Face model without its config.json"),
    }  # fmt: skip


def test_wrong_kinds_of_path_are_one_line_errors(tmp_path: Path) -> None:
    for name, (path, found) in _wrong_paths(tmp_path).items():
        for args in (("info", path), ("convert", path, tmp_path / f"{path.name}.out", "--to", "dinoflow")):
            result = _cli(*args)
            try:
                _assert_one_line_error(result, path, found)
            except AssertionError as exc:
                raise AssertionError(f"{name} ({args[0]}): {exc}") from None
        assert not (tmp_path / f"{path.name}.out").exists()
    result = _cli("info", tmp_path / "missing.pth")
    assert (
        result.exit_code == 1
        and result.output.strip() == f"error: {tmp_path / 'missing.pth'}: no such file or directory"
    )
    src = save_backbone(_model(), tmp_path / "ok.pth", layout="official")
    result = _cli("info", src, "--layout", "hf")
    assert result.exit_code == 1 and "layout 'hf' was asked for; found a torch file" in result.output


def test_the_installed_command_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "x.bin"
    bad.write_text("hello\n")
    proc = subprocess.run(
        [sys.executable, "-c", "from flows.cli import main; main()", "model", "info", str(bad)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {bad}: {EXPECTED}; found a text file"
