"""Batch the multi-crop samples and draw the iBOT masks (as DINOv2's ``collate_data_and_cast``);
batch SSCD's edited views (:func:`collate_views`).

Of the n_global x B global-crop images, ``int(n_global * B * mask_probability)`` get a mask; their
mask ratios are spread over ``mask_ratio_tuple``: image i of them draws its ratio uniformly in the
i-th of that many equal slices of the range, so one batch covers the whole range. The masks are then
shuffled across the images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pretrain.masking import MaskingGenerator, RngLike, resolve_rng


def _crops(sample: Any) -> dict[str, list[Tensor]]:
    """A transformed sample: the dict itself, or the first item of an (image, target) pair."""
    crops = sample[0] if isinstance(sample, tuple | list) else sample
    if not isinstance(crops, dict) or "global_crops" not in crops or "local_crops" not in crops:
        raise ValueError("each sample must be a dict with 'global_crops' and 'local_crops' lists")
    return crops


def _stack_crop_major(samples: list[dict[str, list[Tensor]]], key: str, dtype: torch.dtype) -> Tensor:
    """[n_crops * B, 3, H, W]: every image's crop 0, then every image's crop 1, ..."""
    n = len(samples[0][key])
    if any(len(s[key]) != n for s in samples):
        raise ValueError(f"samples hold different numbers of {key}: {[len(s[key]) for s in samples]}")
    if n == 0:
        return torch.empty(0, dtype=dtype)
    return torch.stack([s[key][i] for i in range(n) for s in samples]).to(dtype)


def draw_masks(
    n_images: int,
    n_tokens: int,
    mask_ratio_tuple: tuple[float, float],
    mask_probability: float,
    mask_generator: Callable[..., np.ndarray],
    rng: np.random.Generator,
) -> tuple[Tensor, int]:
    """Masks [n_images, n_tokens] bool (shuffled over images) and the upper bound of masked patches."""
    n_masked_images = int(n_images * mask_probability)
    edges = np.linspace(mask_ratio_tuple[0], mask_ratio_tuple[1], n_masked_images + 1)
    accepts_rng = isinstance(mask_generator, MaskingGenerator)
    masks, upperbound = [], 0
    for i in range(n_images):
        n = 0
        if i < n_masked_images:
            n = int(n_tokens * rng.uniform(edges[i], edges[i + 1]))
            upperbound += int(n_tokens * edges[i + 1])
        mask = mask_generator(n, rng=rng) if accepts_rng else mask_generator(n)
        masks.append(torch.as_tensor(np.asarray(mask), dtype=torch.bool).reshape(-1))
    if masks and masks[0].numel() != n_tokens:
        raise ValueError(f"mask generator gives {masks[0].numel()} patches, n_tokens is {n_tokens}")
    order = rng.permutation(n_images)
    stacked = torch.stack([masks[j] for j in order]) if masks else torch.zeros(0, n_tokens, dtype=torch.bool)
    return stacked, upperbound


def collate_data_and_cast(
    samples: Sequence[Any],
    mask_ratio_tuple: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    n_tokens: int | None = None,
    mask_generator: Callable[..., np.ndarray] | None = None,
    dtype: torch.dtype = torch.float32,
    rng: RngLike = None,
) -> dict[str, Any]:
    """Samples ``{"global_crops": [Tensor[3,H,W]] * G, "local_crops": [Tensor[3,h,w]] * L}`` -> batch.

    Returns ``collated_global_crops`` [G*B, 3, H, W] and ``collated_local_crops`` [L*B, 3, h, w]
    (crop-major, in ``dtype``), ``collated_masks`` [G*B, n_tokens] bool, ``mask_indices_list`` [M]
    (flat indices into [G*B*n_tokens]), ``masks_weight`` [M] (1 / masked patches of the patch's
    image: sums to the number of masked images), ``n_masked_patches`` tensor([M]) and
    ``upperbound`` (int >= M). ``rng``: Generator or seed; None draws one from torch's global RNG.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    if n_tokens is None or mask_generator is None:
        raise ValueError("collate_data_and_cast needs n_tokens and mask_generator")
    if not 0 <= mask_ratio_tuple[0] <= mask_ratio_tuple[1] <= 1 or not 0 <= mask_probability <= 1:
        raise ValueError(f"bad mask ratios {mask_ratio_tuple} / probability {mask_probability}")
    crops = [_crops(s) for s in samples]
    global_crops = _stack_crop_major(crops, "global_crops", dtype)
    local_crops = _stack_crop_major(crops, "local_crops", dtype)
    masks, upperbound = draw_masks(
        global_crops.shape[0], n_tokens, mask_ratio_tuple, mask_probability, mask_generator, resolve_rng(rng)
    )
    mask_indices = masks.flatten().nonzero().flatten()
    per_image = 1.0 / masks.sum(-1).clamp(min=1.0)
    masks_weight = per_image.unsqueeze(-1).expand_as(masks)[masks]
    return {
        "collated_global_crops": global_crops,
        "collated_local_crops": local_crops,
        "collated_masks": masks,
        "mask_indices_list": mask_indices,
        "masks_weight": masks_weight,
        "upperbound": upperbound,
        "n_masked_patches": torch.full((1,), fill_value=mask_indices.shape[0], dtype=torch.long),
    }


def collate_views(samples: Sequence[Any]) -> dict[str, Any]:
    """SSCD samples ``{"views": [Tensor[3, S, S]] * V}`` -> ``{"collated_views": [V*B, 3, S, S]}``,
    view-major (every image's view 0, then every image's view 1, ...), as the loss expects."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    items = [s[0] if isinstance(s, tuple | list) else s for s in samples]
    if not all(isinstance(s, dict) and "views" in s for s in items):
        raise ValueError(
            "each sample must be a dict with a 'views' list (pretrain.edits.CopyEditAugmentation)"
        )
    return {"collated_views": _stack_crop_major(items, "views", torch.float32)}
