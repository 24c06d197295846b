"""Schedules against their closed forms, and the config loader (presets, overrides, errors)."""

from __future__ import annotations

import math

import pytest

from pretrain import schedules as S
from pretrain.config import TrainConfig, config_to_yaml, load_config, preset_names, valid_keys


def test_warmup_cosine_closed_form() -> None:
    peak, final, warm, total = 0.5, 1e-3, 10, 110
    assert S.warmup_cosine(0, warm, total, peak, final) == 0.0
    assert S.warmup_cosine(5, warm, total, peak, final) == pytest.approx(0.25)
    assert S.warmup_cosine(10, warm, total, peak, final) == pytest.approx(peak)
    # half-way through the cosine part the value is the midpoint
    assert S.warmup_cosine(60, warm, total, peak, final) == pytest.approx((peak + final) / 2)
    for step in (37, 88):
        t = (step - warm) / (total - warm)
        assert S.warmup_cosine(step, warm, total, peak, final) == pytest.approx(
            final + 0.5 * (peak - final) * (1 + math.cos(math.pi * t))
        )
    assert S.warmup_cosine(110, warm, total, peak, final) == final
    assert S.warmup_cosine(500, warm, total, peak, final) == final


def test_cosine_momentum_and_wd_monotone() -> None:
    vals = [S.cosine(s, 100, 0.992, 1.0) for s in range(101)]
    assert vals[0] == 0.992 and vals[-1] == 1.0
    assert all(b >= a for a, b in zip(vals, vals[1:], strict=False))
    wd = [S.cosine(s, 100, 0.04, 0.4) for s in range(101)]
    assert wd[50] == pytest.approx(0.22)


def test_teacher_temp_and_last_layer() -> None:
    assert S.linear_warmup_then_constant(0, 30, 0.04, 0.07) == 0.04
    assert S.linear_warmup_then_constant(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert S.linear_warmup_then_constant(30, 30, 0.04, 0.07) == 0.07
    assert S.linear_warmup_then_constant(1000, 30, 0.04, 0.07) == 0.07


def test_phase_schedule_from_config() -> None:
    cfg = load_config(
        None,
        [
            "model.patch_size=14",
            "crops.local_size=98",
            "train.epochs=10",
            "train.iterations_per_epoch=100",
            "optim.warmup_epochs=2",
            "loss.warmup_teacher_temp_epochs=3",
            "train.batch_size_per_device=64",
            "highres.enabled=true",
            "highres.steps=50",
            "highres.lr_scale=0.5",
        ],
    )
    main = S.phase_schedule(cfg, "main", world_size=4)
    assert main.total_steps == 1000 and main.warmup_steps == 200 and main.teacher_temp_warmup_steps == 300
    assert main.freeze_last_layer_steps == 100
    assert main.peak_lr == pytest.approx(0.004 * math.sqrt(256 / 1024))
    assert main.at(99).last_layer_frozen and not main.at(100).last_layer_frozen
    hr = S.phase_schedule(cfg, "highres", world_size=4)
    # every schedule compressed into 50 steps: 10 epochs -> 5 steps per "epoch"
    assert hr.total_steps == 50 and hr.warmup_steps == 10 and hr.teacher_temp_warmup_steps == 15
    assert hr.freeze_last_layer_steps == 5
    assert hr.peak_lr == pytest.approx(main.peak_lr * 0.5)
    assert S.phases(cfg) == [("main", 0, 1000), ("highres", 1000, 1050)]
    with pytest.raises(ValueError, match="valid phases"):
        S.phase_schedule(cfg, "nope", 1)


def test_presets_load_and_differ_from_defaults() -> None:
    assert {"vits14", "vitb14", "vitl14", "vitg14", "demo"} <= set(preset_names())
    default = TrainConfig()
    l14 = load_config("vitl14")
    assert l14.loss.centering == "sinkhorn_knopp" and l14.heads.dino.prototypes == 131072
    assert l14.heads.ibot_separate_head and l14.crops.local_size == 98
    assert (
        l14.optim.base_lr == 2e-4
        and l14.optim.layerwise_decay == 1.0
        and default.optim.layerwise_decay == 0.9
    )
    assert load_config("vitg14").model.arch == "vit_giant2"
    for name in preset_names():
        load_config(name)  # every preset validates


def test_preset_files_comment_every_key() -> None:
    from pretrain.config import PRESETS_DIR

    for path in PRESETS_DIR.glob("*.yaml"):
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
                assert "#" in line, f"{path.name}: key without a comment: {line!r}"


def test_overrides_and_errors(tmp_path) -> None:
    cfg = load_config("vits14", ["optim.base_lr=1e-3", "crops.global_scale=[0.4, 1.0]"])
    assert cfg.optim.base_lr == 1e-3 and cfg.crops.global_scale == (0.4, 1.0)
    with pytest.raises(ValueError, match="'optim.base_lrr' \\(did you mean 'optim.base_lr'"):
        load_config(None, ["optim.base_lrr=1"])
    with pytest.raises(ValueError, match="valid presets"):
        load_config("vitx99")
    with pytest.raises(ValueError, match="multiple of patch size"):
        load_config("vitl14", ["crops.local_size=96"])
    # a resolved config round-trips through its YAML file
    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg
    assert "highres.size" in valid_keys()
