"""The evaluation stage's config: benchmarks (where the labelled images are, how they are resized),
protocols (kNN, linear probe, retrieval), baselines and reports.

One strict pydantic tree (``data_catalog.settings.StrictModel``: an unknown key is an error naming
the closest valid ones), assembled into the pipeline's config as ``evaluate`` and read from a YAML
file plus ``--set evaluate.linear.c_steps=11`` overrides like every other stage.

Built-in benchmarks (``BUILTIN_BENCHMARKS``) point at ``${shared}``, the project's real-data folder
(``$DINOFLOW_SHARED_DATA``, else ``../shared/data`` beside the repository); users add their own
under ``evaluate.benchmarks`` (a name -> an ImageFolder directory or a tar of one).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from data_catalog.settings import ConfigError, StrictModel, close_keys

REPO = Path(__file__).resolve().parents[1]
SHARED = "${shared}"
FEATURE_KINDS = ("cls", "cls+patch_mean")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def shared_data_dir() -> Path:
    """``$DINOFLOW_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


def expand_path(spec: str) -> str:
    """``${shared}/x`` -> the shared data folder's ``x``; ``~`` expanded; other paths as given."""
    return os.path.expanduser(spec.replace(SHARED, str(shared_data_dir())))


class TransformConfig(StrictModel):
    """How an image becomes the network's input (after the one image opener).

    ``short_side``: the shorter side resized to ``resize`` (aspect kept), then a ``crop`` x ``crop``
    centre crop: the DINOv2 protocol is 256 / 224. ``squash``: both sides resized to ``resize``
    (aspect not kept), then the optional centre crop: the seed experiment resizes CIFAR-10 to 224 x 224.
    Then ImageNet mean/std normalisation.
    """

    policy: Literal["short_side", "squash"] = Field("short_side", description="short_side | squash.")
    resize: int = Field(256, ge=1, description="Short side (short_side) or both sides (squash), pixels.")
    crop: int | None = Field(224, ge=1, description="Centre crop side in pixels; None: no crop.")
    interpolation: Literal["bicubic", "bilinear"] = Field("bicubic", description="Resize filter.")

    @property
    def size(self) -> int:
        """The side of the square network input, pixels."""
        return self.crop if self.crop is not None else self.resize

    def key(self) -> str:
        """A stable name of this transform (part of the feature cache key)."""
        return f"{self.policy}-{self.resize}-{self.crop or 'nocrop'}-{self.interpolation}"

    @model_validator(mode="after")
    def _crop_fits(self) -> TransformConfig:
        if self.crop is not None and self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        return self


class BenchmarkConfig(StrictModel):
    """A labelled image set in ImageFolder layout (``ROOT/<class>/<image>``): a directory or a tar
    (``.tar``, ``.tar.gz``, ``.tgz``) of one, extracted once into the cache.

    Either a ``test`` split of its own, or ``holdout_fraction``: a fixed part of each class of
    ``train`` held out as the test split, chosen by a hash of each file's name (the same files on
    every machine and every run, whatever the listing order).
    """

    train: str = Field(description="ImageFolder directory or tar of one; '${shared}' is the shared data.")
    test: str | None = Field(None, description="The test split's directory or tar (or holdout_fraction).")
    holdout_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="Fraction of each train class held out as test (no 'test')."
    )
    transform: TransformConfig = Field(default_factory=TransformConfig)
    train_per_class: int | None = Field(None, ge=1, description="Use the first N train images per class.")
    test_per_class: int | None = Field(None, ge=1, description="Use the first N test images per class.")
    linear_features: Literal["cls", "cls+patch_mean"] | None = Field(
        None, description="Linear probe features on this benchmark (None: evaluate.linear.features)."
    )
    description: str = ""

    @model_validator(mode="after")
    def _one_test_split(self) -> BenchmarkConfig:
        if (self.test is None) == (self.holdout_fraction is None):
            raise ValueError("give exactly one of 'test' (a directory or tar) and 'holdout_fraction'")
        return self


