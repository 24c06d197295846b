"""Ablations of the bootstrap recipe (issue 11 A): train the demo preset on CIFAR-10, then kNN.

Each run trains ``python -m pretrain.train --config demo`` (the project's own loop, in a child
process) for a fixed number of steps on a dataset version of the 50,000 CIFAR-10 train images from
``../shared/data``, with ``--set`` overrides on top of the demo preset, then measures the teacher's
CIFAR-10 kNN in issue 11's protocol: L2-normalised class tokens, weighted vote with T = 0.07, the
first 1,000 train images of each class as the bank, all 10,000 test images, images resized to the
model's global crop size (``evaluation.knn``). Raw pixels in the same protocol (32 px, the images'
own size: [0, 1] values, per-image mean-centred, ImageNet-normalised) are measured once and cached.

    .venv/bin/python -m benchmarks.ablate_bootstrap --steps 160 --set model.layerscale=0
    .venv/bin/python -m benchmarks.ablate_bootstrap --pixels-only

The step budget is ``--steps`` in epochs of ``--epoch-steps`` (the demo preset's 40), so every
schedule (lr warmup: 1 epoch, teacher temperature warmup: 2 epochs, frozen last layer: half an epoch,
cosine decays) is compressed into the same budget for every run. One JSON line per run is printed
and appended to ``--out``: overrides, steps, wall seconds (training, evaluation), kNN for k in 10,
20, 100, 200, the last logged DINO/iBOT/KoLeo terms and their mean over the last quarter of the
run, ln(prototypes), the machine. A run directory that already holds a finished run is evaluated
again without training; one with checkpoints resumes (``pretrain.train``'s exact resume).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPO, machine
from data_catalog.settings import ConfigError
from pretrain.config import TrainConfig, load_config

KS = (10, 20, 100, 200)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BUDGET_KEYS = ("train.epochs", "train.iterations_per_epoch")  # set by --steps / --epoch-steps


def shared_data() -> Path:
    """``$DINOFLOW_SHARED_DATA`` or ``../shared/data``; a one-line error when the archives are absent."""
    data = Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (data / "cifar10-train.tar.gz").is_file() or not (data / "cifar10-test.tar.gz").is_file():
        raise ConfigError(
            f"{data} lacks cifar10-train.tar.gz / cifar10-test.tar.gz (set DINOFLOW_SHARED_DATA)"
        )
    return data


def extracted(data: Path, workdir: Path, split: str) -> Path:
    """``workdir/src/<split>/<class>/NNNN.jpg``, extracted from ``cifar10-<split>.tar.gz`` once."""
    if not (workdir / "src" / split).is_dir():
        with tarfile.open(data / f"cifar10-{split}.tar.gz") as tar:
            tar.extractall(workdir / "src", filter="data")
    return workdir / "src" / split


def train_dataset(data: Path, workdir: Path) -> tuple[str, str]:
    """(catalog root, dataset ref) of all CIFAR-10 train images as one dataset version, written once
    with the project's dataset-version writer (no curation: the 50,000 images as they are)."""
    import pyarrow as pa

    from curation.dataset_version import create_dataset_version
    from data_catalog.catalog import Catalog

    marker = workdir / "dataset.json"
    if marker.exists():
        found = json.loads(marker.read_text())
        return found["catalog"], found["ref"]
    files = sorted(extracted(data, workdir, "train").glob("*/*.jpg"))
    catalog = Catalog(str(workdir / "catalog"))
    selection = pa.table({"image_id": [f"{f.parent.name}-{f.stem}" for f in files],
                          "uri": [str(f) for f in files]})  # fmt: skip
    record = create_dataset_version(
        catalog, "cifar10train", selection=selection, shard_max_samples=2000, workers=2
    )
    marker.write_text(json.dumps({"catalog": catalog.root, "ref": record.ref, "images": len(files)}))
    return catalog.root, record.ref


def budget(steps: int, epoch_steps: int) -> list[str]:
    """The overrides that make the run ``steps`` long, in epochs of ``epoch_steps``."""
    if steps < 1 or epoch_steps < 1 or steps % epoch_steps:
        raise ConfigError(f"--steps {steps} must be a positive multiple of --epoch-steps {epoch_steps}")
    return [f"train.epochs={steps // epoch_steps}", f"train.iterations_per_epoch={epoch_steps}",
            f"train.checkpoint_every={epoch_steps}"]  # fmt: skip


