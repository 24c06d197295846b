"""Quality filters: pure functions of a decoded record and a ``FilterConfig``.

Each filter returns ``None`` (passes) or ``(reason, detail)``; ``apply_filters`` runs them in
``FILTER_ORDER`` and reports the first failure, so every rejected image has exactly one reason.

Defaults (``FilterConfig``), measured on the 500 shared raw photos (``raw-photos/images``) and on
generated 640x480 JPEGs, all statistics on the default 128 px-short-side luma thumbnail:

==================  ==========  ==============================================================
threshold           default     why
==================  ==========  ==============================================================
min_side            64 px       raw photos' shortest side is 68 px (1st percentile 136); below 64
                                px are icons/thumbnails. CIFAR (32 px) needs ``min_side: 32``.
max_aspect_ratio    4.0         raw photos reach 2.66 (99th percentile 2.0); 4:1 and beyond are
                                banners/strips that a square crop mostly discards.
min_luma_std        8.0         raw photos: min 15.6, 1st percentile 22.6. Blank (0.0), uniform +
                                noise sigma <= 5 (<= 1.0 after thumbnailing averages it away;
                                sigma 10: 1.8) and a 15-level gradient (4.3) fall below; a
                                40-level gradient (11.5) passes.
min_sharpness       None (off)  raw photos: min 57, 1st percentile 92; smooth gradients < 1,
                                uniform + noise sigma 5: 13. A value of ~20 catches those. Depends
                                on ``thumbnail_size`` (at 64 px photos read ~1.4x higher), and
                                draft-decoded thumbnails read ~11% (median) higher than
                                full-decode ones, so keep thresholds loose.
min_mean_luma       None (off)  raw photos: min 17.4, 1st percentile 40.5.
==================  ==========  ==============================================================
"""

from __future__ import annotations

from collections.abc import Callable

from curation.config import FilterConfig
from curation.decode import ImageRecord
from data_catalog.images import Reason

FilterResult = tuple[Reason, str] | None


def too_small(rec: ImageRecord, cfg: FilterConfig) -> FilterResult:
    assert rec.width is not None and rec.height is not None
    side = min(rec.width, rec.height)
    if side < cfg.min_side:
        return Reason.TOO_SMALL, f"short side {side} px < min_side {cfg.min_side}"
    return None


def aspect_ratio(rec: ImageRecord, cfg: FilterConfig) -> FilterResult:
    assert rec.width is not None and rec.height is not None
    ratio = max(rec.width, rec.height) / max(1, min(rec.width, rec.height))
    if ratio > cfg.max_aspect_ratio:
        return Reason.ASPECT_RATIO, f"aspect ratio {ratio:.2f} > max_aspect_ratio {cfg.max_aspect_ratio}"
    return None


def low_information(rec: ImageRecord, cfg: FilterConfig) -> FilterResult:
    assert rec.luma_std is not None
    if rec.luma_std < cfg.min_luma_std:
        return Reason.LOW_INFORMATION, f"luma std {rec.luma_std:.2f} < min_luma_std {cfg.min_luma_std}"
    return None


def too_blurry(rec: ImageRecord, cfg: FilterConfig) -> FilterResult:
    if cfg.min_sharpness is None:
        return None
    assert rec.sharpness is not None
    if rec.sharpness < cfg.min_sharpness:
        return Reason.TOO_BLURRY, f"sharpness {rec.sharpness:.2f} < min_sharpness {cfg.min_sharpness}"
    return None


def too_dark(rec: ImageRecord, cfg: FilterConfig) -> FilterResult:
    if cfg.min_mean_luma is None:
        return None
    assert rec.mean_luma is not None
    if rec.mean_luma < cfg.min_mean_luma:
        return Reason.TOO_DARK, f"mean luma {rec.mean_luma:.2f} < min_mean_luma {cfg.min_mean_luma}"
    return None


FILTERS: dict[str, Callable[[ImageRecord, FilterConfig], FilterResult]] = {
    "too_small": too_small,
    "aspect_ratio": aspect_ratio,
    "low_information": low_information,
    "too_blurry": too_blurry,
    "too_dark": too_dark,
}
FILTER_ORDER = tuple(FILTERS)


def apply_filters(rec: ImageRecord, cfg: FilterConfig) -> FilterResult:
    """The first failing filter's (reason, detail), or None when the image passes all of them.

    Only meaningful for a record that decoded (``rec.reason is None``).
    """
    if rec.reason is not None:
        raise ValueError(f"apply_filters: {rec.uri} did not decode ({rec.reason})")
    for name in FILTER_ORDER:
        result = FILTERS[name](rec, cfg)
        if result is not None:
            return result
    return None
