"""Train the shipped copy-detection descriptor (``assets/copy-descriptor/``) in one command.

    python -m benchmarks.train_copy_descriptor [--steps 2000] [--out assets/copy-descriptor] [--set k=v ...]

Trains ``python -m pretrain.train --config sscd-demo`` (the SSCD objective: InfoNCE on edited views
plus the KoLeo entropy term, Pizzi et al. 2022, arXiv:2202.10261) on photos the copy-detection
measurement never scores: the **calibration** split of ``../shared/data/raw-photos``
(``evaluation.copy_detection.split_photos``; the held-out split is never read here) and the 2,000
Imagenette photos of ``imagenette-train-subset.tar.gz``. The backbone starts from the shipped
bootstrap backbone (``sscd.init_backbone``) unless ``--set sscd.init_backbone=null``.

Writes ``OUT/copy_descriptor.safetensors`` (fp16 weights), ``OUT/metrics.json`` (the run's settings,
step count, wall time, first and last loss) and keeps the run directory under ``--run-dir`` if given.
Measure it with ``python -m benchmarks.measure_copy_detection --descriptor OUT``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_SETS = ["train.num_workers=0", f"sscd.init_backbone={REPO / 'assets' / 'bootstrap-backbone'}"]


def training_files(tmp: Path) -> list[Path]:
    """Calibration raw photos + the Imagenette subset (extracted under ``tmp``), sorted."""
    from evaluation.copy_detection import split_photos

    photos = split_photos((SHARED / "raw-photos" / "images").glob("*"))["calibration"]
    with tarfile.open(SHARED / "imagenette-train-subset.tar.gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.upper().endswith(".JPEG")]
        tar.extractall(tmp / "imagenette", members=members, filter="data")
    return sorted(photos) + sorted((tmp / "imagenette").rglob("*.JPEG"))


def export_fp16(run: Path, out: Path) -> Path:
    """The run's exported descriptor, its tensors cast to fp16, metadata kept, as ``out``'s file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from pretrain.sscd import DESCRIPTOR_FILE

    src = run / DESCRIPTOR_FILE
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k).half() if f.get_tensor(k).is_floating_point() else f.get_tensor(k)
                   for k in f.keys()}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / DESCRIPTOR_FILE), metadata=meta)
    return out / DESCRIPTOR_FILE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--out", default=str(REPO / "assets" / "copy-descriptor"))
    p.add_argument("--run-dir", default=None, help="keep the run here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the trainer")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    from benchmarks.common import write_file_shards

    sets = DEFAULT_SETS + args.overrides
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = training_files(tmp)
        index = write_file_shards(files, tmp / "shards", n_shards=8, name="copy-train")
        run = Path(args.run_dir or tmp / "run")
        cmd = [sys.executable, "-m", "pretrain.train", "--config", "sscd-demo", "--dataset", str(index),
               "--output-dir", str(run), "--max-steps", str(args.steps)]  # fmt: skip
        for item in sets:
            cmd += ["--set", item]
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, env=env)
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        path = export_fp16(run, Path(args.out))
    losses = [r for r in rows if "loss" in r]
    info = {
        "command": "python -m benchmarks.train_copy_descriptor " + " ".join(argv or sys.argv[1:]),
        "config": "sscd-demo", "overrides": sets, "steps": args.steps, "train_images": len(files),
        "wall_s": round(wall, 1), "first_loss": losses[0]["loss"], "last_loss": losses[-1]["loss"],
        "file": path.name, "bytes": path.stat().st_size,
    }  # fmt: skip
    (Path(args.out) / "metrics.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
