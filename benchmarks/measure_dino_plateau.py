"""Measure why the DINO term of the demo preset sits at ln(prototypes) (docs/dino-plateau.md).

Trains the ``demo`` preset on CPU with the project's own loop (``pretrain.train.build_phase`` and
``train_step``, data from ``pretrain.data.build_loader``) on Imagenette images from
``../shared/data``, and at every step reads what the DINO loss was handed: the teacher's raw logits
[2B, K] and its centered, sharpened targets, and the student's logits of every crop. Per step:

- ``dino``: the DINO term (mean cross-entropy H(teacher, student) over the crop pairs), and ``ln_k``;
- ``h_teacher`` / ``h_student``: mean entropy of one image's teacher / student distribution (ln K
  means every image gets the uniform distribution: collapse to uniform);
- ``h_teacher_mean`` / ``h_student_mean``: entropy of the batch-mean distribution (0 means every
  image goes to the same prototype: collapse to one);
- ``kl``: ``dino - h_teacher``, the part of the cross-entropy the student could still remove;
- ``t_spread`` / ``s_spread``: std over prototypes of one image's logits divided by the temperature
  (the softmax is near uniform when this is well below 1), teacher logits after centering;
- ``t_image_spread`` / ``s_image_spread``: std over the batch's images of one prototype's logit
  divided by the temperature, averaged over prototypes (near 0: the output ignores the image);
- ``center_spread``: std of the softmax center over prototypes; ``gain``: mean/min/max of the
  prototypes' weight-norm gain g; ``layerscale``: mean |gamma| of the student's LayerScale;
  ``teacher_temp``: the warmup position.

    .venv/bin/python -m benchmarks.measure_dino_plateau [--steps 40] [--images 320] [--set key=value ...]

Prints one line per logged step and a markdown table; ``--out FILE.json`` keeps every step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("step", "teacher_temp", "dino", "ln_k", "h_teacher", "h_teacher_mean", "h_student",
           "h_student_mean", "kl", "t_spread", "s_spread", "t_image_spread", "s_image_spread", "gain_mean", "layerscale")  # fmt: skip


def entropy(p: Tensor) -> Tensor:
    """Entropy in nats of each row of ``p`` [N, K] (rows sum to 1) -> [N]."""
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def distribution_stats(probs: Tensor) -> tuple[float, float]:
    """(mean entropy of the rows, entropy of the mean row) of ``probs`` [N, K]."""
    return float(entropy(probs).mean()), float(entropy(probs.mean(0, keepdim=True))[0])


def step_diagnostics(seen: dict[str, Any], model: Any, teacher_temp: float) -> dict[str, float]:
    """The plateau numbers of one step from what the DINO loss received (see the module docstring)."""
    t_logits, t_probs = seen["teacher_logits"], seen["teacher_probs"]
    s_logits = torch.cat(seen["student"])  # every crop: [(2 + n_local) * B, K]
    s_temp = model.dino_loss.student_temp
    s_probs = torch.softmax(s_logits / s_temp, -1)
    center = model.dino_loss.center.float()
    h_t, h_t_mean = distribution_stats(t_probs)
    h_s, h_s_mean = distribution_stats(s_probs)
    g = model.student.dino_head.last_layer.parametrizations.weight.original0.detach().flatten()
    gammas = [p.detach().abs().mean() for n, p in model.student.backbone.named_parameters() if "gamma" in n]
    n_global = len(seen["student"]) and 2  # the teacher sees the 2 global crops
    s_global = torch.cat(seen["student"][:n_global])
    return {
        "teacher_temp": teacher_temp,
        "ln_k": math.log(t_probs.shape[1]),
        "h_teacher": h_t,
        "h_teacher_mean": h_t_mean,
        "h_student": h_s,
        "h_student_mean": h_s_mean,
        "t_spread": float(((t_logits - center) / teacher_temp).std(-1).mean()),
        "s_spread": float((s_logits / s_temp).std(-1).mean()),
        "t_image_spread": float((t_logits / teacher_temp).std(0).mean()),
        "s_image_spread": float((s_global / s_temp).std(0).mean()),
        "center_spread": float(center.std()),
        "layerscale": float(torch.stack(gammas).mean()) if gammas else float("nan"),
        "gain_mean": float(g.mean()),
        "gain_min": float(g.min()),
        "gain_max": float(g.max()),
    }


def watch_dino_loss(model: Any) -> dict[str, Any]:
    """Record the teacher logits/targets and student logits the DINO loss is handed each step."""
    loss, seen = model.dino_loss, dict[str, Any]()
    teacher_probs, forward = loss.teacher_probs, loss.forward

    def probs(logits: Tensor, temp: float, centering: str = "softmax") -> Tensor:
        out = teacher_probs(logits, temp, centering)
        if logits.shape[1] == loss.out_dim and "teacher_logits" not in seen:  # the DINO call, not iBOT's
            seen["teacher_logits"], seen["teacher_probs"] = logits.detach().float(), out.detach()
        return out

    def fwd(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
        seen["student"] = [s.detach().float() for s in student]
        return forward(student, teacher)

    loss.teacher_probs, loss.forward = probs, fwd
    return seen


def build_dataset(n_images: int, root: Path) -> tuple[str, str]:
    """Every k-th Imagenette image as a dataset version in a scratch catalog -> (catalog, ref)."""
    import pyarrow as pa

    from curation.dataset_version import create_dataset_version
    from data_catalog.catalog import Catalog

    data = Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
    with tarfile.open(data / "imagenette-train-subset.tar.gz") as tar:
        tar.extractall(root / "src", filter="data")
    files = sorted((root / "src").glob("*/*/*.JPEG"))
    files = files[:: max(1, len(files) // n_images)][:n_images]
    catalog = Catalog(str(root / "catalog"))
    selection = pa.table({"image_id": [f"{f.parent.name}-{f.stem}" for f in files],
                          "uri": [str(f) for f in files]})  # fmt: skip
    record = create_dataset_version(catalog, "plateau", selection=selection, shard_max_samples=64, workers=2)
    return catalog.root, record.ref


def measure(steps: int, n_images: int, overrides: list[str], log_every: int) -> list[dict[str, float]]:
    from pretrain import distributed as D
    from pretrain.config import load_config
    from pretrain.data import build_loader, open_dataset
    from pretrain.train import build_phase, train_step

    config = load_config("demo", ["train.num_workers=0", *overrides])
    end = config.train.epochs * config.train.iterations_per_epoch
    info = D.init(use_cuda=False)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        catalog, ref = build_dataset(n_images, Path(tmp))
        shards, _ = open_dataset(catalog, ref)
        phase = build_phase(config, "main", 0, end, info, None)
        seen = watch_dino_loss(phase.model)
        batches = iter(build_loader(config, "main", shards, 0, 1, 0, min(steps, end)))
        clock = time.perf_counter()
        for step in range(min(steps, end)):
            seen.clear()
            out = train_step(config, phase, next(batches), step, info.device)
            row = {"step": step + 1, "dino": float(out["dino"]), "ibot": float(out["ibot"]),
                   "koleo": float(out["koleo"]), "frozen_last_layer": phase.schedule.at(step).last_layer_frozen,
                   **step_diagnostics(seen, phase.model, out["teacher_temp"])}  # fmt: skip
            row["kl"] = row["dino"] - row["h_teacher"]
            rows.append(row)
            if (step + 1) % log_every == 0 or step == 0:
                took = time.perf_counter() - clock
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
                      + f"  ({took:.0f} s)", flush=True)  # fmt: skip
    return rows


def table(rows: list[dict[str, float]], every: int) -> str:
    """A markdown table of the logged steps."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if r["step"] % every == 0 or r["step"] == 1:
            lines.append(
                "| " + " | ".join(f"{r[c]:.4g}" if c != "step" else str(r[c]) for c in COLUMNS) + " |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--images", type=int, default=320)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="demo config key=value")
    p.add_argument("--out", type=Path, default=None, help="write every step's numbers to this JSON file")
    args = p.parse_args()
    rows = measure(args.steps, args.images, args.overrides, args.log_every)
    print(table(rows, args.log_every))
    if args.out is not None:
        args.out.write_text(json.dumps({"overrides": args.overrides, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
