"""The training objectives the engine runs, by name (``TrainConfig.objective``; DESIGN.md habit 6).

An :class:`Objective` bundles what differs between them; everything else (data order, optimizer,
schedules, checkpoints, exact resume, torchrun/DDP/FSDP, metrics) is the one engine of
``pretrain/train.py``. The model an objective builds offers the loop's interface: ``student`` (the
trained module, with a ``backbone``), ``losses(batch, teacher_temp, student)``,
``update_teacher(momentum)``, ``backbones()``, ``fsdp_units()`` and ``export_module()``.

- ``dinov2``: student/teacher self-distillation (``pretrain/ssl.py``), multi-crop data; exports
  the teacher backbone in three layouts.
- ``sscd``: copy detection (``pretrain/sscd.py``), edited views; exports the copy descriptor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pretrain.config import TrainConfig


@dataclass(frozen=True)
class Objective:
    name: str
    build_model: Callable[[TrainConfig, int], nn.Module]  # (config, image side) -> model
    build_data: Callable[
        [TrainConfig, str], tuple[Callable, Callable]
    ]  # (config, phase) -> transform, collate
    image_size: Callable[[TrainConfig, str], int]  # side of the model's images in a phase
    export: Callable[[nn.Module, Path], dict[str, str]]  # (unsharded export_module(), run dir) -> paths
    exported_file: str  # run-relative path that exists once the run has exported
    from_checkpoint: Callable[[Path], nn.Module]  # a checkpoint's export_module(), for export()
    what: str  # what export() writes, for the log line


def _dinov2() -> Objective:
    from pretrain.data import build_multicrop_data, phase_crops
    from pretrain.export import LAYOUT_PATHS, export_teacher, teacher_from_checkpoint
    from pretrain.ssl import build_ssl_model

    return Objective(
        name="dinov2",
        build_model=build_ssl_model,
        build_data=build_multicrop_data,
        image_size=lambda config, phase: phase_crops(config, phase)[0],
        export=export_teacher,
        exported_file=LAYOUT_PATHS["dinoflow"],
        from_checkpoint=teacher_from_checkpoint,
        what="teacher backbone",
    )


def _sscd() -> Objective:
    from pretrain import sscd

    return Objective(
        name="sscd",
        build_model=sscd.build_sscd_model,
        build_data=sscd.build_edit_data,
        image_size=sscd.image_size,
        export=sscd.export_descriptor,
        exported_file=sscd.DESCRIPTOR_FILE,
        from_checkpoint=sscd.descriptor_from_checkpoint,
        what="copy descriptor",
    )


OBJECTIVES: dict[str, Callable[[], Objective]] = {"dinov2": _dinov2, "sscd": _sscd}


def get_objective(name: str) -> Objective:
    """The objective called ``name``; a ValueError listing the valid names otherwise."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid objectives: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]()


def export_from_checkpoint(path: str | Path, run_dir: str | Path) -> dict[str, str]:
    """What a finished run of the checkpoint's objective exports, written from the checkpoint."""
    from pretrain.checkpoint import read_extras

    config: dict[str, Any] = read_extras(path).get("config") or {}
    objective = get_objective(config.get("objective", "dinov2"))
    return objective.export(objective.from_checkpoint(Path(path)), Path(run_dir))
