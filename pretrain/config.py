"""The typed configuration tree of a pretraining run (DINOv2, or SSCD copy detection).

Defaults follow the reference ``ssl_default_config.yaml`` of facebookresearch/dinov2 (a ViT-L/16
short run, see /work/shared/REFERENCE.md); presets in ``pretrain/presets/*.yaml`` hold only the keys
that differ, each commented. ``load_config("vitl14", ["train.epochs=10"])`` resolves a preset (or a
YAML file path) plus ``a.b=value`` overrides into a validated :class:`TrainConfig`.

``objective`` names the training objective (``pretrain/objectives.py``): ``dinov2`` (the default)
uses ``heads``, ``loss``, ``crops`` and ``masking``; ``sscd`` (Pizzi et al. 2022, copy detection)
uses the ``sscd`` section and ignores those four. ``model``, ``optim`` and ``train`` serve both.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_catalog.settings import (
    ConfigError,
    StrictModel,
    apply_overrides,
    close_keys,
    dump_yaml,
    flatten,
    leaf_keys,
    read_yaml,
    to_yaml,
    validate,
)

PRESETS_DIR = Path(__file__).parent / "presets"


class _Strict(StrictModel):
    """Unknown keys are errors naming the closest valid ones (a typo never falls back to a default)."""

    model_config = ConfigDict(validate_assignment=True)


class ModelConfig(_Strict):
    arch: str = (
        "vit_large"  # a name of pretrain.models (vit_pico, vit_small, vit_base, vit_large, vit_giant2)
    )
    patch_size: int = 16
    registers: int = 0  # register tokens (Darcet et al. 2023); 0 or 4 in released models
    drop_path: float = 0.3  # stochastic depth rate of the student (the teacher runs in eval mode)
    drop_path_uniform: bool = True  # same rate in every block (reference) instead of a linear ramp
    layerscale: float = 1e-5  # LayerScale init; 0 disables LayerScale
    ffn: Literal["mlp", "swiglu", "swiglufused"] = "mlp"
    # A backbone file (any layout pretrain.models.io reads: a run's teacher_backbone.safetensors,
    # official .pth, HF folder) that student and teacher start from, heads fresh; None: random init.
    # Read only when a run starts (a resumed run takes its checkpoint); a mismatch is a CheckpointError.
    init_backbone: str | None = None


class HeadConfig(_Strict):
    prototypes: int = 65536  # K, the output dimension (number of prototypes)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    # False (DINOv2): the prototypes' weight-norm gain g starts at 1 and is trained with the last
    # layer. True: DINO v1's norm_last_layer, g frozen at 1 (logits are cosines).
    norm_last_layer: bool = False


class HeadsConfig(_Strict):
    dino: HeadConfig = Field(default_factory=HeadConfig)
    ibot_separate_head: bool = False  # False: iBOT patch tokens go through the DINO head
    ibot: HeadConfig = Field(default_factory=HeadConfig)  # used only when ibot_separate_head


class LossConfig(_Strict):
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    centering: Literal["softmax", "sinkhorn_knopp"] = "softmax"
    center_momentum: float = 0.9  # EMA of the softmax center
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # after warmup
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30


class CropsConfig(_Strict):
    global_size: int = 224
    local_size: int = 96
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    local_number: int = 8
    # Probabilities as the paper states them (the reference code applies the blur ones inverted).
    global1_blur: float = 1.0
    global2_blur: float = 0.1
    global2_solarize: float = 0.2
    local_blur: float = 0.5


class MaskingConfig(_Strict):
    ratio_min: float = 0.1
    ratio_max: float = 0.5
    probability: float = 0.5  # fraction of the student's global crops that get masked


class OptimConfig(_Strict):
    base_lr: float = 0.004  # per 1024 images
    lr_scaling: Literal["sqrt", "linear"] = "sqrt"  # lr = base_lr * f(global batch / 1024)
    warmup_epochs: float = 10
    min_lr: float = 1e-6
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.992
    momentum_teacher_end: float = 1.0
    clip_grad: float = 3.0  # 0 disables clipping
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    freeze_last_layer_epochs: float = 1
    beta1: float = 0.9
    beta2: float = 0.999

    def lr(self, global_batch: int) -> float:
        """The peak learning rate for a global batch size (sqrt scaling, Oquab et al. 2023)."""
        ratio = global_batch / 1024.0
        return self.base_lr * (math.sqrt(ratio) if self.lr_scaling == "sqrt" else ratio)


class TrainLoopConfig(_Strict):
    batch_size_per_device: int = 64
    epochs: int = 100
    iterations_per_epoch: int = 1250  # OFFICIAL_EPOCH_LENGTH: an "epoch" is a fixed step count
    seed: int = 0
    num_workers: int = 10  # data loader processes per rank; part of the data order (keep it on resume)
    shuffle_buffer: int = 1000  # samples held by each stream's shuffle buffer (raw bytes)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    checkpoint_every: int = 1250  # steps; a checkpoint is also written at the end of each phase
    keep_last: int = 3
    log_every: int = 10
    fsdp: bool = False  # FSDP2 (fully_shard) instead of replicated DDP
    compile: bool = False  # torch.compile the backbones


class HighResConfig(_Strict):
    enabled: bool = False
    size: int = 518  # global crop size of the adaptation phase (paper: 518 = 37 x 14)
    local_size: int | None = None  # None: keep crops.local_size
    steps: int = 10000  # paper: 10k iterations, all schedules compressed into them
    lr_scale: float = 0.1  # base lr multiplier; the paper says "reduced" without a value (our choice)
    batch_size_per_device: int | None = None  # None: keep train.batch_size_per_device


class DebugConfig(_Strict):
    nan_at_step: int | None = None  # testing hook: the loss of step N (counted from 1) becomes NaN


class EditsConfig(_Strict):
    """The copy-detection edits of each SSCD view (``pretrain/edits.py``), applied in this order.

    Each family has a probability ``*_p``; sizes are fractions of the view's side unless they say px.
    Defaults: SSCD's "advanced" augmentation set (Pizzi et al. 2022, table 2; sscd/transforms/
    settings.py) plus the edits of issue 11's hard pairs (borders, caption strips, small rotations).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction (SSCD: 0.08-1)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio range
    flip_p: float = 0.5  # horizontal flip
    rotate90_p: float = 0.05  # a quarter, half or three-quarter turn (SSCD: 0.05)
    rotate_p: float = 0.2  # a small rotation, corners filled with a solid colour
    rotate_degrees: float = 10.0  # its angle, uniform in +-degrees
    overlay_p: float = 0.1  # the view pasted, smaller, onto a generated background image
    overlay_scale: tuple[float, float] = (0.4, 0.9)  # its side on the background (fraction)
    border_p: float = 0.2  # solid-colour border/padding, each side its own width, resized back
    border_width: tuple[float, float] = (0.0, 0.15)  # width of each side (fraction)
    caption_p: float = 0.1  # a solid strip with text along the top or bottom edge
    caption_height: tuple[float, float] = (0.08, 0.2)  # the strip's height (fraction)
    text_p: float = 0.1  # a random text line over the image (SSCD: 0.1)
    text_size: tuple[float, float] = (0.1, 0.3)  # font size (fraction; SSCD: 0.1-0.3)
    emoji_p: float = 0.2  # an emoji-like shape over the image (SSCD: 0.2; drawn, no emoji font)
    emoji_size: tuple[float, float] = (0.1, 0.5)  # its size (fraction; SSCD: 0.1-0.5)
    overlay_opacity: tuple[float, float] = (0.4, 1.0)  # opacity of text and shapes
    color_jitter_p: float = 0.8  # colour jitter (SSCD: 0.8)
    color_jitter: tuple[float, float, float, float] = (
        0.8,
        0.8,
        0.8,
        0.2,
    )  # brightness, contrast, saturation, hue
    grayscale_p: float = 0.2  # grayscale (SSCD: 0.2)
    blur_p: float = 0.5  # Gaussian blur (SSCD: 0.5)
    blur_sigma: tuple[float, float] = (1.0, 5.0)  # its sigma in px of the view (SSCD: radius 1-5 at 224 px)
    resize_p: float = 0.1  # resize down, then back up (detail lost)
    resize_scale: tuple[float, float] = (0.25, 0.75)  # the intermediate side (fraction)
    jpeg_p: float = 0.2  # JPEG recompression (SSCD: 0.2)
    jpeg_quality: tuple[int, int] = (5, 95)  # its quality, uniform integers (SSCD: 0-100)

    @model_validator(mode="after")
    def _check(self) -> EditsConfig:
        for name, value in self:
            if name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability, got {value}")
            if isinstance(value, tuple) and len(value) == 2 and not value[0] <= value[1]:
                raise ValueError(f"{name} must be (min, max) with min <= max, got {value}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must lie in 1..100, got {self.jpeg_quality}")
        return self


