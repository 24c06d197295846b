"""The mixed-precision train step (``train.precision=bf16``: bf16 autocast) runs on CPU.

On GPU ``precision: auto`` means bf16 autocast, a path this project's CI (CPU only) never takes by
default; here it is forced on CPU, so a dtype bug in the losses, heads or optimizer step shows up
without a GPU. The GPU versions live in tests/test_gpu_paths.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from pretrain import distributed as D
from pretrain.config import load_config
from pretrain.train import build_phase, train_step
from tests.test_ssl_parity import SMALL, random_batch


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_train_step_under_bf16_autocast_is_finite_and_updates(precision: str) -> None:
    cfg = load_config(
        "demo",
        [*SMALL, f"train.precision={precision}", "train.epochs=1", "train.iterations_per_epoch=2",
         "optim.warmup_epochs=0", "optim.freeze_last_layer_epochs=0"],
    )  # fmt: skip
    info = D.DistInfo(0, 1, 0, torch.device("cpu"))
    phase = build_phase(cfg, "main", 0, 2, info, None)
    seen: list[torch.dtype] = []
    backbone: Any = phase.model.student.backbone
    qkv = backbone.blocks[0].attn.qkv  # a matmul: bf16 under autocast
    qkv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    before = {k: p.detach().clone() for k, p in phase.model.student.named_parameters()}
    out = train_step(cfg, phase, random_batch(cfg), 0, torch.device("cpu"))
    assert seen and set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert all(math.isfinite(float(out[k])) for k in ("loss", "dino", "ibot", "koleo"))
    params = dict(phase.model.student.named_parameters())
    assert all(p.dtype == torch.float32 for p in params.values())  # autocast keeps fp32 master weights
    unchanged = [k for k, p in params.items() if p.requires_grad and torch.equal(p, before[k])]
    assert not unchanged, unchanged[:5]
