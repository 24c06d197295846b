"""What a finished run hands on: the teacher backbone in three layouts, and its catalog record.

    python -m pretrain.export --run-dir RUN [--checkpoint RUN/checkpoints/step_....pt]

writes ``RUN/teacher_backbone.safetensors`` (dinoflow layout) and ``RUN/export/official/`` and
``RUN/export/hf/`` (the reference repository's and Hugging Face's layouts) from the newest (or the
given) checkpoint; a checkpoint of another objective (``sscd``) gets that objective's export
(``RUN/copy_descriptor.safetensors``, ``pretrain/objectives.py``). The trainer exports itself at
the end of a run.
"""

from __future__ import annotations

import argparse
import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain import distributed as D
from pretrain.metrics import METRICS_FILE

LAYOUT_PATHS = {
    "dinoflow": "teacher_backbone.safetensors",
    "official": "export/official/teacher_backbone.pth",
    "hf": "export/hf",
}


def full_backbone(backbone: nn.Module, template: nn.Module | None = None) -> nn.Module | None:
    """An unsharded CPU copy of ``backbone`` (FSDP: gathered, a collective; returns None off rank 0)."""
    params = list(backbone.parameters())
    sharded = any(type(p).__name__ == "DTensor" for p in params)
    if not sharded:
        return copy.deepcopy(backbone).cpu().eval() if D.get_rank() == 0 else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(backbone, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if D.get_rank() != 0:
        return None
    assert template is not None, "an unsharded template backbone is needed to export an FSDP model"
    template.load_state_dict(state, strict=True)
    return template.cpu().eval()


def export_teacher(
    backbone: nn.Module, run_dir: str | Path, layouts: tuple[str, ...] = tuple(LAYOUT_PATHS)
) -> dict[str, str]:
    """Save an (unsharded) backbone in each layout under ``run_dir``; returns ``{layout: path}``."""
    from pretrain.models.io import save_backbone

    run_dir = Path(run_dir)
    out = {}
    for layout in layouts:
        if layout not in LAYOUT_PATHS:
            raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUT_PATHS)}")
        path = run_dir / LAYOUT_PATHS[layout]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_backbone(backbone, path, layout=layout)
        out[layout] = str(path)
    return out


def checkpoint_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of a single-file checkpoint or a DCP directory (CPU tensors)."""
    path = Path(path)
    if path.suffix == ".dcp":
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        flat = path.with_suffix(".flat.pt")
        dcp_to_torch_save(str(path), str(flat))
        state = torch.load(flat, map_location="cpu", weights_only=False)["model"]
        flat.unlink()
        return state
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def teacher_from_checkpoint(path: str | Path) -> nn.Module:
    """The teacher backbone of a single-file checkpoint (or a DCP directory) as an nn.Module."""
    from pretrain.checkpoint import read_extras
    from pretrain.config import TrainConfig
    from pretrain.ssl import build_ssl_model

    path = Path(path)
    extras = read_extras(path)
    config = TrainConfig.model_validate(extras["config"])
    state = checkpoint_state(path)
    prefix = "teacher.backbone."
    backbone_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    grid = int(round((backbone_state["pos_embed"].shape[1] - 1) ** 0.5))
    model = build_ssl_model(config, grid * config.model.patch_size)
    model.teacher.backbone.load_state_dict(backbone_state, strict=True)
    return model.teacher.backbone.eval()


def run_record(
    run_id: str,
    config_json: str,
    output_dir: str,
    dataset: dict[str, Any],
    status: str,
    started_at: datetime,
    steps: int | None = None,
    last_loss: float | None = None,
) -> dict[str, Any]:
    """A row of the catalog ``runs`` table for a pretraining run."""
    run_dir = Path(output_dir)
    ckpts = sorted((run_dir / "checkpoints").glob("step_*[0-9].*"))
    backbone = run_dir / LAYOUT_PATHS["dinoflow"]
    return {
        "run_id": run_id,
        "name": run_dir.name,
        "kind": "pretrain",
        "dataset": dataset.get("name"),
        "dataset_version": dataset.get("version"),
        "config_json": config_json,
        "output_dir": str(run_dir.resolve()),
        "status": status,
        "started_at": started_at,
        "finished_at": None if status == "running" else datetime.now(UTC),
        "steps": steps,
        "last_loss": last_loss,
        "checkpoint_uri": str(ckpts[-1].resolve()) if ckpts else None,
        "backbone_uri": str(backbone.resolve()) if backbone.exists() and status == "completed" else None,
        "metrics_uri": str((run_dir / METRICS_FILE).resolve()),
    }


def register(catalog: str | None, row: dict[str, Any]) -> None:
    """Upsert ``row`` into the catalog's ``runs`` table (no-op without a catalog)."""
    if catalog is None:
        return
    from data_catalog.catalog import Catalog
    from data_catalog.runs import register_run

    register_run(Catalog(catalog), row)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pretrain.export", description="Export a run's teacher backbone."
    )
    p.add_argument("--run-dir", required=True)
    p.add_argument("--checkpoint", default=None, help="default: the newest valid checkpoint of the run")
    p.add_argument("--layouts", default=",".join(LAYOUT_PATHS), help="comma-separated: dinoflow,official,hf")
    args = p.parse_args(argv)
    from pretrain.checkpoint import latest_valid

    path = args.checkpoint
    if path is None:
        found = latest_valid(Path(args.run_dir) / "checkpoints")
        if found is None:
            raise SystemExit(f"no valid checkpoint under {args.run_dir}/checkpoints")
        path = found[0]
    from pretrain.checkpoint import read_extras

    if (read_extras(path).get("config") or {}).get("objective", "dinov2") != "dinov2":
        from pretrain.objectives import export_from_checkpoint  # e.g. sscd: the copy descriptor

        print(json.dumps(export_from_checkpoint(path, args.run_dir), indent=2))
        return 0
    out = export_teacher(teacher_from_checkpoint(path), args.run_dir, tuple(args.layouts.split(",")))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
