"""The GPU code paths: bf16 autocast with fused AdamW, torch.compile'd blocks, NCCL under torchrun.

Skipped without CUDA (this project's CI is CPU only; tests/test_mixed_precision.py runs the bf16
step on CPU). On a GPU machine: ``.venv/bin/python -m pytest -q -m gpu``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from pretrain import distributed as D
from pretrain.config import load_config
from pretrain.metrics import METRICS_FILE, read_metrics
from pretrain.train import build_phase, train_step
from tests.test_ssl_parity import SMALL, random_batch
from tests.test_train import TINY, write_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
STEP = [
    "train.epochs=1",
    "train.iterations_per_epoch=4",
    "optim.warmup_epochs=0",
    "optim.freeze_last_layer_epochs=0",
]


def _cuda_phase(overrides: list[str]) -> tuple[Any, Any]:
    cfg = load_config("demo", [*SMALL, *STEP, *overrides])
    info = D.DistInfo(0, 1, 0, torch.device("cuda", 0))
    return cfg, build_phase(cfg, "main", 0, 4, info, None)


def _on_cuda(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}


def test_bf16_autocast_and_fused_adamw_step_on_cuda() -> None:
    cfg, phase = _cuda_phase(["train.precision=auto"])  # auto: bf16 autocast on CUDA
    assert phase.optimizer.defaults.get("fused"), "AdamW must use the fused CUDA kernels"
    seen: list[torch.dtype] = []
    phase.model.student.backbone.blocks[0].attn.qkv.register_forward_hook(
        lambda _m, _i, o: seen.append(o.dtype)
    )
    before = {k: p.detach().clone() for k, p in phase.model.student.named_parameters()}
    out = train_step(cfg, phase, _on_cuda(random_batch(cfg)), 0, torch.device("cuda", 0))
    assert set(seen) == {torch.bfloat16}
    assert all(math.isfinite(float(out[k])) for k in ("loss", "dino", "ibot", "koleo"))
    params = dict(phase.model.student.named_parameters())
    assert not [k for k, p in params.items() if p.requires_grad and torch.equal(p, before[k])]


def test_compiled_blocks_give_the_eager_losses_on_cuda() -> None:
    losses = {}
    for compiled in (False, True):
        cfg, phase = _cuda_phase([f"train.compile={str(compiled).lower()}"])
        batch = _on_cuda(random_batch(cfg))
        out = [train_step(cfg, phase, batch, step, torch.device("cuda", 0)) for step in range(2)]
        losses[compiled] = [float(o["loss"]) for o in out]
    assert all(math.isfinite(v) for v in losses[True])
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)  # bf16: kernels differ, not the math


NCCL_SCRIPT = """
import torch, torch.distributed as dist
from pretrain import distributed as D
info = D.init()
assert dist.get_backend() == "nccl", dist.get_backend()
mean = D.all_reduce_mean(torch.tensor([float(info.rank)], device=info.device))
assert abs(mean.item() - (info.world_size - 1) / 2) < 1e-6, mean
model = D.wrap_ddp(torch.nn.Linear(4, 1).to(info.device), info.device)
model(torch.full((2, 4), float(info.rank + 1), device=info.device)).sum().backward()
grads = [torch.zeros(1, 4, device=info.device) for _ in range(info.world_size)]
dist.all_gather(grads, model.module.weight.grad)
assert all(torch.equal(g, grads[0]) for g in grads), "DDP gradients differ between ranks"
D.shutdown()
print("NCCL_OK", info.world_size)
"""


def _torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_nccl_process_group_all_reduce_and_ddp(tmp_path: Path) -> None:
    script = tmp_path / "nccl_check.py"
    script.write_text(textwrap.dedent(NCCL_SCRIPT))
    nproc = min(2, torch.cuda.device_count())
    done = _torchrun(nproc, [str(script)])
    assert done.stdout.count("NCCL_OK") == nproc


def test_torchrun_training_on_gpus_bf16_fused_nccl(imagenette_dir: Path, tmp_path: Path) -> None:
    """The trainer as the flow starts it, on every visible GPU (at most 2): NCCL, DDP, bf16, fused AdamW."""
    files = sorted(imagenette_dir.glob("*/*.JPEG"))[::10][:160]
    data = write_dataset(files, tmp_path / "ds")
    out = tmp_path / "run"
    sets = sum((["--set", s] for s in [*TINY, "train.checkpoint_every=2"]), [])
    nproc = min(2, torch.cuda.device_count())
    args = [
        "-m",
        "pretrain.train",
        "--config",
        "demo",
        *data,
        "--output-dir",
        str(out),
        "--max-steps",
        "4",
        *sets,
    ]
    _torchrun(nproc, args)
    rows = read_metrics(out / METRICS_FILE)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in rows) and "cuda_max_allocated_mb" in rows[-1]
    assert (out / "teacher_backbone.safetensors").exists()
