"""The pipeline's parameters: one pydantic config, used directly as the flow parameter.

Each stage's own config lives with its library (``curation.config.CurateConfig``,
``pretrain.config.TrainConfig``); this module only assembles them and adds what is about running
(catalog, source, Dask, launching torchrun). Every model forbids unknown keys
(``data_catalog.settings.StrictModel``), whether they come from a YAML file, ``--set`` or the
deployment's parameters edited in the Prefect UI.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_serializer, model_validator

from curation.config import CurateConfig
from data_catalog.settings import ConfigError, StrictModel, deep_merge, differences, key_error, read_yaml
from evaluation.config import EvalConfig
from pretrain.config import PRESETS_DIR, TrainConfig, load_config, preset_path


class DatasetStageConfig(StrictModel):
    """Writing the accepted images as a new, immutable dataset version (webdataset shards)."""

    enabled: bool = Field(True, description="Write a dataset version after curation.")
    name: str = Field("curated", description="Dataset name; versions are numbered per name (1, 2, ...).")
    max_samples: int | None = Field(
        None, description="Uniform sample of at most this many images (None: all)."
    )
    seed: int = Field(0, description="Seed of the uniform sample and of the shard order.")
    shard_max_bytes: int = Field(1_000_000_000, description="Target size of one tar shard, in bytes.")
    reencode_max_side: int | None = Field(
        None,
        description="Re-encode images with a longer side above this, to it (JPEG sources as JPEG, others as "
        "PNG); None: no size cap (files that are not upright RGB/L JPEG or PNG are still re-encoded).",
    )


DEFAULT_PRESET = "demo"


class PretrainStageConfig(StrictModel):
    """Launching DINOv2 pretraining (``python -m pretrain.train`` under torchrun) on a dataset version.

    ``train`` is the whole training config, resolved when this config loads: the preset's keys, then
    the user's ``train`` keys merged over them (``--set pretrain.train.optim.base_lr=1e-3``). It is
    written as the differences from the preset, so a dumped config loads back equal and a later edit
    of ``preset`` (in the Prefect UI, say) keeps the user's own keys on the new preset.
    """

    enabled: bool = Field(False, description="Run pretraining after the dataset version is written.")
    preset: str = Field(
        DEFAULT_PRESET,
        description="Base of the training config: a preset name (vits14, vitb14, vitl14, vitg14, demo) "
        "or a YAML file (made absolute when the config loads).",
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig,
        description="Training config keys over the preset (pretrain/config.py TrainConfig: model, heads, "
        "loss, crops, masking, optim, train, highres).",
    )
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (None: the preset's length)."
    )
    nproc_per_node: int | None = Field(
        None, description="Processes per node; None: one per visible GPU, or 1 on a machine without GPU."
    )
    output_root: str | None = Field(None, description="Folder for run directories (default: CATALOG/runs).")
    resume_anyway: bool = Field(
        False,
        description="Resume a run directory whose checkpoints were trained with other settings "
        "(default: stop, listing the differing keys).",
    )
    continue_from: Literal["last", "none"] = Field(
        "last",
        description="Where a new run starts: last = the exported teacher of the newest completed run in "
        "the catalog with the same model settings (student and teacher from it, heads, optimizer and "
        "schedules fresh; none such: random init); none = random init. A model.init_backbone given wins.",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_preset(cls, data: Any) -> Any:
        """``train`` = the preset's tree with the given ``train`` keys merged over it."""
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", DEFAULT_PRESET)
        user = data.get("train", {})
        if not isinstance(preset, str) or not isinstance(user, dict):
            return data  # a TrainConfig instance is taken as it is; a wrong type is field validation's
        try:
            path = preset_path(preset)
        except ConfigError as exc:
            raise key_error(cls, "preset", str(exc), preset) from None
        if path.parent != PRESETS_DIR:
            preset = str(path.resolve())  # a file: found again from any working directory
        return {**data, "preset": preset, "train": deep_merge(read_yaml(path), user)}

    @field_serializer("train")
    def _train_as_differences(self, train: TrainConfig) -> dict[str, Any]:
        resolved = train.model_dump(mode="json")
        try:
            base = load_config(self.preset).model_dump(mode="json")
        except ConfigError:  # the preset file is gone: write every key
            return resolved
        return differences(base, resolved)


class PipelineConfig(StrictModel):
    """Parameters of ``curate-and-pretrain`` (and, without the later stages, of ``curate``)."""

    catalog: str = Field(description="Catalog root: a local folder or an fsspec URI (s3://bucket/catalog).")
    source: str | None = Field(
        None, description="Images to ingest: folder, fsspec URL, tar shards, or a parquet/CSV list of URIs."
    )
    dask_address: str | None = Field(
        None,
        description='Existing Dask scheduler address; None starts a LocalCluster; "sync" runs in-process.',
    )
    curate: CurateConfig = Field(default_factory=CurateConfig)
    dataset: DatasetStageConfig = Field(default_factory=DatasetStageConfig)
    pretrain: PretrainStageConfig = Field(default_factory=PretrainStageConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
