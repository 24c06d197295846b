"""Training throughput and peak memory of the DINOv2 engine.

CPU (default): the ``demo`` preset on real Imagenette images through the whole engine
(``python -m pretrain.train``: shards, augmentation, masking, student/teacher, optimizer), with 1
process and with 2 gloo processes under torchrun (the baseline is the 1-process run; the ratio is the
2-process scaling). GPU (``--gpu vits14|vitl14``): one device, the full recipe (2 global 224 + 8
local 98 crops, 65,536 prototypes, bf16 autocast, fused AdamW) on synthetic batches so the data
pipeline is not measured; images/s, peak memory and model FLOPs utilisation from a FLOP count of one
forward + backward (``torch.utils.flop_counter``). Skipped, saying so, without CUDA.

    .venv/bin/python -m benchmarks.bench_train [--steps 30] [--gpu vits14] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine, write_result
from pretrain.metrics import METRICS_FILE, read_metrics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "train.md"


def imagenette_index(work: Path, n: int = 400) -> Path:
    """The first ``n`` Imagenette images as webdataset shards + index (``$DINOFLOW_SHARED_DATA``)."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import shared_data_dir
    from tests.test_resume import write_shards

    archive = shared_data_dir() / "imagenette-train-subset.tar.gz"
    if not archive.exists():
        raise SystemExit(f"{archive} not found: set DINOFLOW_SHARED_DATA to the shared/data folder")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    files = sorted((work / "imagenette-train-subset").glob("*/*.JPEG"))[:: max(1, 2000 // n)][:n]
    return write_shards(files, work / "shards", n_shards=4)


def cpu_run(index: Path, out: Path, nproc: int, steps: int, overrides: list[str]) -> dict[str, float]:
    args = ["--config", "demo", "--dataset", str(index), "--output-dir", str(out), "--max-steps", str(steps)]
    for item in ["train.log_every=5", f"train.checkpoint_every={steps}", *overrides]:
        args += ["--set", item]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "pretrain.train",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "pretrain.train", *args]
    # the trainer picks its threads (cores per process minus loader workers; torchrun sets 1)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    rows = read_metrics(out / METRICS_FILE)
    timed = rows[1:] or rows  # the first window holds start-up (workers, first batch)
    return {
        "images_per_s": sum(r["images_per_s"] for r in timed) / len(timed),
        "max_rss_mb": max(r["max_rss_mb"] for r in rows),
        "loss": rows[-1]["loss"],
    }


def bench_cpu(steps: int) -> list[str]:
    load_before = os.getloadavg()[0]
    lines = [
        "## CPU: demo preset (vit_pico, 64/32 px crops, 2 global + 4 local, 4096 prototypes), real images",
        "",
        "Each process: 1 loader worker; intra-op threads = cores per process - 1 (1 here). Throughput is",
        "averaged over the logged windows after the first (start-up excluded).",
        "",
        "| processes | batch/process | images/s (all processes) | peak RSS per process (MB) | vs 1 process |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        index = imagenette_index(work)
        base = None
        for nproc in (1, 2):
            res = cpu_run(index, work / f"run{nproc}", nproc, steps, [])
            base = base or res["images_per_s"]
            lines.append(
                f"| {nproc} | 32 | {res['images_per_s']:.1f} | {res['max_rss_mb']:.0f} | {res['images_per_s'] / base:.2f}x |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        f"1-minute load average before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
        "(other jobs on the machine slow both rows)",
    ]
    return lines


def synthetic_batch(cfg, device: torch.device) -> dict:  # noqa: ANN001 - TrainConfig
    """A batch with the shapes of the real collate (random pixels; masks as in iBOT)."""
    from pretrain.data import build_transform_and_collate

    b, g, loc = cfg.train.batch_size_per_device, cfg.crops.global_size, cfg.crops.local_size
    _, collate = build_transform_and_collate(cfg, "main")
    samples = [
        {
            "global_crops": [torch.randn(3, g, g) for _ in range(2)],
            "local_crops": [torch.randn(3, loc, loc) for _ in range(cfg.crops.local_number)],
        }
        for _ in range(b)
    ]
    batch = collate(samples)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def measure_steps(
    preset: str, device: torch.device, steps: int, batch: int | None = None
) -> dict[str, float]:
    """Seconds per full-recipe step, FLOPs of one step (forward + backward, teacher included) and peak
    allocated bytes (CUDA) on ``device``; ``batch`` overrides the preset's per-device batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from pretrain.config import load_config
    from pretrain.optim import apply_schedule, build_optimizer, param_groups
    from pretrain.ssl import build_ssl_model

    overrides = ["heads.dino.prototypes=65536", "heads.ibot.prototypes=65536", "crops.local_number=8"]
    cfg = load_config(preset, overrides + ([f"train.batch_size_per_device={batch}"] if batch else []))
    model = build_ssl_model(cfg, cfg.crops.global_size).to(device).train()
    groups = param_groups(model.student.named_parameters(), model.student.backbone.n_blocks, 0.9, 0.2)
    opt = build_optimizer(groups, (0.9, 0.999))
    data = synthetic_batch(cfg, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step() -> None:
        apply_schedule(opt, 1e-4, 0.04, False)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss, _ = model.losses(data, 0.07)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_teacher(0.994)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(2):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {"s_per_step": (time.perf_counter() - start) / steps, "flops": float(counter.get_total_flops()),
            "peak_bytes": float(peak), "batch": cfg.train.batch_size_per_device}  # fmt: skip


def bench_gpu(preset: str, steps: int, peak_tflops: float) -> list[str]:
    r = measure_steps(preset, torch.device("cuda", 0), steps)
    dt, b = r["s_per_step"], int(r["batch"])
    mfu = r["flops"] / dt / (peak_tflops * 1e12)
    return [
        f"## GPU: {preset}, 2x224 + 8x98 crops, 65,536 prototypes, bf16 autocast, fused AdamW, synthetic batches",
        "",
        "| preset | batch/GPU | s/step | images/s/GPU | peak allocated (GB) | TFLOP/step (fwd+bwd, teacher incl.) | MFU |",
        "|---|---|---|---|---|---|---|",
        f"| {preset} | {b} | {dt:.3f} | {b / dt:.0f} | {r['peak_bytes'] / 1e9:.1f} | {r['flops'] / 1e12:.2f} | "
        f"{100 * mfu:.1f}% (of {peak_tflops:.0f} TFLOP/s) |",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--gpu", choices=["vits14", "vitl14"], default=None, help="GPU mode (full recipe)")
    p.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)"
    )
    args = p.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        print(f"bench_train --gpu {args.gpu}: skipped, no CUDA device on this machine (nothing written)")
        return 0
    lines = ["# Training throughput", "", f"Machine: {machine()}", ""]
    lines += bench_gpu(args.gpu, args.steps, args.peak_tflops) if args.gpu else bench_cpu(args.steps)
    out = RESULTS if not args.gpu else RESULTS.with_name(f"train_gpu_{args.gpu}.md")
    write_result(out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
