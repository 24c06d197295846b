"""Typed configs of the curation stage (ingest, quality filters, hash dedup, embedding, semantic
dedup, leak removal, hierarchical clustering, sampling).

Every field has a description and a documented default; the defaults of the quality filters were
measured on the shared real photos (see ``curation/filters.py`` and ``benchmarks/results/ingest.md``).
``CurateConfig`` is the one object a flow takes as its parameter.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

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


class EmbedConfig(_Config):
    """Embedding accepted images with the semantic backbone and the copy-detection descriptor."""

    enabled: bool = Field(default=True, description="Run the embed stage (and the stages that need vectors).")
    semantic_checkpoint: str | None = Field(
        default=None,
        description="Semantic backbone (clustering, leaks, retrieval): a local dinoflow checkpoint, official "
        "DINOv2 .pth or Hugging Face directory. None: chosen by semantic_default.",
    )
    semantic_default: Literal["pinned", "newest"] = Field(
        default="pinned",
        description="The semantic backbone when semantic_checkpoint is None. pinned: the one that embedded the "
        "newest version of the pipeline's dataset (while its file exists), so a night embeds only its new "
        "images with the model that embedded the rest; the first night (or none recorded) takes as newest. "
        "newest: the newest completed pretraining run's backbone whose file exists, else the bootstrap "
        "backbone (self-curation: after each run lands, every kept image is embedded again).",
    )
    copy_checkpoint: str | None = Field(
        default=None,
        description="Copy-detection descriptor (near-duplicate removal): a dinoflow descriptor or an SSCD "
        "TorchScript file (local path). None: the shipped assets/copy-descriptor.",
    )
    batch_size: int = Field(default=64, ge=1, description="Images per forward pass.")
    partition_size: int = Field(
        default=4096,
        ge=1,
        description="Images per committed chunk (and per Dask task): a killed run loses at most one chunk.",
    )
    decode_workers: int = Field(
        default=4, ge=1, description="Threads reading and decoding images per process."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: every visible GPU (one process each), else the CPU."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on GPU, fp32 on CPU."
    )
    storage_dtype: Literal["float16", "float32"] = Field(
        default="float16", description="Dtype of the stored (L2-normalised) vectors."
    )
    jpeg_draft: bool = Field(
        default=True,
        description="Decode JPEGs at the smallest DCT scale still >= the embedder's input side before "
        "resizing (2.2x faster at 64 px on the shared photos; benchmarks/results/embed.md).",
    )


class GeometricVerifyConfig(_Config):
    """Geometric verification of candidate copy pairs (``curation.geometric``: SIFT, Lowe's ratio test,
    an affine transform by RANSAC, the better of the image and its mirror)."""

    verify: Literal["geometric", "none"] = Field(
        default="geometric",
        description="geometric: a candidate pair whose cosine is below verify_below counts only when the two "
        "images also match geometrically; at the cosine threshold the descriptor also pairs different photos "
        "of one kind of scene (the demo: 15 false leaks against 2,000 Imagenette images at cosine 0.938-0.973, "
        "0-4 inliers; its 6 planted copies 142-498). none: cosine alone.",
    )
    verify_below: float = Field(
        default=0.99,
        ge=-1.0,
        le=1.0,
        description="Cosine from which the descriptor alone decides (blurred copies keep too few keypoints to "
        "verify; copies of that kind sit near 1.0).",
    )
    min_inliers: int = Field(
        default=20, ge=4, description="RANSAC inliers a verified pair needs (docs/copy-detection.md)."
    )
    min_spread: float = Field(
        default=0.04,
        ge=0.0,
        le=1.0,
        description="Area of the box between the 10th and 90th percentiles of the inliers' x and y, over the "
        "image's area, a verified pair needs: a caption or watermark shared by two different photos stays "
        "under 0.03 (59 such calibration pairs with 20-169 inliers), 2 of 7,492 true copies fall under 0.04 "
        "(docs/semantic-dedup.md).",
    )
    verify_min_side: int = Field(
        default=64,
        ge=0,
        description="Pairs with an image whose shorter side is below this are decided by cosine alone (too "
        "few keypoints at CIFAR sizes).",
    )


class SemanticDedupConfig(GeometricVerifyConfig):
    """Near-duplicates by copy-descriptor vectors: faiss k-NN, pairs above a cosine threshold, components."""

    enabled: bool = Field(default=True, description="Run near-duplicate removal by copy-descriptor vectors.")
    threshold: float = Field(
        default=0.938,
        ge=-1.0,
        le=1.0,
        description="Two images are near duplicates when the cosine of their copy-descriptor vectors is >= "
        "this. 0.938: pair precision 0.99 on the calibration photos for the shipped assets/copy-descriptor "
        "(held-out: precision 0.966, recall 0.19; docs/semantic-dedup.md). With verify=geometric it decides only the "
        "pairs that cannot be verified; verify_from sets the candidates. Recalibrate for another descriptor.",
    )
    verify_from: float | None = Field(
        default=0.8,
        ge=-1.0,
        le=1.0,
        description="With verify=geometric, pairs among the k nearest from this cosine up are candidates too, "
        "linked only when they match geometrically (pairs that cannot be verified, such as images under "
        "verify_min_side, still need threshold). None: threshold. 0.8 with the shipped descriptor: held-out pair "
        "recall 0.184 -> 0.408 at precision 1.000 -> 0.9996, easy edits 0.78 -> 0.99, about 8 pairs verified per "
        "image, each once (stored in the catalog's geometric_matches; docs/semantic-dedup.md).",
    )
    k: int = Field(default=16, ge=1, description="Neighbours searched per image.")
    index: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        default="auto", description="faiss index; auto: exact (flat) up to exact_max vectors, else IVF."
    )
    exact_max: int = Field(
        default=200_000, ge=1, description="Largest pool searched exactly under index=auto."
    )
    nprobe: int = Field(default=32, ge=1, description="IVF lists visited per query.")
    hnsw_ef_search: int = Field(default=128, ge=1, description="HNSW efSearch.")
    confirm_phash: bool = Field(
        default=True,
        description="Keep a pHash link that is not byte-exact only when the copy descriptor agrees (cosine >= "
        "confirm_threshold): pHash at radius 6 links distinct small images (CIFAR-10).",
    )
    confirm_threshold: float | None = Field(
        default=0.8,
        ge=-1.0,
        le=1.0,
        description="Cosine that confirms a pHash link of small images; None: threshold. 0.8: on CIFAR-10 "
        "train photos and their edits, 0 of 4 false pHash links kept, 4,450 of 7,403 true ones (shipped "
        "descriptor; docs/semantic-dedup.md).",
    )


class LeakConfig(GeometricVerifyConfig):
    """Removing pool images that are copies or edited copies of evaluation images."""

    eval_sets: dict[str, str] = Field(
        default_factory=dict,
        description="Benchmarks to decontaminate against: NAME -> an ImageFolder directory or a tar of one.",
    )
    threshold: float = Field(
        default=0.936,
        ge=-1.0,
        le=1.0,
        description="A pool image is a leak when its copy-descriptor cosine to an eval image (or its mirror) "
        "is >= this. 0.936: precision 0.99 on the calibration photos for the shipped descriptor (held-out: "
        "0.976, recall 0.50; docs/semantic-dedup.md). DINOv2 used 0.45 on SSCD's own features.",
    )
    verify_from: float | None = Field(
        default=0.7,
        ge=-1.0,
        le=1.0,
        description="With verify=geometric, the nearest eval images from this cosine up are candidates too, "
        "tried best first and a leak only when one matches geometrically (pairs that cannot be verified, such "
        "as images under verify_min_side, still need threshold). None: threshold. 0.7 with k=8, the best "
        "calibration recall of the grid at precision 1.000: held-out copies found 0.489 -> 0.783 at precision "
        "1.000 -> 0.9995, hard edits 0.19 -> 0.60, 2.3 pairs verified per copy (docs/semantic-dedup.md).",
    )
    k: int = Field(
        default=8,
        ge=1,
        description="Nearest eval vectors searched per pool image (an image and its mirror are two vectors; "
        "8 against 4: calibration recall 0.735 -> 0.773 at floor 0.7, held-out 0.743 -> 0.783).",
    )
    mirror: bool = Field(
        default=True,
        description="Also match against each eval image's horizontal mirror (a mirrored copy matches even "
        "where the descriptor is not mirror-invariant: held-out mirrored copies found 0.05 -> 1.0).",
    )
    small_side: int = Field(
        default=64,
        ge=0,
        description="Pool images whose shorter side is below this (CIFAR-sized) are decided by the small-image "
        "verifier (curation.small_copies: grey-pixel candidates, aligned high-pass correlation) instead of the "
        "descriptor's cosine, which is unreliable at 32 px; 0: every image by cosine.",
    )
    small_threshold: float = Field(
        default=0.75,
        ge=-1.0,
        le=1.0,
        description="Aligned high-pass correlation at which a small pool image is a copy of an eval image "
        "(precision >= 0.99 on generated edits of CIFAR-10 train photos; docs/semantic-dedup.md).",
    )
    small_k: int = Field(
        default=10, ge=1, description="Candidate pool images verified per eval image (and mirror)."
    )


class ClusterConfig(_Config):
    """Hierarchical k-means after Vo et al. 2024 (arXiv:2405.15613) on semantic vectors."""

    enabled: bool = Field(default=True, description="Cluster the accepted images.")
    n_clusters: list[int] = Field(
        default=[64, 16, 4],
        min_length=1,
        description="Clusters per level, finest first (each level clusters the previous level's centroids). "
        "The paper's web-images config: [10_000_000, 500_000, 50_000, 10_000]. Levels finer than the pool "
        "are an error.",
    )
    resampling_steps: list[int] = Field(
        default=[2],
        description="k-means runs per level, counted as the reference (ssl-data-curation) counts them: 1 = plain "
        "k-means, n = n - 1 resampling steps after the first run (paper's web config: [1, 10, 10, 10]); one entry "
        "per level, or one for all.",
    )
    sample_sizes: list[int] = Field(
        default=[4],
        description="Points closest to each centroid taken per resampling step, per level (paper's web config: "
        "[1, 10, 5, 3]); one entry per level, or one for all.",
    )
    n_iter: int = Field(default=20, ge=1, description="k-means iterations per run.")
    max_points_per_centroid: int | None = Field(
        default=None,
        ge=1,
        description="faiss subsamples the training set to this many points per centroid; None: use every "
        "point (faiss's own default, 256, subsamples silently).",
    )
    seed: int = Field(default=0, description="Seed of every k-means run.")
    init: Literal["kmeans++", "random"] = Field(
        default="kmeans++",
        description="Centroid initialisation: greedy k-means++ as scikit-learn's (on at most 32 points per "
        "centroid; about as much time as 15 Lloyd iterations) or random points (faiss's default; cheaper at "
        "millions of clusters).",
    )
    gpu: Literal["auto", "on", "off"] = Field(
        default="auto", description="faiss GPU k-means (auto: when present)."
    )
    fit_to_pool: bool = Field(
        default=True,
        description="On a pool too small for n_clusters, a level asking for more clusters than the points (or "
        "centroids) below it takes one per 4 of them, and levels that no longer shrink are dropped, so small pools run with the "
        "defaults (the levels used are logged and recorded); False: such a level is a one-line error.",
    )

    @model_validator(mode="after")
    def _per_level(self) -> ClusterConfig:
        n = len(self.n_clusters)
        for name in ("resampling_steps", "sample_sizes"):
            values = getattr(self, name)
            if len(values) not in (1, n) or min(values) < 1:
                raise ValueError(f"{name} needs one entry per level ({n}) or one for all; got {values}")
        if any(a <= b for a, b in zip(self.n_clusters, self.n_clusters[1:], strict=False)):
            raise ValueError(f"n_clusters must shrink from the finest level up; got {self.n_clusters}")
        return self

    def fitted(self, n: int) -> ClusterConfig:
        """This config for a pool of ``n`` vectors: unchanged when every level fits or ``fit_to_pool`` is
        off; else a level asking for more clusters than the points (or centroids) below it takes one per
        4 of them; upper levels that would not shrink, or hold one cluster, are dropped."""
        if not self.fit_to_pool or n < 1:
            return self
        below, keep, counts = n, list[int](), list[int]()
        for i, k in enumerate(self.n_clusters):
            k = k if k <= below else max(1, below // 4)
            if counts and (k >= counts[-1] or k == 1):  # a level must shrink; one cluster says nothing
                break
            keep.append(i)
            counts.append(k)
            below = k
        if counts == self.n_clusters:
            return self
        pick = lambda v: [v[i] for i in keep] if len(v) > 1 else list(v)  # noqa: E731
        return self.model_copy(
            update={"n_clusters": counts, "resampling_steps": pick(self.resampling_steps),
                    "sample_sizes": pick(self.sample_sizes)}
        )  # fmt: skip

    def level(self, i: int) -> tuple[int, int, int]:
        """``(clusters, resampling steps, sample size)`` of level ``i`` (0 = finest)."""
        pick = lambda v: v[i] if len(v) > 1 else v[0]  # noqa: E731
        return self.n_clusters[i], pick(self.resampling_steps), pick(self.sample_sizes)


class SampleConfig(_Config):
    """Which accepted images the dataset version takes."""

    mode: Literal["balanced", "retrieval", "all"] = Field(
        default="balanced",
        description="balanced: hierarchical balanced sampling over the clusters; retrieval: the nearest pool "
        "images of a seed set (as DINOv2 built LVD-142M); all: every accepted image.",
    )
    target_size: int | None = Field(
        default=None,
        ge=1,
        description="Images to select (balanced); None: all accepted images, rebalanced order only.",
    )
    strategy: Literal["random", "closest"] = Field(
        default="random",
        description="Picks inside a bottom-level cluster: random, or closest to its centroid.",
    )
    seed: int = Field(default=0, description="Seed of the sampling.")
    retrieval_seed_set: str | None = Field(
        default=None,
        description="retrieval: an ImageFolder directory (or tar of one) or a dataset version NAME:vN.",
    )
    retrieval_k: int = Field(default=4, ge=1, description="retrieval: pool images taken per seed image.")
    retrieval_min_similarity: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="retrieval: take every pool image above this cosine instead of k.",
    )


class CurateConfig(_Config):
    """The whole curation config: a flow parameter, saved beside every output."""

    ingest: IngestConfig = Field(default=IngestConfig(), description="Listing, decoding, Dask.")
    filter: FilterConfig = Field(default=FilterConfig(), description="Quality filter thresholds.")
    dedup: HashDedupConfig = Field(default=HashDedupConfig(), description="Hash dedup settings.")
    embed: EmbedConfig = Field(default=EmbedConfig(), description="Embedding (semantic and copy vectors).")
    semdedup: SemanticDedupConfig = Field(
        default=SemanticDedupConfig(), description="Copy-vector near-duplicates."
    )
    leaks: LeakConfig = Field(default=LeakConfig(), description="Evaluation-leak removal.")
    cluster: ClusterConfig = Field(default=ClusterConfig(), description="Hierarchical k-means.")
    sample: SampleConfig = Field(default=SampleConfig(), description="Selection for the dataset version.")
