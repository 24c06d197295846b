"""Exact resume: data order as a function of the step, atomic checkpoints, SIGKILL and restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from data_catalog.shard_index import read_index
from pretrain import checkpoint as ckpt
from pretrain.data import StepBatches, make_loader

REPO = Path(__file__).resolve().parents[1]


def write_shards(files: list[Path], out: Path, n_shards: int) -> Path:
    """Real images as webdataset tars + a shard index (the dataset-version index contract)."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in range(n_shards):
        name = f"shard-{s:06d}.tar"
        part = files[s::n_shards]
        with wds.TarWriter(str(out / name)) as w:
            for i, f in enumerate(part):
                w.write(
                    {
                        "__key__": f"{s:03d}_{i:05d}",
                        "jpg": f.read_bytes(),
                        "json": json.dumps({"src": f.name}).encode(),
                    }
                )
        entries.append(
            {"url": name, "num_samples": len(part), "bytes": (out / name).stat().st_size, "md5": ""}
        )
    index = out / "index.json"
    index.write_text(json.dumps({"name": "t", "version": 1, "num_samples": len(files), "shards": entries}))
    return index


@pytest.fixture(scope="module")
def small_index(imagenette_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = sorted(imagenette_dir.glob("*/*.JPEG"))[::10][:160]
    return write_shards(files, tmp_path_factory.mktemp("shards"), n_shards=4)


def _keys(index: Path, start: int, end: int, workers: int, rank: int = 0, world: int = 1) -> list[list[str]]:
    ds = StepBatches(
        read_index(str(index)).absolute_shards(),
        seed=3,
        phase="main",
        rank=rank,
        world_size=world,
        num_workers=workers,
        batch_size=6,
        iterations_per_epoch=5,
        start_step=start,
        end_step=end,
        transform=lambda im: torch.tensor(im.size),
        collate=lambda xs: {"sizes": torch.stack(xs)},
        shuffle_buffer=30,
    )
    batches = list(make_loader(ds, workers))
    assert [b["step"] for b in batches] == list(range(start, end))
    return [b["keys"] for b in batches]


@pytest.mark.parametrize("workers", [0, 2])
def test_data_order_is_a_function_of_the_step(small_index: Path, workers: int) -> None:
    full = _keys(small_index, 0, 13, workers)
    assert _keys(small_index, 7, 13, workers) == full[7:]  # resumed mid-epoch: same samples
    assert _keys(small_index, 10, 13, workers) == full[10:]  # resumed at an epoch boundary
    assert _keys(small_index, 0, 13, workers) == full  # deterministic
    other_rank = _keys(small_index, 0, 5, workers, rank=1, world=2)
    assert other_rank != full[:5]
    assert full[0] != full[5]  # a new epoch reshuffles


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)


def test_checkpoints_atomic_pruned_and_corrupt_ones_skipped(tmp_path: Path) -> None:
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters())
    for step in (2, 4, 6):
        model.lin.weight.data.fill_(step)
        ckpt.save(tmp_path, step, model, opt, {"phase": "main"}, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [4, 6]
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "step_00000008.pt.tmp").write_bytes(b"half-written")  # a crash mid-write
    (tmp_path / "step_00000006.pt").write_bytes(b"garbage")  # a damaged newest checkpoint
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        path, extras = ckpt.latest_valid(tmp_path)
    assert path.name == "step_00000004.pt" and extras["step"] == 4 and extras["phase"] == "main"
    restored = Tiny()
    ckpt.load(path, restored, torch.optim.AdamW(restored.parameters()))
    assert torch.all(restored.lin.weight == 4)


def _train_cmd(index: Path, out: Path, max_steps: int) -> list[str]:
    return [
        sys.executable, "-m", "pretrain.train", "--config", "demo", "--dataset", str(index),
        "--output-dir", str(out), "--max-steps", str(max_steps), "--checkpoint-every", "4",
        "--set", "train.log_every=1", "--set", "train.batch_size_per_device=8",
        "--set", "crops.local_number=2", "--set", "train.num_workers=1",
    ]  # fmt: skip


def _losses(run: Path) -> dict[int, list[float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: [r["loss"], r["dino"], r["ibot"], r["koleo"]] for r in rows}


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_the_losses(small_index: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 12
    ref = tmp_path / "uninterrupted"
    subprocess.run(_train_cmd(small_index, ref, steps), check=True, cwd=REPO, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(small_index, run, steps), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    metrics, deadline = run / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        lines = metrics.read_text().count("\n") if metrics.exists() else 0
        if lines >= 6 and (run / "checkpoints" / "step_00000004.pt").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(metrics.read_text().splitlines())
    assert 6 <= killed_at < steps
    assert (run / "checkpoints" / "step_00000004.pt").exists()

    done = subprocess.run(
        _train_cmd(small_index, run, steps), cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    got, want = _losses(run), _losses(ref)
    assert sorted(got) == list(range(1, steps + 1))  # lines after the checkpoint were rewritten once
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-6, rel=0), f"step {step}"