SEED_TRANSFORM = {"policy": "squash", "resize": 224, "crop": None}
BUILTIN_BENCHMARKS: dict[str, dict[str, object]] = {
    "cifar10": {
        "train": f"{SHARED}/cifar10-train.tar.gz",
        "test": f"{SHARED}/cifar10-test.tar.gz",
        "description": "CIFAR-10 (50,000 / 10,000, 32 px JPEG), DINOv2 protocol: resize 256, centre crop 224",
    },
    "cifar10-seed": {
        "train": f"{SHARED}/cifar10-train.tar.gz",
        "test": f"{SHARED}/cifar10-test.tar.gz",
        "transform": SEED_TRANSFORM,
        "linear_features": "cls",
        "description": "The seed experiment: CIFAR-10 resized to 224 x 224, class-token logistic regression",
    },
    "cifar10-small": {
        "train": f"{SHARED}/cifar10-train.tar.gz",
        "test": f"{SHARED}/cifar10-test.tar.gz",
        "train_per_class": 1000,
        "transform": {"policy": "squash", "resize": 64, "crop": None},
        "description": "CIFAR-10 at 64 px, 1,000 train images per class, all 10,000 test (CPU models)",
    },
    "imagenette": {
        "train": f"{SHARED}/imagenette-train-subset.tar.gz",
        "holdout_fraction": 0.2,
        "description": "Imagenette subset (2,000 images, 10 classes); a fixed 20% of each class held out",
    },
}


class KnnConfig(StrictModel):
    """Weighted kNN on L2-normalised class tokens (Caron et al. 2021, DINO; Wu et al. 2018)."""

    enabled: bool = True
    ks: list[int] = Field(default_factory=lambda: [10, 20, 100, 200], description="Neighbour counts.")
    temperature: float = Field(0.07, gt=0.0, description="Vote weight exp(cos / T).")


class LinearConfig(StrictModel):
    """Logistic regression on frozen features (Oquab et al. 2023, DINOv2 section 7; the seed)."""

    enabled: bool = True
    features: Literal["cls", "cls+patch_mean"] = Field(
        "cls+patch_mean", description="cls, or cls concatenated with the mean patch token (the paper's)."
    )
    c_min_power: float = Field(-6.0, description="Smallest C of the sweep, as a power of 10.")
    c_max_power: float = Field(5.0, description="Largest C of the sweep, as a power of 10.")
    c_steps: int = Field(45, ge=1, description="Number of C values, log-spaced (paper: 45).")
    search: Literal["grid", "coarse_to_fine"] = Field(
        "coarse_to_fine",
        description="grid: fit every C (the paper); coarse_to_fine: every 4th C, then the 3 on either "
        "side of the best (18 of 45 fits).",
    )
    holdout_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="Part of the train split that chooses C (paper: 10%)."
    )
    max_iter: int = Field(1000, ge=1, description="L-BFGS iterations per fit.")
    tol: float = Field(1e-6, gt=0.0, description="Gradient tolerance of the L-BFGS fits.")
    backend: Literal["auto", "sklearn", "torch"] = Field(
        "auto", description="sklearn | torch (same objective); auto: torch on a GPU or for large sets."
    )
    seed: int = Field(0, description="Seed of the hold-out split.")

    def grid(self) -> list[float]:
        """The C values of the sweep, ascending."""
        if self.c_steps == 1:
            return [10.0**self.c_min_power]
        step = (self.c_max_power - self.c_min_power) / (self.c_steps - 1)
        return [10.0 ** (self.c_min_power + i * step) for i in range(self.c_steps)]


class RetrievalConfig(StrictModel):
    """Recall@k of test images (queries) against the train split (gallery), by class (faiss)."""

    enabled: bool = True
    ks: list[int] = Field(default_factory=lambda: [1, 5], description="Recall cut-offs.")