class SSCDConfig(_Strict):
    """SSCD copy-detection training (Pizzi et al. 2022, arXiv:2202.10261): InfoNCE over strongly
    edited views plus a differential-entropy (KoLeo) term on a GeM-pooled, projected descriptor."""

    views: int = Field(2, ge=2)  # edited views per image (SSCD: 2); positives are the other views
    size: int = 224  # side of each view in px (SSCD trains at 224)
    input_size: int | None = None  # side the exported descriptor resizes images to; None: size
    dim: int = 512  # descriptor dimension (SSCD: 512)
    pooling: Literal["cls", "gem", "cls_gem"] = "cls_gem"  # over the backbone's tokens (models/descriptor.py)
    gem_p: float = Field(3.0, ge=1.0)  # GeM exponent (SSCD: 3)
    temperature: float = Field(0.05, gt=0)  # InfoNCE temperature (SSCD: 0.05)
    entropy_weight: float = Field(30.0, ge=0)  # weight of the KoLeo entropy term (SSCD: 30)
    init_backbone: str | None = None  # backbone file (any layout) to start from; None: random init
    edits: EditsConfig = Field(default_factory=EditsConfig)


class TrainConfig(_Strict):
    objective: Literal["dinov2", "sscd"] = "dinov2"  # pretrain/objectives.py OBJECTIVES
    model: ModelConfig = Field(default_factory=ModelConfig)
    heads: HeadsConfig = Field(default_factory=HeadsConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    crops: CropsConfig = Field(default_factory=CropsConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    highres: HighResConfig = Field(default_factory=HighResConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)
    sscd: SSCDConfig = Field(default_factory=SSCDConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        sizes = {"crops.global_size": self.crops.global_size, "crops.local_size": self.crops.local_size}
        if self.objective == "sscd":
            if self.highres.enabled:
                raise ValueError("highres.enabled is a DINOv2 phase; objective sscd trains at sscd.size only")
            sizes |= {"sscd.size": self.sscd.size, "sscd.input_size": self.sscd.input_size or self.sscd.size}
        if self.highres.enabled:
            sizes |= {
                "highres.size": self.highres.size,
                "highres.local_size": self.highres.local_size or self.crops.local_size,
            }
        for key, size in sizes.items():
            if size % self.model.patch_size:
                raise ValueError(
                    f"crop size {size} ({key}) is not a multiple of patch size {self.model.patch_size}"
                )
        return self


def valid_keys(model: type[BaseModel] = TrainConfig) -> list[str]:
    """All dotted leaf keys of the config tree (``optim.base_lr``, ...)."""
    return leaf_keys(model)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(preset_or_file: str | Path) -> Path:
    """The YAML file of a preset name (``vits14``) or a file path; a ConfigError naming the presets."""
    path = Path(preset_or_file)
    if not path.suffix and not path.exists():
        if str(preset_or_file) not in preset_names():
            close = close_keys(str(preset_or_file), preset_names())
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise ConfigError(
                f"unknown preset {str(preset_or_file)!r} ({hint}valid presets: {', '.join(preset_names())}, "
                "or a YAML file path)"
            )
        path = PRESETS_DIR / f"{preset_or_file}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found (presets: {', '.join(preset_names())})")
    return path


def read_preset(preset_or_file: str | Path | None) -> dict[str, Any]:
    """The raw key tree of a preset or YAML file (unvalidated; ``{}`` for None)."""
    return {} if preset_or_file is None else read_yaml(preset_path(preset_or_file))


def load_config(preset_or_file: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then a preset name or YAML file, then ``a.b=value`` overrides (YAML-parsed values).

    One loader for the CLI, the flows and the trainer (``data_catalog.settings``): an unknown key,
    a bad value, a missing file or an unknown preset is a one-line ``ConfigError``.
    """
    tree = apply_overrides(TrainConfig, read_preset(preset_or_file), list(overrides or []))
    where = None if preset_or_file is None else f"training config {preset_or_file}"
    return validate(TrainConfig, tree, where)


def config_to_yaml(config: TrainConfig) -> str:
    """The fully resolved config (every key), as saved beside a run's outputs."""
    return to_yaml(config)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write ``config.yaml`` atomically (temp name, then rename)."""
    return dump_yaml(config, path)


# Keys that change only bookkeeping, never the math or the data order, so they may differ when a run
# resumes. The stop step is not among the config keys at all: ``--max-steps`` (an argument) may grow
# from one start to the next, which is how a run is resumed for more steps.
RESUME_FREE_KEYS = frozenset({"train.checkpoint_every", "train.keep_last", "train.log_every"})
_ABSENT = "(absent)"


def config_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """``key: old -> new`` for each leaf where ``saved`` (a run's config.yaml tree) and ``config`` differ.

    A key the saved tree lacks is no difference while ``config`` holds its default: it was added to
    the config after that run started, and its default keeps the behaviour the run had (``objective``
    and ``sscd.*`` for runs from before the SSCD objective)."""
    old, new = flatten(saved), flatten(config.model_dump(mode="json"))
    defaults = flatten(TrainConfig().model_dump(mode="json"))
    keys = sorted((set(old) | set(new)) - RESUME_FREE_KEYS)
    return [
        f"{key}: {old.get(key, _ABSENT)!r} -> {new.get(key, _ABSENT)!r}"
        for key in keys
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
        and not (key not in old and key in defaults and new.get(key) == defaults[key])
    ]


RESUME_REMEDY = "resume it anyway with the new settings (--resume-anyway) or choose a new --output-dir"


def resume_conflict(run_dir: str | Path, config: TrainConfig, remedy: str = RESUME_REMEDY) -> str | None:
    """One line when ``run_dir`` holds checkpoints of a run with other settings than ``config``, else None.

    Compared with the run directory's ``config.yaml`` (the settings the checkpoints were trained
    with); keys in :data:`RESUME_FREE_KEYS` are ignored. ``remedy`` ends the line: what the caller's
    user can do about it.
    """
    from pretrain.checkpoint import list_checkpoints  # torch: only when a run directory is checked

    run_dir = Path(run_dir)
    saved_path = run_dir / "config.yaml"
    if not list_checkpoints(run_dir / "checkpoints") or not saved_path.is_file():
        return None
    diffs = config_differences(read_yaml(saved_path), config)
    if not diffs:
        return None
    return (
        f"run directory {str(run_dir)!r} holds checkpoints of a run with other settings "
        f"({'; '.join(diffs)}): {remedy}"
    )