def resolve(steps: int, epoch_steps: int, overrides: list[str]) -> tuple[list[str], TrainConfig]:
    """All ``--set`` items of the run and its validated config; a mistake is a one-line ConfigError."""
    for item in overrides:
        if item.split("=", 1)[0].strip() in BUDGET_KEYS:
            raise ConfigError(f"--set {item}: the step budget is --steps / --epoch-steps, not {BUDGET_KEYS}")
    settings = [*budget(steps, epoch_steps), *overrides]
    return settings, load_config("demo", settings)


def run_name(steps: int, overrides: list[str], threads: int | None) -> str:
    """A readable, unique directory name for one run's settings."""
    key = json.dumps([steps, overrides, threads])
    slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", "_".join(o.split(".")[-1] for o in overrides))[:60]
    return f"s{steps}-{slug or 'demo'}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def train(catalog: str, ref: str, run_dir: Path, settings: list[str], threads: int | None) -> float:
    """Train with ``python -m pretrain.train`` in a child process; its wall seconds (cached in the run dir)."""
    from pretrain import launch
    from pretrain.metrics import parse_metrics

    wall_file = run_dir / "ablate_wall.json"
    if (run_dir / "teacher_backbone.safetensors").exists() and wall_file.exists():
        print(f"{run_dir}: finished run found, evaluating it again", flush=True)
        return float(json.loads(wall_file.read_text())["train_wall_s"])
    cmd = [sys.executable, "-m", "pretrain.train", "--config", "demo", "--catalog", catalog, "--dataset", ref,
           "--output-dir", str(run_dir), *sum((["--set", s] for s in settings), [])]  # fmt: skip
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None

    def show(line: str) -> None:
        record = parse_metrics(line)
        if record is None or record["step"] % 20 == 0 or record["step"] == record.get("total_steps"):
            print(launch.format_metrics(record) if record else line, flush=True)

    clock = time.perf_counter()
    code, tail = launch.run_streaming(cmd, on_line=show, env=env)
    wall = time.perf_counter() - clock
    if code != 0:
        raise RuntimeError(f"training failed (exit {code}):\n" + "\n".join(tail[-30:]))
    wall_file.write_text(json.dumps({"train_wall_s": wall}))
    return wall


def knn(model: torch.nn.Module, data: Path, workdir: Path, size: int, bank: int, test: int | None) -> dict:
    """CIFAR-10 kNN accuracy {k: 0..1}: ``bank`` train images per class -> ``test`` per class (None: all)."""
    from evaluation.knn import extract_features, image_folder_loader, knn_accuracy

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    train_dir, test_dir = extracted(data, workdir, "train"), extracted(data, workdir, "test")
    xtr, ytr = extract_features(model, image_folder_loader(str(train_dir), size, size, 256, bank))
    xte, yte = extract_features(model, image_folder_loader(str(test_dir), size, size, 256, test))
    return {str(k): round(v, 4) for k, v in knn_accuracy(xtr, ytr, xte, yte, KS).items()}


