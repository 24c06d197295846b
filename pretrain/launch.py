"""Launch ``pretrain.train`` under torchrun as a child process group and stream its output.

Used by the Prefect ``pretrain`` sub-flow, usable without Prefect. The child runs in its own
session (process group) so that cancelling kills every rank at once, and gets ``SIGTERM`` from the
kernel if this process dies (``PR_SET_PDEATHSIG``), so no rank outlives its launcher. Output is
streamed line by line to callbacks and only a bounded tail is kept in memory (multi-hour runs).
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pretrain.metrics import LOSS_KEYS, parse_metrics

_PR_SET_PDEATHSIG = 1


def default_nproc() -> int:
    """One process per visible GPU, or one CPU process when there is none."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def torchrun_command(
    train_args: Sequence[str], nproc_per_node: int, nnodes: str = "1", rdzv_endpoint: str | None = None
) -> list[str]:
    """``python -m torch.distributed.run ... -m pretrain.train ARGS`` (a standalone rendezvous on 1 node)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc_per_node}",
        f"--nnodes={nnodes}",
    ]
    if rdzv_endpoint:
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}"]
    else:
        cmd += ["--standalone"]
    return [*cmd, "-m", "pretrain.train", *train_args]


def format_metrics(record: dict[str, float]) -> str:
    """A metrics record as one readable log line: ``step 130/200 [main] loss 12.418 (dino 8.320 ...)``."""
    parts = [f"step {record.get('step')}/{record.get('total_steps', '?')} [{record.get('phase', 'main')}]"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4f}")
    terms = [f"{k} {record[k]:.4f}" for k in LOSS_KEYS[1:] if k in record]
    if terms:
        parts.append("(" + ", ".join(terms) + ")")
    if "images_per_s" in record:
        parts.append(f"{record['images_per_s']:.1f} img/s")
    if "lr" in record:
        parts.append(f"lr {record['lr']:.2e}")
    return " ".join(parts)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass(eq=False)
class LaunchedRun:
    """A running process group; ``terminate()`` kills every process in it."""

    process: subprocess.Popen[str]
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))

    def terminate(self, grace_s: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def start(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> LaunchedRun:
    process = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        cwd=cwd,
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    return LaunchedRun(process)


def stream(
    run: LaunchedRun,
    on_line: Callable[[str], None] | None = None,
    on_metrics: Callable[[dict[str, float]], None] | None = None,
) -> int:
    """Forward each output line to the callbacks until the process ends; return its exit code."""
    assert run.process.stdout is not None
    for raw in run.process.stdout:
        line = raw.rstrip("\n")
        run.tail.append(line)
        if on_line is not None:
            on_line(line)
        record = parse_metrics(line)
        if record is not None and on_metrics is not None:
            on_metrics(record)
    return run.process.wait()


def run_streaming(
    cmd: Sequence[str],
    on_line: Callable[[str], None] | None = None,
    on_metrics: Callable[[dict[str, float]], None] | None = None,
    env: dict[str, str] | None = None,
    on_start: Callable[[LaunchedRun], None] | None = None,
) -> tuple[int, list[str]]:
    """Start ``cmd``, stream it, and always kill the whole group if this thread is interrupted."""
    run = start(cmd, env=env)
    if on_start is not None:
        on_start(run)
    try:
        code = stream(run, on_line, on_metrics)
    finally:
        run.terminate()
    return code, list(run.tail)


_ACTIVE: set[LaunchedRun] = set()
_LOCK = threading.Lock()


def register(run: LaunchedRun) -> None:
    with _LOCK:
        _ACTIVE.add(run)


def unregister(run: LaunchedRun) -> None:
    with _LOCK:
        _ACTIVE.discard(run)


def terminate_all() -> int:
    """Kill every registered run's process group (cancellation hooks, signal handlers)."""
    with _LOCK:
        runs = list(_ACTIVE)
    for run in runs:
        run.terminate(grace_s=5.0)
    return len(runs)
