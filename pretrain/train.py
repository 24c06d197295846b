"""Pretraining entry point (DINOv2, or SSCD copy detection): 1 CPU, 1 GPU or N GPUs (``torchrun``),
exact resume, high-res phase.

    python -m pretrain.train --config demo --catalog CATALOG --dataset NAME[:VERSION] \\
        --output-dir RUN [--max-steps N] [--checkpoint-every N] [--set key=value ...]
    torchrun --nproc_per_node 8 -m pretrain.train --config vitl14 ...

``--dataset`` may also be the path of a shard index JSON (no catalog needed). The run directory gets
``config.yaml`` (resolved), ``metrics.jsonl`` (one line per logged step), ``checkpoints/`` and, at
the end, what the objective hands on (``pretrain/objectives.py``): for ``dinov2`` the teacher
backbone (``teacher_backbone.safetensors`` plus official and Hugging Face layouts under ``export/``),
for ``sscd`` the copy descriptor (``copy_descriptor.safetensors``). Started again on a directory with checkpoints, it resumes from the
newest valid one: the losses continue step for step as if never interrupted. If the new config
differs from the directory's ``config.yaml`` (bookkeeping keys aside: ``pretrain.config.RESUME_FREE_KEYS``)
it stops before any work, listing the differing keys: pass ``--resume-anyway`` or a new directory.
``--max-steps`` is an argument, not config: raising it resumes a run for more steps. Each logged
step is also printed as ``DINOFLOW_METRICS {json}`` for the Prefect sub-flow.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from data_catalog.settings import ConfigError
from pretrain import checkpoint as ckpt
from pretrain import distributed as D
from pretrain.config import TrainConfig, config_differences, load_config, resume_conflict, save_config
from pretrain.data import build_loader, derive_seed, open_dataset, seed_everything
from pretrain.export import full_backbone, register, run_record
from pretrain.metrics import METRICS_FILE, append_metrics, metrics_line, truncate_metrics
from pretrain.objectives import get_objective
from pretrain.optim import apply_schedule, build_optimizer, param_groups
from pretrain.schedules import PhaseSchedule, phase_schedule, phases


class NonFiniteLossError(RuntimeError):
    """The loss turned NaN/inf: the run stops before applying the update; checkpoints stay."""


class RunLog:
    """``metrics.jsonl``, progress lines and the catalog record of one run (rank 0 writes)."""

    def __init__(self, run_dir: Path, config: TrainConfig, info: D.DistInfo, total_steps: int) -> None:
        self.run_dir, self.config, self.info, self.total_steps = run_dir, config, info, total_steps
        self.path = run_dir / METRICS_FILE
        self.last_loss: float | None = None
        self.started_at = datetime.now(UTC)
        self.dataset: dict[str, Any] = {}
        self.shards: list[Any] = []
        self._bar: Any = None

    def start(self, step: int) -> None:
        """Drop lines past ``step`` (written after the checkpoint we resume from), start the clock."""
        if self.info.is_main:
            truncate_metrics(self.path, lambda record: record["step"] <= step)
        if self.info.is_main and sys.stdout.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_steps, initial=step, unit="step", dynamic_ncols=True)
        self._clock, self._clock_step = time.perf_counter(), step

    def record(self, step: int, phase: str, out: dict[str, Any], global_batch: int) -> None:
        """Average the losses over ranks (a collective) and write one line (rank 0)."""
        keys = ["loss", *out["terms"]]  # the weighted total, then the objective's unweighted terms
        means = D.all_reduce_mean(torch.stack([out[k].float() for k in keys])).tolist()
        now = time.perf_counter()
        rate = (step - self._clock_step) * global_batch / max(now - self._clock, 1e-9)
        self._clock, self._clock_step = now, step
        row = {"step": step, "phase": phase, **dict(zip(keys, means, strict=True))}
        row |= {k: out[k] for k in ("lr", "wd", "momentum", "teacher_temp")}
        row |= {"images_per_s": rate, "total_steps": self.total_steps, "time": time.time()}
        row["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        if self.info.device.type == "cuda":
            row["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(self.info.device) / 2**20
        self.last_loss = row["loss"]
        if not self.info.is_main:
            return
        append_metrics(self.path, row)
        line = metrics_line(row)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{row['loss']:.4f}", phase=phase)
            self._bar.write(line)
        else:
            print(line, flush=True)

    def export(self, model: Any, config: TrainConfig) -> None:
        """What the objective hands on, e.g. the teacher backbone in every layout (FSDP: gathered
        first, a collective)."""
        objective = get_objective(config.objective)
        template = None
        if config.train.fsdp and D.is_enabled():
            size = objective.image_size(config, "main")
            template = objective.build_model(config, size).export_module()  # type: ignore[operator]
        module = full_backbone(model.export_module(), template)
        if module is not None:
            paths = objective.export(module, self.run_dir)
            print(f"exported {objective.what}: {json.dumps(paths)}", flush=True)
        D.barrier()


def register_run(
    args: argparse.Namespace, config: TrainConfig, log: RunLog, status: str, steps: int | None = None
) -> None:
    """Upsert the run's row in the catalog ``runs`` table (rank 0; no-op without ``--catalog``)."""
    if args.catalog is None or not log.info.is_main:
        return
    row = run_record(
        args.run_id or log.run_dir.name,
        json.dumps(config.model_dump(mode="json")),
        str(log.run_dir),
        log.dataset,
        status,
        log.started_at,
        steps,
        log.last_loss,
    )
    register(args.catalog, row)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pretrain.train", description=__doc__.split("\n")[0])
    p.add_argument(
        "--config", default="demo", help="preset name (vits14, vitb14, vitl14, vitg14, demo) or YAML file"
    )
    p.add_argument("--catalog", default=None, help="catalog root (resolves --dataset, records the run)")
    p.add_argument(
        "--dataset", required=True, help="NAME[:VERSION] in the catalog, or a shard index JSON path"
    )
    p.add_argument("--output-dir", required=True, help="run directory (resumes when it holds checkpoints)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many global steps")
    p.add_argument("--checkpoint-every", type=int, default=None, help="override train.checkpoint_every")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    p.add_argument(
        "--resume-anyway",
        action="store_true",
        help="resume the checkpoints in --output-dir even though their config.yaml differs from this config",
    )
    p.add_argument("--run-id", default=None, help="catalog run id (default: the output dir's name)")
    return p.parse_args(argv)


