"""The full CIFAR-10 linear probe of a ViT-S/14, end to end on this machine (issue 13).

What a user runs for the seed experiment, timed as a whole:

    dinoflow evaluate --checkpoint CK --benchmark cifar10-seed --out metrics.json \\
        --set evaluate.precision=P --set evaluate.baselines.random_init=false

(50,000 train + 10,000 test CIFAR-10 JPEGs, squashed to 224 x 224, class token of a ViT-S/14; kNN,
the linear probe with its C search on a held-out 10% of train, retrieval, copy detection, the
raw-pixels baseline, every figure). The command runs in a child process; reported are its wall time,
its peak RSS, the per-phase times its log shows and its metrics.

Without ``--checkpoint`` the ViT-S/14 is randomly initialised (seed 0) and saved to a temporary file:
no pretrained ViT-S/14 is on this machine (official weights: ``--checkpoint
dinov2_vits14_pretrain.pth``). The random-init baseline is then off, since it is the checkpoint itself.

The baseline beside it, same run: the bare ``forward_features`` of the same model on ready tensors
(``--forward-images`` images, batch 64) at fp32 and at bf16 autocast: what the network alone costs
for 60,000 images at each precision, so the rest is decoding, the probe's fits and the figures.

    .venv/bin/python -m benchmarks.bench_cifar_probe [--precision bf16|fp32] [--checkpoint PATH]
        [--forward-images 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, machine, write_result

RESULTS = REPO / "benchmarks" / "results"


def bare_forward(model: Any, n: int, bf16: bool) -> float:
    """images/s of ``forward_features`` alone on ready [64, 3, 224, 224] tensors."""
    import torch

    x = torch.randn(64, 3, 224, 224)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model.forward_features(x[:8])  # warm-up
        start, done = time.perf_counter(), 0
        while done < n:
            model.forward_features(x)
            done += x.shape[0]
    return done / (time.perf_counter() - start)


def child_peak_mb(pid: int, peak: float) -> float:
    """The larger of ``peak`` and the process's VmHWM now (MB); 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return max(peak, int(line.split()[1]) / 1024)
    except OSError:
        pass
    return peak


def run_evaluate(
    checkpoint: Path, benchmark: str, precision: str, random_init: bool, work: Path
) -> dict[str, Any]:
    """The CLI in a child process: wall seconds, peak RSS (MB, sampled every second), metrics, log."""
    out = work / "metrics.json"
    dinoflow = Path(sys.executable).parent / "dinoflow"
    cmd = [str(dinoflow), "evaluate", "--checkpoint", str(checkpoint), "--benchmark", benchmark, "--out", str(out), "--report-dir", str(work / "report"),
           "--set", f"evaluate.precision={precision}",
           "--set", f"evaluate.baselines.random_init={'true' if random_init else 'false'}",
           "--set", f"evaluate.cache_dir={work / 'cache'}"]  # fmt: skip
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = (work / "evaluate.log").open("w")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    peak = 0.0
    while proc.poll() is None:
        peak = child_peak_mb(proc.pid, peak)
        time.sleep(1.0)
    wall = time.perf_counter() - start
    log.close()
    text = (work / "evaluate.log").read_text()
    if proc.returncode != 0:
        raise SystemExit(f"evaluate failed (exit {proc.returncode}):\n{text[-3000:]}")
    return {"wall_s": wall, "peak_mb": peak, "metrics": json.loads(out.read_text()), "log": text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", choices=["bf16", "fp32", "auto"], default="bf16")
    ap.add_argument("--checkpoint", type=Path, default=None, help="A ViT-S/14 (default: random init)")
    ap.add_argument("--benchmark", default="cifar10-seed", help="Another benchmark name (a quick check)")
    ap.add_argument("--forward-images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from pretrain.models import build_backbone
    from pretrain.models.io import load_backbone, save_backbone

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cifar-probe-") as tmp:
        work = Path(tmp)
        if args.checkpoint is None:
            torch.manual_seed(0)
            checkpoint = save_backbone(
                build_backbone("vit_small", img_size=224, patch_size=14), work / "vits14.safetensors"
            )
            label = "random-init ViT-S/14 (seed 0)"
        else:
            checkpoint, label = args.checkpoint, str(args.checkpoint)
        model = load_backbone(checkpoint).eval()
        rates = {p: bare_forward(model, args.forward_images, p == "bf16") for p in ("fp32", "bf16")}
        del model
        run = run_evaluate(checkpoint, args.benchmark, args.precision, args.checkpoint is not None, work)

    doc = run["metrics"]
    summary = doc["summary"]
    n_images = doc["benchmark"]["n_train"] + doc["benchmark"]["n_test"]
    net_s = {p: n_images / r for p, r in rates.items()}
    lines = [
        f"# Linear probe of a ViT-S/14 end to end (`dinoflow evaluate --benchmark {args.benchmark}`)",
        "",
        f"machine: {machine()}",
        f"checkpoint: {label}; precision {args.precision}; threads {args.threads}",
        f"command: `python -m benchmarks.bench_cifar_probe --precision {args.precision} --benchmark {args.benchmark}`",
        "",
        "| what | value |",
        "|---|---|",
        f"| images (train + test) | {doc['benchmark']['n_train']:,} + {doc['benchmark']['n_test']:,} |",
        f"| wall time, whole command | {run['wall_s'] / 60:.1f} min ({run['wall_s']:.0f} s) |",
        f"| peak RSS of the command | {run['peak_mb'] / 1024:.2f} GB |",
        f"| bare forward, fp32 (same model, ready tensors) | {rates['fp32']:.1f} img/s = {net_s['fp32'] / 60:.1f} min for {n_images:,} |",
        f"| bare forward, bf16 autocast | {rates['bf16']:.1f} img/s = {net_s['bf16'] / 60:.1f} min for {n_images:,} |",
        f"| checkpoint: linear top-1 / kNN top-1 (k=20) | {summary['checkpoint']} |",
        f"| raw pixels: headline | {summary.get('raw_pixels')} |",
        f"| linear probe C chosen | {doc['linear'].get('C')} |",
        "",
    ]  # fmt: skip
    result = RESULTS / f"probe_{args.benchmark}_{args.precision}.md"
    write_result(result, "\n".join(lines))
    (result.with_suffix(".json")).write_text(json.dumps({"wall_s": run["wall_s"], "peak_mb": run["peak_mb"],
                                                          "forward_img_s": rates, "metrics": doc}, indent=2))  # fmt: skip
    tail = "\n".join(run["log"].splitlines()[-40:])
    print(tail)


if __name__ == "__main__":
    main()
