"""Multi-crop augmentation throughput per CPU core: ours vs a per-sample PIL pipeline, same run.

Ours: :class:`pretrain.augment.MultiCropAugmentation` (uint8 crop + bicubic resize, then the
photometric chain batched over each image's crops of one size). Baseline: the straightforward
torchvision v1 PIL pipeline of the same transforms (RandomResizedCrop bicubic, flip, ColorJitter,
RandomGrayscale, Gaussian blur with PIL ``ImageFilter``, solarize, ToTensor, Normalize), one crop at
a time, as DINO/DINOv2 write it. Both read the same raw photos, decoded into memory beforehand, in
one thread (``torch.set_num_threads(1)``); rounds alternate between the two so that load from other
processes hits both alike; the table gives each side's best round. With CUDA, one more table: the
photometric chain on a collated batch on the GPU (``BatchedPhotometric``) vs the same on 1 CPU thread.

    .venv/bin/python -m benchmarks.bench_augment [--images 48] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from benchmarks.common import machine
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD, BatchedPhotometric, MultiCropAugmentation

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "augment.md"


class PILBlur:
    """Gaussian blur with PIL's ImageFilter, radius uniform in (0.1, 2.0), with probability p (DINO v1)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class PILSolarize:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img, threshold=128) if random.random() < self.p else img


def pil_baseline(global_size: int, local_size: int, n_local: int) -> Callable[[Image.Image], dict]:
    """The per-sample PIL multi-crop of DINO/DINOv2 (paper blur probabilities, as ours)."""
    bicubic = T.InterpolationMode.BICUBIC
    flip_color = T.Compose(
        [
            T.RandomHorizontalFlip(0.5),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(0.2),
        ]
    )
    norm = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    rrc_g = T.RandomResizedCrop(global_size, scale=(0.32, 1.0), interpolation=bicubic)
    rrc_l = T.RandomResizedCrop(local_size, scale=(0.05, 0.32), interpolation=bicubic)
    g1 = T.Compose([rrc_g, flip_color, PILBlur(1.0), norm])
    g2 = T.Compose([rrc_g, flip_color, PILBlur(0.1), PILSolarize(0.2), norm])
    loc = T.Compose([rrc_l, flip_color, PILBlur(0.5), norm])

    def run(img: Image.Image) -> dict:
        return {"global_crops": [g1(img), g2(img)], "local_crops": [loc(img) for _ in range(n_local)]}

    return run


def load_photos(n: int) -> list[Image.Image]:
    from tests.conftest import shared_data_dir

    folder = shared_data_dir() / "raw-photos" / "images"
    paths = sorted(folder.glob("*"))[:n]
    if not paths:
        raise SystemExit(f"no photos in {folder}: set DINOFLOW_SHARED_DATA to the shared/data folder")
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def images_per_s(fn: Callable[[Image.Image], dict], imgs: list[Image.Image]) -> float:
    start = time.perf_counter()
    for img in imgs:
        fn(img)
    return len(imgs) / (time.perf_counter() - start)


def bench_cpu(imgs: list[Image.Image], rounds: int, sizes: tuple[int, int, int]) -> str:
    g, loc, n_local = sizes
    ours = MultiCropAugmentation(global_crops_size=g, local_crops_size=loc, local_crops_number=n_local)
    base = pil_baseline(g, loc, n_local)
    for fn in (ours, base):  # warm-up
        images_per_s(fn, imgs[:4])
    ours_r, base_r = [], []
    for _ in range(rounds):
        ours_r.append(images_per_s(ours, imgs))
        base_r.append(images_per_s(base, imgs))
    o, b = max(ours_r), max(base_r)  # the least disturbed round of each (timeit's convention)
    return f"| {g}/{loc}, {n_local} locals | {b:.1f} | {o:.1f} | {o / b:.2f}x |"


def bench_gpu(batch: int, rounds: int) -> list[str]:
    """Photometric chain on [batch, 3, 224, 224] + [8 * batch, 3, 98, 98] uint8 crops."""
    if not torch.cuda.is_available():
        return ["GPU: skipped, no CUDA device on this machine."]
    phot = BatchedPhotometric()
    gen = torch.Generator().manual_seed(0)
    g = torch.randint(0, 256, (2 * batch, 3, 224, 224), dtype=torch.uint8, generator=gen)
    loc = torch.randint(0, 256, (8 * batch, 3, 98, 98), dtype=torch.uint8, generator=gen)
    blur_g = torch.tensor([1.0, 0.1]).repeat_interleave(batch)
    sol_g = torch.tensor([0.0, 0.2]).repeat_interleave(batch)

    def step(dev: str, m: BatchedPhotometric, xg: torch.Tensor, xl: torch.Tensor) -> float:
        start = time.perf_counter()
        m(xg, blur_g, sol_g)
        m(xl, 0.5, 0.0)
        if dev == "cuda":
            torch.cuda.synchronize()
        return batch / (time.perf_counter() - start)

    gpu = phot.to("cuda")
    xg, xl = g.cuda(), loc.cuda()
    step("cuda", gpu, xg, xl)
    gpu_r = statistics.median(step("cuda", gpu, xg, xl) for _ in range(rounds))
    cpu = BatchedPhotometric()
    cpu_r = statistics.median(step("cpu", cpu, g, loc) for _ in range(max(1, rounds // 3)))
    return [
        f"Photometric chain only (jitter, grayscale, blur, solarize, normalise) on a collated batch of {batch} images "
        "(2 x 224 + 8 x 98 crops each), uint8 crops already on the device:",
        "",
        "| where | images/s | ratio |",
        "|---|---|---|",
        f"| CPU, 1 thread | {cpu_r:.0f} | 1.00x |",
        f"| {torch.cuda.get_device_name(0)} | {gpu_r:.0f} | {gpu_r / cpu_r:.1f}x |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--gpu-batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    imgs = load_photos(args.images)
    lines = [
        "# Multi-crop augmentation throughput (one CPU thread)",
        "",
        f"Machine: {machine()}; load average at start {os.getloadavg()[0]:.1f} (other processes share "
        "the cores: absolute rates vary between runs, the alternating-round ratio is the figure).",
        f"{len(imgs)} raw photos (decoded in memory, widths {min(i.size[0] for i in imgs)}-"
        f"{max(i.size[0] for i in imgs)} px), best of {args.rounds} alternating rounds each; "
        "baseline: per-sample torchvision v1 PIL transforms with PIL ImageFilter blur.",
        "Command: `.venv/bin/python -m benchmarks.bench_augment`",
        "",
        "| crops (global/local px) | PIL baseline img/s | ours img/s | ours / baseline |",
        "|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for sizes in ((224, 98, 8), (64, 28, 8)):
        lines.append(bench_cpu(imgs, args.rounds, sizes))
        print(lines[-1], flush=True)
    gpu = bench_gpu(args.gpu_batch, 10)
    lines += ["", *gpu]
    print("\n" + "\n".join(gpu))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(RESULTS)


if __name__ == "__main__":
    main()
