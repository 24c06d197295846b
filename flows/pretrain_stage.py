"""The ``pretrain`` sub-flow: torchrun as a child process group, its progress shown in Prefect."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from data_catalog.settings import ConfigError
from evaluation.plots import plot_loss_curves
from flows.artifacts import image_markdown, publish_markdown, set_progress, start_progress
from flows.config import PretrainStageConfig
from flows.limits import gpu_slots
from pretrain import launch
from pretrain.config import resume_conflict, save_config
from pretrain.metrics import METRICS_FILE, read_metrics

LAUNCH_CONFIG = "launch_config.yaml"  # the flow's resolved training config; config.yaml is the trainer's


def run_dir_for(catalog: str, dataset: str, stage: PretrainStageConfig) -> Path:
    """Deterministic per (dataset version, preset): a retried task resumes from its checkpoints."""
    root = Path(stage.output_root) if stage.output_root else Path(catalog) / "runs"
    preset = Path(stage.preset).stem
    return root / f"{dataset.replace(':', '-')}-{preset}"


def write_train_config(stage: PretrainStageConfig, run_dir: Path) -> Path:
    """The resolved training config, written into the run directory for the trainer to read.

    What runs is exactly what was validated when the pipeline config loaded. A run directory that
    holds checkpoints trained with other settings is refused here, before torchrun starts, unless
    ``pretrain.resume_anyway`` (the trainer checks again; its run directories are new per dataset
    version, so this meets only a reused ``output_root``).
    """
    remedy = "set pretrain.resume_anyway=true to resume it with them, or another pretrain.output_root"
    conflict = resume_conflict(run_dir, stage.train, remedy)
    if conflict is not None and not stage.resume_anyway:
        raise ConfigError(conflict)
    return save_config(stage.train, run_dir / LAUNCH_CONFIG)


def train_args(catalog: str, dataset: str, stage: PretrainStageConfig, run_dir: Path) -> list[str]:
    """``python -m pretrain.train`` arguments: the config file written by :func:`write_train_config`."""
    args = ["--config", str(run_dir / LAUNCH_CONFIG), "--catalog", catalog, "--dataset", dataset]
    args += ["--output-dir", str(run_dir)]
    if stage.max_steps is not None:
        args += ["--max-steps", str(stage.max_steps)]
    if stage.resume_anyway:
        args.append("--resume-anyway")
    return args


def _kill_children(flow: Any, flow_run: Any, state: Any) -> None:
    """Cancellation/crash hook: no rank may outlive its flow run."""
    launch.terminate_all()


@task(name="torchrun", retries=1, retry_delay_seconds=5)
def torchrun_task(cmd: list[str], run_key: str) -> int:
    """Run torchrun; log lines go to the Prefect log, metrics lines to progress. Retries resume."""
    logger = get_run_logger()
    progress = start_progress(f"{run_key}-progress", "pretraining")
    last_update = [0.0]

    def on_metrics(record: dict[str, float]) -> None:
        total = record.get("total_steps")
        now = time.monotonic()
        if total and now - last_update[0] > 2.0:
            set_progress(progress, min(100.0, 100.0 * float(record["step"]) / float(total)))
            last_update[0] = now

    def on_line(line: str) -> None:
        record = launch.parse_metrics(line)
        logger.info(launch.format_metrics(record) if record is not None else line)

    def on_start(run: launch.LaunchedRun) -> None:
        launch.register(run)
        logger.info("started %s (pid %s, own process group)", " ".join(cmd), run.process.pid)

    code, tail = launch.run_streaming(cmd, on_line=on_line, on_metrics=on_metrics, on_start=on_start)
    if code != 0:
        raise RuntimeError(f"pretraining exited with code {code}; last lines:\n" + "\n".join(tail[-40:]))
    set_progress(progress, 100.0)
    return code


@flow(name="pretrain", on_cancellation=[_kill_children], on_crashed=[_kill_children])
def pretrain(catalog: str, dataset: str, stage: PretrainStageConfig) -> dict[str, Any]:
    """Train DINOv2 on a dataset version (``NAME:vN``); resume if the run directory holds checkpoints."""
    run_dir = run_dir_for(catalog, dataset, stage)
    write_train_config(stage, run_dir)
    nproc = stage.nproc_per_node or launch.default_nproc()
    cmd = launch.torchrun_command(train_args(catalog, dataset, stage, run_dir), nproc)
    with gpu_slots(nproc):  # the global limit on training (flows/limits.py), held across retries
        torchrun_task(cmd, run_key=run_dir.name)
    png = plot_loss_curves(run_dir / METRICS_FILE, run_dir / "loss_curves.png", title=f"{run_dir.name}")
    records = read_metrics(run_dir / METRICS_FILE)
    last = records[-1] if records else {}
    md = f"# Pretraining {run_dir.name}\n\nsteps: {last.get('step')}, last loss: {last.get('loss')}\n\n"
    if png is not None:
        md += image_markdown(png, "loss curves")
    publish_markdown(f"{run_dir.name}-report", md, "pretraining losses")
    return {"run_dir": str(run_dir), "steps": last.get("step"), "loss": last.get("loss"), "nproc": nproc}
