"""Does the SSCD objective learn copy detection in a CPU budget? Train, then score held-out edits.

    python -m benchmarks.measure_sscd_demo [--steps 300] [--train 400] [--set key=value ...]

Writes the first ``--train`` photos of ``../shared/data/raw-photos`` (sorted by name) as shards,
trains ``python -m pretrain.train --config sscd-demo`` on them for ``--steps`` steps, and scores
the exported descriptor and the same architecture at random init (``pretrain.sscd.build_descriptor``
with the run's config and seed) on the remaining, never-seen photos: each held-out photo becomes
``--queries`` edited copies (``pretrain.edits.CopyEditAugmentation`` with the run's edit settings
and a fixed seed), and also into single planted edits (:func:`planted`: issue 11's easy and hard
edits); a query counts when its nearest original (cosine) is its own photo. Prints one JSON line:
recall@1 of both models on both query sets, steps/s and images/s of the run (the trainer's clock).
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

import torch
import torch.nn.functional as F

from benchmarks.common import write_file_shards

REPO = Path(__file__).resolve().parents[1]


def _original(img, size: int) -> torch.Tensor:  # noqa: ANN001 - a PIL image
    """The whole photo resized to S x S, float [3, S, S] in [0, 1] (as the descriptor sees images)."""
    from pretrain.augment import to_uint8_chw

    x = to_uint8_chw(img).float().unsqueeze(0) / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)[0]


def originals_and_queries(
    files: list[Path], size: int, per_image: int, edits: dict, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(originals [N, 3, S, S], queries [N * per_image, 3, S, S], query labels)``, normalised.

    Originals: the whole photo resized to S x S (as the descriptor sees images); queries: edited
    copies from the training edit families, with a generator seeded by ``seed``."""
    from data_catalog.image import open_image
    from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
    from pretrain.edits import CopyEditAugmentation

    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    aug = CopyEditAugmentation(size, per_image, **edits)
    g = torch.Generator().manual_seed(seed)
    originals, queries = [], []
    for f in files:
        originals.append(_original(open_image(f.read_bytes()), size))
        queries.append(aug.edit_views(open_image(f.read_bytes()), g))
    labels = torch.arange(len(files)).repeat_interleave(per_image)
    return (torch.stack(originals) - mean) / std, (torch.cat(queries) - mean) / std, labels


def _center_crop(img, frac: float):  # noqa: ANN001, ANN202 - PIL in, PIL out
    w, h = img.size
    cw, ch = int(w * frac), int(h * frac)
    return img.crop(((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch))


def planted(img, size: int) -> dict:  # noqa: ANN001 - a PIL image
    """Single edits of issue 11's easy and hard pairs, each a float view [3, S, S] in [0, 1]."""
    from PIL import Image, ImageEnhance

    from pretrain.edits import add_border, add_caption, from_pil, jpeg_recompress, rotate

    sq = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    edits = {
        "resize": img.resize((size // 2, size // 2), Image.Resampling.BILINEAR).resize((size, size)),
        "jpeg30": sq,
        "brightness": ImageEnhance.Brightness(sq).enhance(1.3),
        "crop85": _center_crop(img, 0.85).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0),
        "flip": sq.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "rotate5": rotate(sq, 5.0, (0, 0, 0)),
        "border": add_border(sq, (size // 10,) * 4, (0, 0, 0)),
        "caption": add_caption(
            sq, "Copyright 2024", size // 7, True, (255, 255, 255), (0, 0, 0), append=True
        ),
        "gray": sq.convert("L").convert("RGB"),
    }
    out = {k: from_pil(v).float() / 255 for k, v in edits.items()}
    out["jpeg30"] = jpeg_recompress(out["jpeg30"], 30)
    return out


@torch.no_grad()
def planted_recall(model: torch.nn.Module, files: list[Path], size: int) -> dict[str, float]:
    """Recall@1 per planted edit (nearest original among all of ``files``), and their mean."""
    from data_catalog.image import open_image
    from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD

    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model.eval()
    originals: list[torch.Tensor] = []
    by_edit: dict[str, list[torch.Tensor]] = {}
    for f in files:
        img = open_image(f.read_bytes())
        originals.append(_original(img, size))
        for name, view in planted(img, size).items():
            by_edit.setdefault(name, []).append(view)
    refs = model((torch.stack(originals) - mean) / std)
    labels = torch.arange(len(files))
    out = {}
    for name, views in by_edit.items():
        q = model((torch.stack(views) - mean) / std)
        out[name] = float(((q @ refs.t()).argmax(dim=1) == labels).float().mean())
    out["mean"] = sum(out.values()) / len(out)
    return out


@torch.no_grad()
def recall_at_1(
    model: torch.nn.Module, originals: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor
) -> float:
    """Fraction of queries whose nearest original (by descriptor cosine) is their own photo."""
    model.eval()
    refs = torch.cat([model(b) for b in originals.split(64)])
    q = torch.cat([model(b) for b in queries.split(64)])
    return float(((q @ refs.t()).argmax(dim=1) == labels).float().mean())


def train_run(args: argparse.Namespace, train_files: list[Path]) -> tuple[list[dict], torch.nn.Module, float]:
    """``python -m pretrain.train`` on ``train_files``: (metrics rows, exported descriptor, wall s)."""
    from pretrain.models.descriptor import load_descriptor_file
    from pretrain.sscd import DESCRIPTOR_FILE

    with tempfile.TemporaryDirectory() as tmp:
        index = write_file_shards(train_files, Path(tmp) / "shards", n_shards=4, name="sscd")
        run = Path(args.run_dir or Path(tmp) / "run")
        cmd = [sys.executable, "-m", "pretrain.train", "--config", args.config, "--dataset", str(index),
               "--output-dir", str(run), "--max-steps", str(args.steps)]  # fmt: skip
        for item in args.overrides:
            cmd += ["--set", item]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - start
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return rows, load_descriptor_file(run / DESCRIPTOR_FILE), wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--train", type=int, default=400, help="photos to train on; the rest are held out")
    p.add_argument("--held-out", type=int, default=None, help="score only this many held-out photos")
    p.add_argument("--queries", type=int, default=4, help="edited copies per held-out photo")
    p.add_argument("--config", default="sscd-demo")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--run-dir", default=None, help="keep the run here (default: a temporary folder)")
    args = p.parse_args(argv)

    from pretrain.config import load_config
    from pretrain.sscd import build_descriptor

    shared = Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
    files = sorted((shared / "raw-photos" / "images").glob("*"))
    held_out = files[args.train :][: args.held_out]
    config = load_config(args.config, args.overrides)
    rows, trained, wall = train_run(args, files[: args.train])
    torch.manual_seed(0)
    models = {"trained": trained, "random_init": build_descriptor(config, pretrained=False)}
    size = config.sscd.input_size or config.sscd.size
    queries = originals_and_queries(held_out, size, args.queries, config.sscd.edits.model_dump())
    later = rows[len(rows) // 2 :]  # the trainer's own rate, after the start-up
    rate = sum(r["images_per_s"] for r in later) / len(later)
    result: dict = {"steps": args.steps, "held_out": len(held_out), "queries": len(queries[2])}
    for name, model in models.items():
        result[f"recall_at_1_{name}"] = recall_at_1(model, *queries)
        result[f"planted_{name}"] = planted_recall(model, held_out, size)
    result |= {"first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"], "images_per_s": rate,
               "steps_per_s": rate / config.train.batch_size_per_device, "wall_s": wall,
               "overrides": args.overrides}  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
