"""Block-wise patch masking for iBOT (BEiT, Bao et al. 2022, algorithm 1; as DINOv2 uses it).

Rectangles of random area (``min_num_patches`` .. remaining budget) and aspect ratio
(log-uniform in ``min_aspect`` .. ``max_aspect``) are added until ``num_masking_patches`` patches
are masked, or no rectangle fits without overshooting (so the count is at most the target and
usually equal). Randomness comes from an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

RngLike = np.random.Generator | int | None


def resolve_rng(rng: RngLike) -> np.random.Generator:
    """A Generator from a Generator, a seed, or (None) a seed drawn from torch's global RNG.

    Drawing from torch's RNG makes ``torch.manual_seed`` (and each DataLoader worker's own torch
    seed) control the masks, so workers never share a copied numpy state.
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        rng = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng(rng)


class MaskingGenerator:
    """``__call__(num_masking_patches, rng=None) -> bool ndarray [h, w]`` with <= that many True.

    ``input_size``: the patch grid (h, w) or one int for a square grid. ``max_num_patches`` caps
    one rectangle (default: the whole grid). ``rng`` (constructor): a Generator or seed used by
    calls that pass none; when both are None each call draws its seed from torch's global RNG.
    """

    def __init__(
        self,
        input_size: tuple[int, int] | int,
        num_masking_patches: int | None = None,
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        rng: RngLike = None,
    ) -> None:
        self.height, self.width = (input_size, input_size) if isinstance(input_size, int) else input_size
        if self.height < 1 or self.width < 1:
            raise ValueError(f"mask grid must be positive, got {input_size}")
        if not 0 < min_aspect <= (max_aspect or 1 / min_aspect):
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.num_patches = self.height * self.width
        self.num_masking_patches = num_masking_patches or 0
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches or self.num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.rng = None if rng is None else resolve_rng(rng)

    def get_shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _add_block(self, mask: np.ndarray, max_mask_patches: int, rng: np.random.Generator) -> int:
        """Mask one rectangle adding 1..max_mask_patches new patches (10 tries); returns how many."""
        for _ in range(10):
            # low may exceed high near the end of the budget (as Python's random.uniform allows)
            lo, hi = self.min_num_patches, max_mask_patches
            target_area = lo + (hi - lo) * rng.random()
            aspect_ratio = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_mask_patches:  # never overshoot the target
                    block[...] = True
                    return new
        return 0

    def __call__(self, num_masking_patches: int | None = None, rng: RngLike = None) -> np.ndarray:
        target = self.num_masking_patches if num_masking_patches is None else int(num_masking_patches)
        if not 0 <= target <= self.num_patches:
            raise ValueError(f"cannot mask {target} of {self.num_patches} patches")
        gen = resolve_rng(rng if rng is not None else self.rng)
        mask = np.zeros(self.get_shape(), dtype=bool)
        count = 0
        while count < target:
            delta = self._add_block(mask, min(target - count, self.max_num_patches), gen)
            if delta == 0:
                break
            count += delta
        return mask
