"""Training schedules as pure functions of the step (Oquab et al. 2023, reference ``CosineScheduler``).

Every value a step needs (learning rate, weight decay, teacher momentum, teacher temperature,
whether the head's last layer is frozen) is a closed form of the phase-local step, so a resumed run
needs only the step to continue every schedule exactly. A phase (the main run, or the
high-resolution adaptation) has its own :class:`PhaseSchedule`; the adaptation compresses every
schedule into its steps (paper section 4).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pretrain.config import TrainConfig


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (then constant)."""
    if total_steps <= 0 or step >= total_steps:
        return end
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / total_steps))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, peak: float, final: float) -> float:
    """Linear warmup 0 -> ``peak`` over ``warmup_steps``, then cosine ``peak`` -> ``final`` until ``total_steps``."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    return cosine(step - warmup_steps, total_steps - warmup_steps, peak, final)


def linear_warmup_then_constant(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear ``start`` -> ``end`` over ``warmup_steps``, then ``end`` (the teacher temperature)."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


@dataclass(frozen=True)
class ScheduleValues:
    lr: float  # peak-scaled learning rate of a layer with multiplier 1
    wd: float
    momentum: float  # teacher EMA momentum
    teacher_temp: float
    last_layer_frozen: bool


@dataclass(frozen=True)
class PhaseSchedule:
    """The schedule parameters of one phase, in steps of that phase."""

    total_steps: int
    peak_lr: float
    min_lr: float
    warmup_steps: int
    wd_start: float
    wd_end: float
    momentum_start: float
    momentum_end: float
    teacher_temp_start: float
    teacher_temp: float
    teacher_temp_warmup_steps: int
    freeze_last_layer_steps: int

    def at(self, step: int) -> ScheduleValues:
        """All schedule values at phase-local ``step`` (0-based)."""
        return ScheduleValues(
            lr=warmup_cosine(step, self.warmup_steps, self.total_steps, self.peak_lr, self.min_lr),
            wd=cosine(step, self.total_steps, self.wd_start, self.wd_end),
            momentum=cosine(step, self.total_steps, self.momentum_start, self.momentum_end),
            teacher_temp=linear_warmup_then_constant(
                step, self.teacher_temp_warmup_steps, self.teacher_temp_start, self.teacher_temp
            ),
            last_layer_frozen=step < self.freeze_last_layer_steps,
        )

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def phase_schedule(config: TrainConfig, phase: str, world_size: int) -> PhaseSchedule:
    """The schedule of ``phase`` ("main" or "highres") for ``world_size`` processes.

    Main: epochs of ``iterations_per_epoch`` steps. High-res: ``highres.steps`` steps, every
    epoch-based length scaled by ``steps / (epochs * iterations_per_epoch)`` and the peak learning
    rate multiplied by ``highres.lr_scale``.
    """
    t, o, lo = config.train, config.optim, config.loss
    main_steps = t.epochs * t.iterations_per_epoch
    if phase == "main":
        total, steps_per_epoch, batch, lr_scale = (
            main_steps,
            float(t.iterations_per_epoch),
            t.batch_size_per_device,
            1.0,
        )
    elif phase == "highres":
        total = config.highres.steps
        steps_per_epoch = total / t.epochs
        batch = config.highres.batch_size_per_device or t.batch_size_per_device
        lr_scale = config.highres.lr_scale
    else:
        raise ValueError(f"unknown phase {phase!r}; valid phases: main, highres")
    return PhaseSchedule(
        total_steps=total,
        peak_lr=o.lr(batch * world_size) * lr_scale,
        min_lr=o.min_lr,
        warmup_steps=round(o.warmup_epochs * steps_per_epoch),
        wd_start=o.weight_decay,
        wd_end=o.weight_decay_end,
        momentum_start=o.momentum_teacher,
        momentum_end=o.momentum_teacher_end,
        teacher_temp_start=lo.warmup_teacher_temp,
        teacher_temp=lo.teacher_temp,
        teacher_temp_warmup_steps=round(lo.warmup_teacher_temp_epochs * steps_per_epoch),
        freeze_last_layer_steps=round(o.freeze_last_layer_epochs * steps_per_epoch),
    )


def phases(config: TrainConfig) -> list[tuple[str, int, int]]:
    """``(phase, first_global_step, end_global_step)`` of each phase of a run, in order."""
    main_steps = config.train.epochs * config.train.iterations_per_epoch
    out = [("main", 0, main_steps)]
    if config.highres.enabled:
        out.append(("highres", main_steps, main_steps + config.highres.steps))
    return out
