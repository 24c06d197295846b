"""``dinoflow curate``'s curation flags and pre-flight: bad input is one line (exit 2) before any work;
good flags reach the flow's config. Also the tiny embedders the flow tests use."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from flows.cli import app

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace/save are deprecated


class ThumbnailDescriptor(nn.Module):
    """A copy descriptor that needs no training: the 8 x 8 colour thumbnail made mirror-symmetric and
    centred, so a mirrored (or re-brightened) copy has cosine ~1 to its original while different
    photos do not. Good enough to plant copies that pHash misses (a mirror flips pHash's bits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = F.adaptive_avg_pool2d(x, 8)
        t = t + t.flip(-1)
        t = t - t.mean(dim=(1, 2, 3), keepdim=True)
        return t.flatten(1)


def tiny_copy_descriptor(path: Path) -> Path:
    """A TorchScript copy descriptor (``sscd-torchscript`` kind) at ``path``."""
    traced = torch.jit.trace(ThumbnailDescriptor().eval(), torch.randn(2, 3, 32, 32))
    torch.jit.save(traced, str(path))
    return path


def tiny_backbone(path: Path, seed: int = 0) -> Path:
    """A random-init vit_pico backbone at 32 px (a semantic embedder of the right kind, fast on CPU)."""
    from pretrain.models import build_backbone
    from pretrain.models.io import save_backbone

    torch.manual_seed(seed)
    return save_backbone(build_backbone("vit_pico", img_size=32, patch_size=8).eval(), path)


def tiny_curation(tmp: Path, source: Path, name: str, n_clusters: list[int], **embed: Any) -> dict[str, Any]:
    """The curation part of a pipeline config, every stage on, tiny: in-process Dask, random-init
    embedders at 32 px, two cluster levels, small shards (``embed``: more ``curate.embed`` keys)."""
    return {
        "catalog": str(tmp / "catalog"),
        "source": str(source),
        "dask_address": "sync",
        "dataset": {"name": name, "shard_max_bytes": 200_000},
        "curate": {
            "embed": {
                "semantic_checkpoint": str(tiny_backbone(tmp / "bb.safetensors")),
                "copy_checkpoint": str(tiny_copy_descriptor(tmp / "copy.pt")),
                **embed,
            },  # fmt: skip
            "cluster": {"n_clusters": n_clusters, "resampling_steps": [1], "sample_sizes": [2]},
        },
    }


def image_folder(root: Path, n: int = 2) -> Path:
    (root / "cls").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (40, 40), (40 * i, 90, 200)).save(root / "cls" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def embedders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("embedders")
    return {"semantic": tiny_backbone(root / "bb.safetensors"), "copy": tiny_copy_descriptor(root / "c.pt")}


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def _base(tmp_path: Path, embedders: dict[str, Path]) -> list[str]:
    (tmp_path / "in").mkdir(exist_ok=True)
    return [
        "curate", "--source", str(tmp_path / "in"), "--catalog", str(tmp_path / "cat"),
        "--embed-checkpoint", str(embedders["semantic"]), "--copy-checkpoint", str(embedders["copy"]),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--eval-set", "{tmp}/bench"], "expected NAME=PATH"),
        (["--eval-set", "=x"], "expected NAME=PATH"),
        (["--eval-set", "a b={tmp}/bench"], "may hold only letters"),
        (["--eval-set", "b={tmp}/bench", "--eval-set", "b={tmp}/bench"], "'b' is given twice"),
        (["--eval-set", "cifar={tmp}/missing"], "--eval-set cifar: {tmp}/missing does not exist"),
        (["--eval-set", "empty={tmp}/empty"], "--eval-set empty: {tmp}/empty holds no image files"),
        (["--eval-set", "notes={tmp}/notes.txt"], "is neither a directory nor a tar"),
        (["--eval-set", "t={tmp}/empty.tar"], "--eval-set t: {tmp}/empty.tar holds no image files"),
        (
            ["--embed-checkpoint", "{tmp}/nope.safetensors"],
            "--embed-checkpoint: {tmp}/nope.safetensors does not exist",
        ),
        (["--copy-checkpoint", "{semantic}"], "cannot be the copy embedder"),
        (["--embed-checkpoint", "{copy}"], "cannot be the semantic embedder"),
        (["--copy-checkpoint", "{tmp}/notes.txt"], "--copy-checkpoint: "),
        (["--set", "curate.sample.mode=retrieval"], "needs curate.sample.retrieval_seed_set"),
        (["--set", "curate.sample.target_size=5", "--set", "dataset.max_samples=7"], "disagree"),
    ],
)
def test_bad_curation_input_is_one_line_before_any_work(
    tmp_path: Path, embedders: dict[str, Path], extra: list[str], expected: str
) -> None:
    image_folder(tmp_path / "bench")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "readme.txt").write_text("no images here")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with tarfile.open(tmp_path / "empty.tar", "w") as tar:
        tar.add(tmp_path / "notes.txt", arcname="cls/notes.txt")
    subs = {
        "{tmp}": str(tmp_path),
        "{semantic}": str(embedders["semantic"]),
        "{copy}": str(embedders["copy"]),
    }
    args = []
    for a in _base(tmp_path, embedders) + extra:
        for key, value in subs.items():
            a = a.replace(key, value)
        args.append(a)
    code, output = _invoke(args)
    for key, value in subs.items():
        expected = expected.replace(key, value)
    assert code == 2, output
    assert output.startswith("error: ") and len(output.strip().splitlines()) == 1, output
    assert expected in output and "Traceback" not in output
    assert not (tmp_path / "cat").exists(), "nothing started"