@dataclass
class Phase:
    """Everything one phase of training needs, built for the process's device and rank."""

    name: str
    first_step: int
    end_step: int
    schedule: PhaseSchedule
    model: Any  # the objective's model (pretrain.objectives: student, losses, update_teacher, ...)
    optimizer: torch.optim.Optimizer
    student: Any  # the DDP-wrapped student, or the student itself
    extras: dict[str, Any] = field(default_factory=dict)


def _autocast(config: TrainConfig, device: torch.device) -> Any:
    precision = config.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def build_phase(
    config: TrainConfig, name: str, first: int, end: int, info: D.DistInfo, resume: Path | None
) -> Phase:
    """Model, optimizer and DDP/FSDP wrapping of a phase; loads ``resume`` (pos_embed adapted)."""
    seed_everything(derive_seed(config.train.seed, 1234))  # same initial weights on every rank
    fsdp = config.train.fsdp and D.is_enabled()
    objective = get_objective(config.objective)
    size = objective.image_size(config, name if not fsdp else "main")  # FSDP: main-phase grid
    model: Any = objective.build_model(config, size).to(info.device)
    if resume is None and config.model.init_backbone:  # a new run continues from given weights
        model.load_backbone_weights(config.model.init_backbone)
    model.train()
    student_vit: Any = model.student.backbone
    if config.train.compile:
        for vit in model.backbones():
            for blk in vit.blocks:
                blk.compile()
    if fsdp:
        mp = torch.bfloat16 if info.device.type == "cuda" else None
        for module, vit in model.fsdp_units():
            D.shard_fsdp(module, list(vit.blocks), mp)
    groups = param_groups(
        model.student.named_parameters(),
        student_vit.n_blocks,
        config.optim.layerwise_decay,
        config.optim.patch_embed_lr_mult,
    )
    optimizer = build_optimizer(groups, (config.optim.beta1, config.optim.beta2))
    extras: dict[str, Any] = {}
    if resume is not None:
        same_phase = ckpt.read_extras(resume).get("phase") == name
        extras = ckpt.load(resume, model, optimizer if same_phase else None)
    student = model.student if fsdp else D.wrap_ddp(model.student, info.device)
    schedule = phase_schedule(config, name, info.world_size)
    return Phase(name, first, end, schedule, model, optimizer, student, extras)


def train_step(
    config: TrainConfig, phase: Phase, batch: dict[str, Any], step: int, device: torch.device
) -> dict:
    """One optimizer step at global ``step``: schedules, losses, NaN check, backward, clip, step, EMA."""
    values = phase.schedule.at(step - phase.first_step)
    apply_schedule(phase.optimizer, values.lr, values.wd, values.last_layer_frozen)
    seed_everything(derive_seed(config.train.seed, 99, step, D.get_rank()))  # drop-path randomness
    with _autocast(config, device):
        total, parts = phase.model.losses(batch, values.teacher_temp, phase.student)
    if config.debug.nan_at_step == step + 1:  # steps are counted from 1, as in metrics.jsonl
        total = total * float("nan")
    if not D.all_ranks_true(bool(torch.isfinite(total.detach()).item()), device):
        detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
        raise NonFiniteLossError(f"loss is {total.item()} at step {step + 1} (phase {phase.name}; {detail})")
    phase.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if config.optim.clip_grad > 0:
        for module in phase.model.student.children():  # per module, like the reference
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.optim.clip_grad)
    if values.last_layer_frozen:
        for name, p in phase.model.student.named_parameters():
            if "last_layer" in name:
                p.grad = None
    phase.optimizer.step()
    phase.model.update_teacher(values.momentum)
    return {
        "loss": total.detach(),
        **parts,
        "terms": list(parts),
        "lr": values.lr,
        "wd": values.wd,
        "momentum": values.momentum,
        "teacher_temp": values.teacher_temp,
    }