class Pixels(torch.nn.Module):
    """Raw-pixel features [B, 3 H W] from ImageNet-normalised images [B, 3, H, W]: ``raw`` ([0, 1]
    values), ``centred`` (minus the image's own mean) or ``imagenet`` (the normalised input)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "imagenet":
            return x.flatten(1)
        raw = (x * self.std + self.mean).flatten(1)
        return raw - raw.mean(1, keepdim=True) if self.mode == "centred" else raw


def pixel_baselines(data: Path, workdir: Path, bank: int, test: int | None, out: Path) -> dict[str, Any]:
    """Raw pixels at 32 px in the same protocol, measured once per (bank, test), cached in ``workdir``
    and appended to ``out`` as a ``"baseline"`` line when measured."""
    cache = workdir / f"pixels-bank{bank}-test{test or 'all'}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    clock = time.perf_counter()
    result: dict[str, Any] = {
        m: knn(Pixels(m), data, workdir, 32, bank, test) for m in ("raw", "centred", "imagenet")
    }
    result |= {
        "wall_s": round(time.perf_counter() - clock, 1),
        "bank_per_class": bank,
        "test_per_class": test,
    }
    cache.write_text(json.dumps(result))
    append_line(out, {"baseline": "pixels_32px", **result, "machine": machine()})
    return result


def append_line(out: Path, record: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")


def loss_terms(run_dir: Path) -> dict[str, Any]:
    """The last logged DINO/iBOT/KoLeo terms and their means over the last quarter of the run."""
    from pretrain.metrics import METRICS_FILE, read_metrics

    rows = read_metrics(run_dir / METRICS_FILE)
    if not rows:
        return {}
    tail = [r for r in rows if r["step"] > 0.75 * rows[-1]["step"]] or rows[-1:]
    out: dict[str, Any] = {"steps": rows[-1]["step"], "images_per_s": round(rows[-1]["images_per_s"], 1)}
    for key in ("dino", "ibot", "koleo"):
        out[key] = round(rows[-1][key], 4)
        out[f"{key}_last_quarter"] = round(sum(r[key] for r in tail) / len(tail), 4)
    return out


def curve(args: argparse.Namespace, run_dir: Path, size: int) -> list[dict[str, Any]]:
    """kNN of the teacher at each kept checkpoint step listed in ``--curve`` (accuracy against
    training time within one run: its schedules are those of the whole run, not of a shorter one)."""
    from pretrain.checkpoint import list_checkpoints
    from pretrain.export import teacher_from_checkpoint

    data, wanted = shared_data(), set(args.curve)
    points = []
    for step, path in list_checkpoints(run_dir / "checkpoints"):
        if step not in wanted:
            continue
        accuracy = knn(teacher_from_checkpoint(path), data, args.workdir, size, args.bank_per_class,
                       args.test_per_class)  # fmt: skip
        points.append({"step": step, "knn": accuracy})
        print(json.dumps({"curve_step": step, "knn": accuracy}), flush=True)
    missing = wanted - {p["step"] for p in points}
    if missing:
        print(f"warning: no checkpoint kept for --curve steps {sorted(missing)}", file=sys.stderr)
    return points


def ablate(args: argparse.Namespace, settings: list[str], config: TrainConfig) -> dict[str, Any]:
    """Train one run (or reuse a finished one) and measure it -> its JSON record."""
    from pretrain.models.io import load_backbone

    data = shared_data()
    catalog, ref = train_dataset(data, args.workdir)
    run_dir = args.workdir / "runs" / (args.name or run_name(args.steps, args.overrides, args.threads))
    train_wall = train(catalog, ref, run_dir, settings, args.threads)
    teacher = load_backbone(run_dir / "teacher_backbone.safetensors").eval()
    size = config.crops.global_size
    clock = time.perf_counter()
    accuracy = knn(teacher, data, args.workdir, size, args.bank_per_class, args.test_per_class)
    eval_wall = time.perf_counter() - clock
    points = curve(args, run_dir, size) if args.curve else []
    return {
        "name": run_dir.name,
        "overrides": args.overrides,
        "steps_budget": args.steps,
        "epoch_steps": args.epoch_steps,
        "threads": args.threads,
        "train_wall_s": round(train_wall, 1),
        "eval_wall_s": round(eval_wall, 1),
        "eval_size": size,
        "knn": accuracy,
        "ln_prototypes": round(math.log(config.heads.dino.prototypes), 4),
        **loss_terms(run_dir),
        **({"curve": points} if points else {}),
        "bank_per_class": args.bank_per_class,
        "test_per_class": args.test_per_class,
        "machine": machine(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ablate_bootstrap", description=__doc__.split("\n")[0]
    )
    p.add_argument("--steps", type=int, default=160, help="training steps of the run (the budget)")
    p.add_argument("--epoch-steps", type=int, default=40, help="steps per epoch (the demo preset's 40)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="demo config key=value")
    p.add_argument(
        "--name", default=None, help="run directory name under WORKDIR/runs (default: from the settings)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS of the trainer (default: the engine's)"
    )
    p.add_argument("--workdir", type=Path, default=REPO / "runs" / "ablate-bootstrap")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ablate_bootstrap.jsonl")
    p.add_argument("--bank-per-class", type=int, default=1000, help="kNN bank: train images per class")
    p.add_argument("--test-per-class", type=int, default=None, help="test images per class (default: all)")
    p.add_argument(
        "--curve", type=lambda v: [int(x) for x in v.split(",")], default=[],
        help="comma-separated checkpoint steps to evaluate too (set train.keep_last high enough)",
    )  # fmt: skip
    p.add_argument("--pixels-only", action="store_true", help="measure only the raw-pixel baselines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings, config = resolve(args.steps, args.epoch_steps, args.overrides)
        data = shared_data()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    pixels = pixel_baselines(data, args.workdir, args.bank_per_class, args.test_per_class, args.out)
    print(json.dumps({"pixels_32px": pixels}), flush=True)
    if args.pixels_only:
        return 0
    record = ablate(args, settings, config)
    print(json.dumps(record), flush=True)
    append_line(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
