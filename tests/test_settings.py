"""One config tree: YAML file, flags, then --set overrides, validated once; one-line errors naming the
full dotted key and the closest valid keys; the resolved config round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_catalog.settings import ConfigError, dump_yaml, load_model, parse_override, validate
from flows.config import PipelineConfig
from flows.settings import pipeline_config
from pretrain.config import PRESETS_DIR, TrainConfig, load_config


def test_file_then_overrides(tmp_path: Path) -> None:
    cfg_file = tmp_path / "p.yaml"
    cfg_file.write_text("catalog: /data/cat\ndataset:\n  name: web\n  seed: 3\n")
    cfg = load_model(PipelineConfig, cfg_file, ["dataset.seed=7", "pretrain.enabled=true"])
    assert cfg.catalog == "/data/cat"
    assert cfg.dataset.name == "web" and cfg.dataset.seed == 7
    assert cfg.pretrain.enabled is True


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("catalog: c\nsorce: /data\n", "unknown config key 'sorce' (did you mean 'source'?)"),
        (
            "catalog: c\npretrain:\n  presett: vits14\n",
            "unknown config key 'pretrain.presett' (did you mean 'pretrain.preset'?)",
        ),
        (
            "catalog: c\ndataset:\n  max_sample: 3\n",
            "unknown config key 'dataset.max_sample' (did you mean 'dataset.max_samples'?)",
        ),
        (
            "catalog: c\ncurate:\n  filter:\n    min_sid: 10\n",
            "unknown config key 'curate.filter.min_sid' (did you mean 'curate.filter.min_side'",
        ),
        (
            "catalog: c\npretrain:\n  train:\n    optim:\n      base_lrr: 0.1\n",
            "unknown config key 'pretrain.train.optim.base_lrr' (did you mean 'pretrain.train.optim.base_lr'?)",
        ),
    ],
)
def test_unknown_key_in_a_file_names_the_full_path_and_the_closest_keys(
    tmp_path: Path, yaml_text: str, expected: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_model(PipelineConfig, path)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("dataset.max_sample=3", "'dataset.max_sample' (did you mean 'dataset.max_samples'?)"),
        ("curate.filter.min_sid=10", "'curate.filter.min_sid' (did you mean 'curate.filter.min_side'"),
        ("pretrain.train.optim.base_lrr=1", "did you mean 'pretrain.train.optim.base_lr'?"),
        ("pretrain.overrides=[a=1]", "unknown config key 'pretrain.overrides' (valid keys under 'pretrain'"),
        ("catalog.x=1", "config key 'catalog' is a value, not a section"),
    ],
)
def test_unknown_key_in_set_is_one_line(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_model(PipelineConfig, None, [override], catalog="c")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file .*missing.yaml' not found"):
        load_model(PipelineConfig, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- catalog: c\n")
    with pytest.raises(ConfigError, match="must hold a mapping .* not a list"):
        load_model(PipelineConfig, tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("catalog: [c\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_model(PipelineConfig, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("dataset.seed")
    with pytest.raises(ConfigError, match=r"config key 'dataset.seed': Input should be a valid integer"):
        load_model(PipelineConfig, None, ["dataset.seed=abc"], catalog="c")


def test_every_config_model_forbids_unknown_keys() -> None:
    from pydantic import BaseModel

    from data_catalog.settings import StrictModel

    def models(model: type[BaseModel]) -> list[type[BaseModel]]:
        out = [model]
        for fld in model.model_fields.values():
            ann = fld.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out += models(ann)
        return out

    found = models(PipelineConfig)
    assert TrainConfig in found and len(found) > 15
    for model in found:
        assert issubclass(model, StrictModel) and model.model_config.get("extra") == "forbid", model


def test_set_reaches_the_training_config_over_the_preset() -> None:
    cfg = load_model(
        PipelineConfig, None, ["pretrain.preset=vits14", "pretrain.train.optim.base_lr=1e-3"], catalog="c"
    )
    preset = load_config("vits14")
    assert cfg.pretrain.train.optim.base_lr == 1e-3
    assert cfg.pretrain.train.model == preset.model  # the rest comes from the preset
    assert cfg.pretrain.train.optim.model_copy(update={"base_lr": preset.optim.base_lr}) == preset.optim
    # a bad value inside the training config names its full path too
    with pytest.raises(ConfigError, match="'pretrain.train.crops.local_size'|multiple of patch size"):
        load_model(PipelineConfig, None, ["pretrain.train.crops.local_size=95"], catalog="c")
    with pytest.raises(
        ConfigError, match="config key 'pretrain.preset': unknown preset 'vitx'.*valid presets"
    ):
        load_model(PipelineConfig, None, ["pretrain.preset=vitx"], catalog="c")


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    preset_file = tmp_path / "mine.yaml"
    preset_file.write_text((PRESETS_DIR / "demo.yaml").read_text() + "\noptim:\n  min_lr: 2.0e-6  # mine\n")
    overrides = ["dataset.max_samples=10", "pretrain.train.optim.base_lr=1e-3", "curate.dedup.phash_radius=4"]
    for preset in ("vitb14", str(preset_file)):
        cfg = load_model(
            PipelineConfig, None, [*overrides, f"pretrain.preset={preset}"], catalog=str(tmp_path)
        )
        dump_yaml(cfg, tmp_path / "config.yaml")
        again = load_model(PipelineConfig, tmp_path / "config.yaml")
        assert again == cfg
        assert validate(PipelineConfig, cfg.model_dump(mode="json")) == cfg  # deployment parameters
    assert again.pretrain.train.optim.min_lr == 2e-6


def test_editing_the_preset_of_a_dumped_config_keeps_the_users_keys(tmp_path: Path) -> None:
    """The dump holds the differences from the preset: a new preset (in the UI, say) takes effect."""
    cfg = load_model(PipelineConfig, None, ["pretrain.train.optim.base_lr=1e-3"], catalog="c")
    dumped = cfg.model_dump(mode="json")
    assert dumped["pretrain"]["train"] == {"optim": {"base_lr": 1e-3}}
    dumped["pretrain"]["preset"] = "vitl14"
    edited = validate(PipelineConfig, dumped)
    assert edited.pretrain.train.model.arch == "vit_large" and edited.pretrain.train.optim.base_lr == 1e-3


def test_flags_override_the_file_and_the_file_may_name_the_catalog(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("catalog: /data/cat\nsource: /data/in\n")
    assert pipeline_config(path).catalog == "/data/cat"
    flagged = pipeline_config(path, catalog="/other", source=None)
    assert flagged.catalog == "/other" and flagged.source == "/data/in"
    assert pipeline_config(path, ["source=/x"], source="/flag").source == "/x"  # --set comes last
    (tmp_path / "empty.yaml").write_text("dataset:\n  name: web\n")
    with pytest.raises(ConfigError, match="no catalog: pass --catalog .* or set it in"):
        pipeline_config(tmp_path / "empty.yaml")
    with pytest.raises(ConfigError, match="no source: pass --source"):
        pipeline_config(tmp_path / "empty.yaml", catalog="/c", require_source=True)
    # a misspelled key is named as such, not reported as a missing value
    (tmp_path / "typo.yaml").write_text("catalog: /c\nsorce: /in\n")
    with pytest.raises(ConfigError, match="'sorce' \\(did you mean 'source'"):
        pipeline_config(tmp_path / "typo.yaml", require_source=True)


def test_saved_pipeline_config_loads_back(tmp_path: Path) -> None:
    from flows.settings import save_pipeline_config

    cfg = pipeline_config(None, ["pretrain.train.optim.base_lr=1e-3"], catalog=str(tmp_path / "cat"))
    uri = save_pipeline_config(cfg, "curate-abc")
    assert uri == str(tmp_path / "cat" / "runs" / "curate-abc" / "pipeline.yaml")
    assert load_model(PipelineConfig, uri) == cfg
    assert yaml.safe_load(Path(uri).read_text())["pretrain"]["train"]["optim"]["base_lr"] == 1e-3
