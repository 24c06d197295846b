"""Pipeline config: YAML file, then --set overrides, validated; clear errors for wrong keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import PipelineConfig
from flows.settings import dump_yaml, load_model, parse_override


def test_file_then_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text("catalog: /data/cat\ndataset:\n  name: web\n  seed: 3\n")
    cfg = load_model(
        PipelineConfig, cfg_file, ["dataset.seed=7", "pretrain.enabled=true", "pretrain.overrides=[a=1]"]
    )
    assert cfg.catalog == "/data/cat"
    assert cfg.dataset.name == "web" and cfg.dataset.seed == 7
    assert cfg.pretrain.enabled is True and cfg.pretrain.overrides == ["a=1"]


def test_unknown_key_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid keys: .*max_samples"):
        load_model(PipelineConfig, None, ["dataset.max_sample=3"], catalog="c")


def test_value_is_not_a_section() -> None:
    with pytest.raises(ValueError, match="not a section"):
        load_model(PipelineConfig, None, ["catalog.x=1"], catalog="c")


def test_override_syntax_error() -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_override("dataset.seed")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_model(PipelineConfig, None, ["dataset.max_samples=10"], catalog=str(tmp_path))
    dump_yaml(cfg, tmp_path / "config.yaml")
    again = load_model(PipelineConfig, tmp_path / "config.yaml")
    assert again == cfg