def test_run_takes_the_same_flags_and_checks(tmp_path: Path, embedders: dict[str, Path]) -> None:
    args = ["run", "--catalog", str(tmp_path / "cat"), "--copy-checkpoint", str(embedders["semantic"])]
    code, output = _invoke(args)
    assert code == 2 and "cannot be the copy embedder" in output and len(output.strip().splitlines()) == 1
    code, output = _invoke(["run", "--catalog", str(tmp_path / "cat"), "--eval-set", "nope"])
    assert code == 2 and "expected NAME=PATH" in output
    assert not (tmp_path / "cat").exists()


def test_curation_flags_reach_the_flow_config(
    tmp_path: Path, embedders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.curate
    import flows.report

    seen: dict[str, Any] = {}
    monkeypatch.setattr(flows.curate, "curate", lambda cfg: seen.setdefault("cfg", cfg) and {})
    monkeypatch.setattr(flows.report, "print_summary", lambda *a, **k: None)
    image_folder(tmp_path / "bench")
    with tarfile.open(tmp_path / "bench.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "bench", arcname="bench")
    (tmp_path / "p.yaml").write_text(f"curate:\n  leaks:\n    eval_sets:\n      file: {tmp_path / 'bench'}\n")
    args = [
        *_base(tmp_path, embedders), "--config", str(tmp_path / "p.yaml"),
        "--eval-set", f"dir={tmp_path / 'bench'}", "--eval-set", f"tar={tmp_path / 'bench.tar.gz'}",
    ]  # fmt: skip
    code, output = _invoke(args)
    assert code == 0, output
    cfg = seen["cfg"].curate
    assert cfg.embed.semantic_checkpoint == str(embedders["semantic"])
    assert cfg.embed.copy_checkpoint == str(embedders["copy"])
    assert cfg.leaks.eval_sets == {
        "file": str(tmp_path / "bench"),  # the file's eval sets are kept, the flags' added
        "dir": str(tmp_path / "bench"),
        "tar": str(tmp_path / "bench.tar.gz"),
    }


def test_relative_paths_are_made_absolute(
    tmp_path: Path, embedders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli_curate import curate_flags

    monkeypatch.chdir(tmp_path)
    image_folder(tmp_path / "bench")
    flags = curate_flags("bb.safetensors", None, ["b=bench"])
    assert flags == {
        "curate": {
            "embed": {"semantic_checkpoint": str(tmp_path / "bb.safetensors")},
            "leaks": {"eval_sets": {"b": str(tmp_path / "bench")}},
        }
    }
    assert curate_flags(None, None, None) == {}


def test_export_of_an_unknown_or_absent_table_is_one_line(tmp_path: Path) -> None:
    code, output = _invoke(["catalog", "export", "imags", "--catalog", str(tmp_path), "--out", "x.csv"])
    assert code == 2 and output.startswith("error: unknown table 'imags'") and "images" in output
    code, output = _invoke(["catalog", "export", "datasets", "--catalog", str(tmp_path), "--out", "x.csv"])
    assert code == 2 and "has no datasets table yet" in output
    assert len(output.strip().splitlines()) == 1


def test_embeddings_and_clusters_export_like_the_images_table(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from data_catalog.catalog import Catalog
    from data_catalog.clusters import write_clusters
    from data_catalog.embeddings import write_embeddings

    catalog = Catalog(str(tmp_path / "cat"))
    vectors = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
    write_embeddings(catalog, "m/x@1", ["a", "b"], vectors, "run-1")
    write_clusters(catalog, "run-1", "m/x@1", ["a", "b"], np.array([[0, 0], [1, 0]]))
    code, output = _invoke(
        ["catalog", "export", "embeddings", "--catalog", catalog.root, "--out", str(tmp_path / "e.parquet")]
    )
    assert code == 0 and "wrote 2 rows of embeddings" in output, output
    table = pq.read_table(tmp_path / "e.parquet").sort_by("image_id")
    got = np.array(table.column("vector").to_pylist(), np.float32)
    np.testing.assert_allclose(got, [[0.6, 0.8], [1.0, 0.0]], atol=1e-3)  # stored L2-normalised
    code, output = _invoke(
        ["catalog", "export", "clusters", "--catalog", catalog.root, "--out", str(tmp_path / "c.csv")]
    )
    assert code == 0 and "wrote 2 rows of clusters" in output, output
    rows = pacsv.read_csv(tmp_path / "c.csv").sort_by("image_id").to_pylist()
    assert [r["cluster_ids"] for r in rows] == ["[0, 0]", "[1, 0]"]  # lists as JSON in CSV
