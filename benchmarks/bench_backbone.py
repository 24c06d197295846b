"""Backbone inference throughput: our DinoVisionTransformer vs ``transformers.Dinov2Model`` with the
same weights (ours converted to HF's layout by ``pretrain.models.io``), same inputs, same run.

CPU (default): fp32, ``torch.set_num_threads(--threads)``, ``torch.inference_mode``. The two models
alternate in rounds (a warmup call, then timed calls, per model per round) so background load hits
both alike; reported are images/s of the best call (least disturbed by other processes, as timeit
does) and of the median call, and the median process CPU time per image (steadier under load). GPU (``--device cuda``): bf16 autocast, the
same protocol with CUDA synchronisation; skipped, saying so, without CUDA.

    .venv/bin/python -m benchmarks.bench_backbone [--arch vit_small] [--size 224] [--batch 16]
        [--rounds 5] [--iters 2] [--threads 2] [--device cpu|cuda] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "backbone.md"


def build_pair(arch: str, size: int, device: str) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    """(ours, HF with identical weights, max |difference| of the class tokens on one batch)."""
    from transformers import Dinov2Model

    from pretrain.models import build_backbone
    from pretrain.models.io import save_backbone

    torch.manual_seed(0)
    ours = build_backbone(arch, img_size=size, patch_size=14).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_backbone(ours, Path(tmp) / "hf", layout="hf")
        hf = Dinov2Model.from_pretrained(Path(tmp) / "hf", attn_implementation="sdpa").eval()
    ours, hf = ours.to(device), hf.to(device)
    x = torch.randn(2, 3, size, size, device=device)
    with torch.inference_mode():
        diff = (ours(x) - hf(pixel_values=x).pooler_output).abs().max().item()
    return ours, hf, diff


def timed(fn: Callable[[], object], iters: int, device: str) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) of each of ``iters`` calls of ``fn`` (CUDA synchronised)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for _ in range(iters):
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def run(args: argparse.Namespace) -> list[dict]:
    ours: Any
    hf: Any
    ours, hf, diff = build_pair(args.arch, args.size, args.device)
    if args.compile:
        ours, hf = torch.compile(ours), torch.compile(hf)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    amp: Any = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else nullcontext()
    fns = {"ours (pretrain.models)": lambda: ours(x), "transformers Dinov2Model": lambda: hf(pixel_values=x)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    with torch.inference_mode(), amp:
        for _ in range(args.rounds):
            for name, fn in fns.items():
                timed(fn, args.warmup, args.device)
                times[name] += timed(fn, args.iters, args.device)
    rows = []
    for name, t in times.items():
        walls, cpus = [w for w, _ in t], [c for _, c in t]
        rows.append({"model": name, "best": args.batch / min(walls), "median": args.batch / statistics.median(walls),
                     "cpu_ms": 1e3 * statistics.median(cpus) / args.batch, "diff": diff})  # fmt: skip
    base = rows[1]
    for row in rows:
        row["ratio"] = row["best"] / base["best"]
        row["cpu_ratio"] = base["cpu_ms"] / row["cpu_ms"]
    return rows


def table(rows: list[dict], args: argparse.Namespace) -> str:
    precision = "bf16 autocast" if args.device == "cuda" else "fp32"
    lines = [
        f"## Backbone inference: {args.arch} at {args.size} px, batch {args.batch}, {args.device}, {precision}",
        "",
        f"Machine: {machine()}; threads {torch.get_num_threads()}; compile {args.compile}.",
        f"{args.rounds} alternating rounds of {args.warmup} warmup + {args.iters} timed calls per model; "
        f"load average at the end {os.getloadavg()[0]:.1f}. Same weights: max |class-token difference| "
        f"{rows[0]['diff']:.2e}.",
        "",
        "| model | images/s (best call) | images/s (median call) | speedup (best call) "
        "| CPU ms/image (median) | speedup (CPU time) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['model']} | {r['best']:.2f} | {r['median']:.2f} | {r['ratio']:.2f}x | {r['cpu_ms']:.0f} "
        f"| {r['cpu_ratio']:.2f}x |"
        for r in rows
    ]
    lines += [
        "",
        "Speedup = ours / transformers. On a shared machine wall times swing with other processes; the",
        "process CPU time per image (both threads) is the steadier comparison there.",
    ]
    lines += ["", f"Command: `.venv/bin/python -m benchmarks.bench_backbone {' '.join(args.argv)}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS})")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda needs a CUDA device (none found)")
        return
    torch.set_num_threads(args.threads)
    out = args.out or (RESULTS if args.device == "cpu" else RESULTS.with_name("backbone_gpu.md"))
    write_result(out, table(run(args), args))


if __name__ == "__main__":
    main()
