"""Feature-extraction throughput of the evaluation pipeline against the bare forward pass, same run.

The pipeline (``evaluation.features.extract``): read each CIFAR-10 test JPEG, open it with the one
image opener, resize it to 224 x 224 (the seed's squash policy), normalise, batch, and take the
class token and mean patch token of a ViT. The baseline: the same model's ``forward_features`` on
ready-made tensors of the same shape, batch for batch; nothing else. Their ratio is what decoding,
transforming, batching and feature bookkeeping cost on top of the network. A third row times the
pipeline without the network (decode + transform + collate only). The three alternate in rounds;
reported are images/s of the best round and the median (background load hits all alike).

    .venv/bin/python -m benchmarks.bench_eval_features [--arch vit_small] [--images 128] [--batch 32]
        [--rounds 3] [--threads 2] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "eval_features.md"


def cifar_test_split(data: Path, dest: Path, n: int) -> Any:
    """The first ``n`` CIFAR-10 test images (round-robin over classes) as an evaluation Split."""
    from evaluation.datasets import list_image_folder, make_split

    with tarfile.open(data / "cifar10-test.tar.gz") as tar:
        tar.extractall(dest, filter="data")
    root = dest / "test"
    classes, files, _ = list_image_folder(root)
    by_class = [[f for f in files if f[1] == c] for c in classes]
    picked = [by_class[i % len(classes)][i // len(classes)] for i in range(n)]
    return make_split(root, classes, picked, 0, "test")


def run(args: argparse.Namespace, split: Any) -> list[dict[str, Any]]:
    from evaluation.config import TransformConfig
    from evaluation.features import BackboneExtractor, extract, loader
    from pretrain.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone(args.arch, img_size=224, patch_size=14).eval()
    transform = TransformConfig(policy="squash", resize=224, crop=None)
    extractor = BackboneExtractor(model, "cpu")
    n = len(split.files)
    ready = [torch.randn(min(args.batch, n - s), 3, 224, 224) for s in range(0, n, args.batch)]

    def pipeline() -> None:
        extract(split, extractor, transform, args.batch, args.workers)

    def bare() -> None:
        with torch.inference_mode():
            for x in ready:
                model.forward_features(x)

    def decode_only() -> None:
        for _ in loader(split, transform, args.batch, args.workers):
            pass

    fns = {"pipeline: files -> features": pipeline, "bare forward_features on tensors": bare,
           "decode + transform + collate only": decode_only}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in fns}
    decode_only()  # warm the page cache and torchvision's imports
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    rows: list[dict[str, Any]] = [
        {"what": k, "best": n / min(v), "median": n / statistics.median(v)} for k, v in times.items()
    ]
    for row in rows:
        row["ratio"] = row["best"] / rows[1]["best"]
    return rows


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"## Evaluation feature extraction: {args.arch}, CIFAR-10 test at 224 x 224, batch {args.batch}, CPU fp32",
        "",
        f"Machine: {machine()}; threads {torch.get_num_threads()}; DataLoader workers {args.workers}.",
        f"{args.images} images, {args.rounds} alternating rounds; load average at the end {os.getloadavg()[0]:.1f}.",
        "",
        "| what | images/s (best round) | images/s (median round) | vs bare forward (best) |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['what']} | {r['best']:.2f} | {r['median']:.2f} | {r['ratio']:.2f}x |" for r in rows]
    lines += ["", f"Command: `.venv/bin/python -m benchmarks.bench_eval_features {' '.join(args.argv)}`", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data")),
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    if not (args.data / "cifar10-test.tar.gz").is_file():
        print(f"skipped: {args.data / 'cifar10-test.tar.gz'} not found (set DINOFLOW_SHARED_DATA)")
        return 0
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        split = cifar_test_split(args.data, Path(tmp), args.images)
        rows = run(args, split)
    write_result(args.out, table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