def _device_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def run_phase(
    config: TrainConfig,
    phase: Phase,
    start: int,
    stop: int,
    batches: Iterator[dict],
    log: RunLog,
    info: D.DistInfo,
) -> int:
    """Train global steps ``start .. stop - 1``; checkpoint every N and at ``stop``. Returns ``stop``."""
    t = config.train
    global_batch = (
        config.highres.batch_size_per_device if phase.name == "highres" else None
    ) or t.batch_size_per_device
    global_batch *= info.world_size
    for step in range(start, stop):
        batch = next(batches)
        if batch["step"] != step:
            raise RuntimeError(f"data loader delivered step {batch['step']} for step {step}")
        out = train_step(config, phase, _device_batch(batch, info.device), step, info.device)
        done = step + 1
        if done % t.log_every == 0 or done == stop:
            log.record(done, phase.name, out, global_batch)
        if done % t.checkpoint_every == 0 or done == stop:
            extras = {
                "phase": phase.name,
                "schedule": phase.schedule.as_dict(),
                "data": {
                    "step": done,
                    "seed": t.seed,
                    "num_workers": t.num_workers,
                    "world_size": info.world_size,
                },
                "config": config.model_dump(mode="json"),
            }
            ckpt.save(
                log.run_dir / "checkpoints",
                done,
                phase.model,
                phase.optimizer,
                extras,
                t.keep_last,
                config.train.fsdp and D.is_enabled(),
            )
    return stop


def train(config: TrainConfig, args: argparse.Namespace, info: D.DistInfo, log: RunLog) -> int:
    """All phases from the newest valid checkpoint on; returns the last completed global step."""
    shards = log.shards
    found = ckpt.latest_valid(log.run_dir / "checkpoints")
    step = int(found[1]["step"]) if found else 0
    if found and info.is_main:
        diffs = config_differences(found[1].get("config") or {}, config)
        if diffs:  # only with --resume-anyway: resolve_config refused it otherwise
            print(f"warning: resuming {found[0]} with other settings: {'; '.join(diffs)}", flush=True)
    log.start(step)
    limit = args.max_steps if args.max_steps is not None else phases(config)[-1][2]
    phase = None
    for name, first, end in phases(config):
        stop = min(end, limit)
        if step >= stop:
            continue
        resume = ckpt.latest_valid(log.run_dir / "checkpoints")
        phase = build_phase(config, name, first, end, info, resume[0] if resume else None)
        loader = build_loader(
            config, name, shards, info.rank, info.world_size, step, stop, info.device.type == "cuda"
        )
        step = run_phase(config, phase, step, stop, iter(loader), log, info)
    objective = get_objective(config.objective)
    if phase is not None:
        log.export(phase.model, config)
    elif found and info.is_main and not (log.run_dir / objective.exported_file).exists():
        # killed between the last checkpoint and the export
        objective.export(objective.from_checkpoint(found[0]), log.run_dir)
    return step


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """The validated config of this start; a mistake, or a run directory trained with other settings
    (unless ``--resume-anyway``), is a one-line ConfigError, raised before any work starts."""
    overrides = list(args.overrides)
    if args.checkpoint_every is not None:
        overrides.append(f"train.checkpoint_every={args.checkpoint_every}")
    config = load_config(args.config, overrides)
    conflict = resume_conflict(args.output_dir, config)
    if conflict is not None and not args.resume_anyway:
        raise ConfigError(conflict)
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = resolve_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    info = D.init()
    if info.device.type == "cpu":
        D.set_cpu_threads(info.world_size, config.train.num_workers)
    run_dir = Path(args.output_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    D.barrier()
    log = RunLog(run_dir, config, info, total_steps=min(args.max_steps or 1 << 62, phases(config)[-1][2]))
    log.shards, log.dataset = open_dataset(args.catalog, args.dataset)
    register_run(args, config, log, status="running")
    try:
        step = train(config, args, info, log)
    except NonFiniteLossError as exc:
        last = ckpt.latest_valid(run_dir / "checkpoints")
        where = last[0] if last else "none (no checkpoint was written yet)"
        print(f"DINOFLOW_ERROR {exc}; the update was not applied; last good checkpoint: {where}", flush=True)
        register_run(args, config, log, status="failed")
        D.shutdown()
        return 3
    except ckpt.CheckpointMismatchError as exc:  # --resume-anyway across a change of trainable parameters
        print(f"error: {exc}", file=sys.stderr, flush=True)
        register_run(args, config, log, status="failed")
        D.shutdown()
        return 2
    except BaseException:
        register_run(args, config, log, status="failed")
        raise
    register_run(args, config, log, status="completed", steps=step)
    if info.is_main:
        print(f"DINOFLOW_DONE {json.dumps({'step': step, 'run_dir': str(run_dir)})}", flush=True)
    D.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
