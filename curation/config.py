"""Typed configs of the curation stage (ingest, quality filters, hash dedup).

Every field has a description and a documented default; the defaults of the quality filters were
measured on the shared real photos (see ``curation/filters.py`` and ``benchmarks/results/ingest.md``).
``CurateConfig`` is the one object a flow takes as its parameter.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from data_catalog.settings import StrictModel

# PIL raises DecompressionBombError at 2 * Image.MAX_IMAGE_PIXELS (178,956,970 px) while opening;
# our cap is checked from the header before decoding, at PIL's warning level (89,478,485 px):
# a 200 MP phone photo is rejected, a 50 MP camera photo (8,660 x 5,773) passes.
DEFAULT_MAX_PIXELS = 89_478_485


class _Config(StrictModel):
    """Frozen; an unknown key is an error naming the closest valid keys (``data_catalog.settings``)."""

    model_config = ConfigDict(frozen=True)


class FilterConfig(_Config):
    """Thresholds of the quality filters, applied in this order; the first that fails is the reason."""

    min_side: int = Field(
        default=64,
        ge=1,
        description="Reject (too_small) when the shorter side in pixels is below this. 64 keeps every "
        "raw photo (shortest side 68 px) and drops icons/thumbnails; set 32 (or lower) to ingest CIFAR.",
    )
    max_aspect_ratio: float = Field(
        default=4.0,
        ge=1.0,
        description="Reject (aspect_ratio) when long side / short side is above this: banners, strips, "
        "panoramas that a square crop would mostly throw away. Raw photos reach 2.66.",
    )
    min_luma_std: float = Field(
        default=8.0,
        ge=0.0,
        description="Reject (low_information) when the std of luma (0..255) on the thumbnail is below "
        "this: blank and near-uniform images. Measured: raw photos >= 15.6, uniform + noise sigma 5 <= 1.0, 15-level gradient 4.3.",
    )
    min_sharpness: float | None = Field(
        default=None,
        ge=0.0,
        description="Optional (None = off): reject (too_blurry) when the variance of the Laplacian on "
        "the grayscale thumbnail is below this. Smooth gradients score < 1, raw photos 57..6600 (128 px thumbnail); ~20 is a sensible value.",
    )
    min_mean_luma: float | None = Field(
        default=None,
        ge=0.0,
        le=255.0,
        description="Optional (None = off): reject (too_dark) when the mean luma (0..255) is below this.",
    )


class IngestConfig(_Config):
    """How inputs are listed, read, decoded and spread over Dask workers."""

    partition_size: int = Field(
        default=2000,
        ge=1,
        description="Inputs per partition: one Dask task and one staging parquet file each.",
    )
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS,
        ge=1,
        description="Reject (too_many_pixels) when width*height from the header is above this, before "
        "any pixel is decoded (decompression bombs). PIL itself refuses > 178,956,970 px while opening, "
        "which is also recorded as too_many_pixels.",
    )
    thumbnail_size: int = Field(
        default=128,
        ge=32,
        description="Short side in pixels of the luma thumbnail every metric (luma, sharpness, pHash) "
        "is computed on. JPEGs are DCT-draft decoded to the smallest scale with short side >= this. "
        "128 (default): pHash of draft vs full decode agree to <= 4 bits on all raw photos (the "
        "dedup radius was measured with it); 64 saves ~15% CPU but lets them differ by up to 10 bits.",
    )
    read_batch: int = Field(
        default=32,
        ge=1,
        description="Files fetched together from a remote fsspec filesystem (fs.cat of a list).",
    )
    n_workers: int | None = Field(
        default=None, ge=1, description="Dask worker processes of the local cluster; None = os.cpu_count()."
    )
    threads_per_worker: int = Field(
        default=1,
        ge=1,
        description="Threads per Dask worker. 1: PIL holds the GIL for parts of decoding, so processes "
        "scale and threads do not.",
    )


class HashDedupConfig(_Config):
    """Exact (sha256) and near (pHash) duplicate grouping over accepted images."""

    phash_radius: int = Field(
        default=6,
        ge=0,
        le=64,
        description="Two images are near duplicates when the Hamming distance of their 64-bit pHashes "
        "is <= this. 6 (measured, docs/dedup-threshold.md): finds 100% of resized, re-compressed, "
        "blurred, grayscale copies and >= 96% of brightness/watermark edits, 0 false pairs in 2.1M; "
        "false pairs grow with pool size squared, so lower it (4) for pools of millions.",
    )
    enabled: bool = Field(default=True, description="Run the hash dedup step at all.")


class CurateConfig(_Config):
    """The whole curation config: a flow parameter, saved beside every output."""

    ingest: IngestConfig = Field(default=IngestConfig(), description="Listing, decoding, Dask.")
    filter: FilterConfig = Field(default=FilterConfig(), description="Quality filter thresholds.")
    dedup: HashDedupConfig = Field(default=HashDedupConfig(), description="Hash dedup settings.")
