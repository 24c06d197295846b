"""The pipeline's parameters: one pydantic config, used directly as the flow parameter.

Each stage's own config lives with its library (``curation.config.CurateConfig``); this module
only assembles them and adds what is about running (catalog, source, Dask, launching torchrun).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from curation.config import CurateConfig


class DatasetStageConfig(BaseModel):
    """Writing the accepted images as a new, immutable dataset version (webdataset shards)."""

    enabled: bool = Field(True, description="Write a dataset version after curation.")
    name: str = Field("curated", description="Dataset name; versions are numbered per name (1, 2, ...).")
    max_samples: int | None = Field(
        None, description="Uniform sample of at most this many images (None: all)."
    )
    seed: int = Field(0, description="Seed of the uniform sample and of the shard order.")
    shard_max_bytes: int = Field(1_000_000_000, description="Target size of one tar shard, in bytes.")
    reencode_max_side: int | None = Field(
        None, description="Re-encode images larger than this side as JPEG (None: keep the original bytes)."
    )


class PretrainStageConfig(BaseModel):
    """Launching DINOv2 pretraining (``python -m pretrain.train`` under torchrun) on a dataset version."""

    enabled: bool = Field(False, description="Run pretraining after the dataset version is written.")
    preset: str = Field(
        "demo", description="Training preset name (vits14, vitb14, vitl14, vitg14, demo) or YAML file."
    )
    overrides: list[str] = Field(
        default_factory=list, description="key=value overrides of the training config."
    )
    max_steps: int | None = Field(None, description="Stop after this many steps (None: the preset's length).")
    nproc_per_node: int | None = Field(
        None, description="Processes per node; None: one per visible GPU, or 1 on a machine without GPU."
    )
    output_root: str | None = Field(None, description="Folder for run directories (default: CATALOG/runs).")


class PipelineConfig(BaseModel):
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
