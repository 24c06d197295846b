"""Training checkpoints: atomic, last K kept, newest valid one found on restart.

Layout under ``RUN/checkpoints/``::

    step_00001250.pt        one file (replicated training): written by rank 0 as a temp file, renamed
    step_00001250.dcp/      a torch.distributed.checkpoint directory (FSDP): every rank writes its
                            shards into ``step_....dcp.tmp/``, rank 0 adds ``extras.pt`` and renames

A checkpoint holds the whole SSL model (student, teacher, loss centers), the optimizer, the step and
phase, the schedule parameters, the data position, every rank's RNG states (torch, numpy, python)
and the resolved config. DCP checkpoints reshard on load, so they resume on another process count.
A file that fails to load (a crash mid-write cannot produce one, but a disk can) is skipped with a
warning and the next older checkpoint is used.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pretrain import distributed as D

FORMAT = 1
_NAME = re.compile(r"^step_(\d{8})\.(pt|dcp)$")


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's optimizer was built over other trainable parameters than this model's."""


def checkpoint_name(step: int, sharded: bool) -> str:
    return f"step_{step:08d}.{'dcp' if sharded else 'pt'}"


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the finished checkpoints, oldest first (temp names are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prune(ckpt_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (and stale temp files); returns the deleted."""
    ckpts = list_checkpoints(ckpt_dir)
    doomed = [p for _, p in ckpts[: max(len(ckpts) - keep_last, 0)]]
    doomed += [p for p in Path(ckpt_dir).glob("step_*.tmp")]
    for path in doomed:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return doomed


def save(
    ckpt_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extras: dict[str, Any],
    keep_last: int,
    sharded: bool = False,
) -> Path:
    """Write a checkpoint of ``step`` (a collective: every rank calls it). Returns its path.

    ``extras`` (phase, schedule, data position, config ...) is stored as given; the RNG states of all
    ranks are added as ``extras["rng"]``.
    """
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / checkpoint_name(step, sharded)
    extras = {**extras, "format": FORMAT, "step": step, "rng": D.gather_objects(rng_state())}
    if D.get_rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    D.barrier()
    if sharded:
        _save_dcp(path, model, optimizer, extras)
    elif D.get_rank() == 0:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **extras}
        _atomic_torch_save(state, path)
    D.barrier()
    if D.get_rank() == 0:
        prune(ckpt_dir, keep_last)
    D.barrier()
    return path


def _save_dcp(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, extras: dict[str, Any]) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = path.with_name(path.name + ".tmp")
    if D.get_rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)
    D.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp))
    D.barrier()
    if D.get_rank() == 0:
        _atomic_torch_save(extras, tmp / "extras.pt")
        os.replace(tmp, path)


def read_extras(path: str | Path) -> dict[str, Any]:
    """The non-tensor part of a checkpoint (step, phase, data position, RNG, config)."""
    path = Path(path)
    if path.suffix == ".dcp":
        return torch.load(path / "extras.pt", map_location="cpu", weights_only=False)
    state = torch.load(path, map_location="cpu", weights_only=False)
    return {k: v for k, v in state.items() if k not in ("model", "optimizer")}


def latest_valid(ckpt_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose metadata loads, with its extras; broken ones are skipped."""
    for _step, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            extras = read_extras(path)
            if extras.get("format") != FORMAT:
                raise ValueError(f"format {extras.get('format')!r} != {FORMAT}")
            return path, extras
        except Exception as exc:  # noqa: BLE001 - a broken checkpoint must not stop the resume
            warnings.warn(f"skipping unreadable checkpoint {path}: {exc}", stacklevel=2)
    return None


def adapt_pos_embed(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resize every ``*pos_embed`` whose grid differs from ``model``'s (bicubic, class token kept)."""
    target = model.state_dict()
    out = dict(state)
    for key, value in state.items():
        if key.endswith("pos_embed") and key in target and value.shape != target[key].shape:
            from pretrain.models.io import resize_pos_embed

            n_new = target[key].shape[1] - 1
            side = int(round(n_new**0.5))
            out[key] = resize_pos_embed(value, (side, side))
    return out


def load(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (strict) and ``optimizer`` (skipped when None); returns extras.

    Position embeddings of another grid are interpolated (a main-phase checkpoint loaded by the
    high-resolution phase). DCP checkpoints load into the current sharding, whatever the number of
    processes that wrote them.
    """
    path = Path(path)
    if path.suffix == ".dcp":
        return _load_dcp(path, model, optimizer)
    state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(adapt_pos_embed(state["model"], model), strict=True)
    if optimizer is not None:
        _check_groups(path, state["optimizer"], optimizer)
        optimizer.load_state_dict(state["optimizer"])
    return {k: v for k, v in state.items() if k not in ("model", "optimizer")}


def _check_groups(path: Path, saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """One line instead of torch's ValueError when the parameter groups differ in number or size
    (e.g. a run trained before the DINO head's weight-norm gain became trainable, resumed anyway)."""
    old = [len(g["params"]) for g in saved["param_groups"]]
    new = [len(g["params"]) for g in optimizer.param_groups]
    if old != new:
        raise CheckpointMismatchError(
            f"{path} holds optimizer state for other trainable parameters ({sum(old)} in {len(old)} groups, "
            f"this model trains {sum(new)} in {len(new)}): resume it with the settings it was trained with "
            "(its run's config.yaml; a run from before the trainable head gain needs "
            "heads.dino.norm_last_layer=true) or start a new --output-dir"
        )


def _load_dcp(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Load a DCP checkpoint into the current sharding (any process count).

    Parameters that had no optimizer state when saved (the head's last layer while frozen: its
    gradient is None) get none after loading either, as in the uninterrupted run; the state that
    ``get_state_dict`` materialises for them is dropped.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    if optimizer is None:
        model_sd = get_model_state_dict(model)
        dcp.load({"model": model_sd}, checkpoint_id=str(path))
        set_model_state_dict(model, model_sd)
        return read_extras(path)
    saved = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    box: dict[str, Any] = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(box, checkpoint_id=str(path), planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(model, optimizer, model_state_dict=box["model"], optim_state_dict=box["optimizer"])
    for name, param in model.named_parameters():
        if not any(k.startswith(f"optimizer.state.{name}.") for k in saved):
            optimizer.state.pop(param, None)
    return read_extras(path)