class CopyDetectionConfig(StrictModel):
    """Planted edited copies of real photos; DISC21 μAP per subject (evaluation/copy_protocol.py)."""

    enabled: bool = Field(True, description="Run the copy-detection protocol (once per evaluation).")
    photos: str | None = Field(
        None,
        description="Folder of photos to plant copies of; None: ${shared}/raw-photos/images when present "
        "(the protocol is skipped, with a note, where it is not).",
    )
    split: Literal["heldout", "calibration", "all"] = Field(
        "heldout", description="Which fixed split of the photos (evaluation.copy_detection.split_of)."
    )
    max_photos: int | None = Field(50, ge=1, description="First N photos of the split (None: all).")
    edits: list[str] = Field(
        default_factory=lambda: ["exact", "resize_50", "jpeg_q50", "brightness_+30", "crop_85", "hflip",
                                 "rotate_5", "border", "caption", "grayscale", "overlay_text", "blur"],
        description="Planted edits (evaluation.copy_detection.EDITS).",
    )  # fmt: skip
    descriptor: str | None = Field(
        None,
        description="Copy-detection descriptor evaluated beside the backbone; None: assets/copy-descriptor.",
    )
    min_precision: float = Field(0.99, gt=0.0, le=1.0, description="Precision of the reported recall.")

    @model_validator(mode="after")
    def _known_edits(self) -> CopyDetectionConfig:
        from evaluation.copy_detection import EDITS

        unknown = [e for e in self.edits if e not in EDITS]
        if unknown or not self.edits:
            raise ValueError(f"unknown edits {unknown}; valid: {', '.join(EDITS)}")
        return self

    def photos_dir(self) -> Path | None:
        """The photos folder, or None when the default is absent (protocol skipped)."""
        if self.photos is not None:
            return Path(expand_path(self.photos))
        default = shared_data_dir() / "raw-photos" / "images"
        return default if default.is_dir() else None


class BaselinesConfig(StrictModel):
    """Numbers that give the checkpoint's numbers a meaning, measured in the same run."""

    random_init: bool = Field(True, description="The same architecture at random initialisation.")
    raw_pixels: bool = Field(True, description="The normalised input pixels, downsampled.")
    raw_pixels_size: int = Field(32, ge=1, description="Side the pixels are area-downsampled to.")
    start_checkpoint: str | None = Field(
        None, description="The checkpoint a pretraining run started from (also read from the run)."
    )
    seed: int = Field(0, description="Seed of the random initialisation.")


class ReportConfig(StrictModel):
    """The pictures (PNG) of an evaluation."""

    enabled: bool = True
    projection: Literal["tsne", "pca"] = Field("tsne", description="2-D projection of test features.")
    max_points: int = Field(2000, ge=10, description="Test points in the projection (a fixed sample).")
    pca_images: int = Field(4, ge=1, description="Images in the patch-PCA figure.")
    misclassified: int = Field(16, ge=1, description="Misclassified test images shown.")


class EvalConfig(StrictModel):
    """Evaluating a backbone checkpoint on labelled benchmarks, baselines beside every number."""

    enabled: bool = Field(False, description="Evaluate the run's teacher at the end of the pipeline.")
    run_benchmarks: list[str] = Field(
        default_factory=lambda: ["cifar10-small"], description="Benchmarks the pipeline's stage evaluates."
    )
    benchmarks: dict[str, BenchmarkConfig] = Field(
        default_factory=dict, description="Your own benchmarks by name (built-ins: see BUILTIN_BENCHMARKS)."
    )
    knn: KnnConfig = Field(default_factory=KnnConfig)
    linear: LinearConfig = Field(default_factory=LinearConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    copy_detection: CopyDetectionConfig = Field(default_factory=CopyDetectionConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    batch_size: int = Field(64, ge=1, description="Images per forward pass.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for decoding.")
    device: str = Field("auto", description="auto (cuda when available) | cpu | cuda | cuda:N.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Forward passes of feature extraction: auto = bf16 autocast on CUDA, fp32 on CPU; bf16 "
        "also on CPU (fast where the CPU has AMX or AVX512-BF16); features are cached per precision.",
    )
    cache_dir: str | None = Field(
        None, description="Extracted tars and cached features (default: ~/.cache/dinoflow/eval)."
    )
    drop_tolerance: float = Field(
        0.005, ge=0.0, description="A metric below the previous evaluation's by more than this is a drop."
    )

    def benchmark(self, name: str) -> BenchmarkConfig:
        """The benchmark ``name``: the user's entry, else a built-in; a ConfigError listing both."""
        if name in self.benchmarks:
            return self.benchmarks[name]
        if name in BUILTIN_BENCHMARKS:
            return BenchmarkConfig.model_validate(BUILTIN_BENCHMARKS[name])
        known = sorted({*self.benchmarks, *BUILTIN_BENCHMARKS})
        close = close_keys(name, known)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"unknown benchmark {name!r}{hint}; known: {', '.join(known)}")

    def cache_root(self) -> Path:
        if self.cache_dir is not None:
            return Path(expand_path(self.cache_dir))
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return Path(base) / "dinoflow" / "eval"
