"""Block-wise iBOT masks and the masking collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.collate import collate_data_and_cast
from pretrain.masking import MaskingGenerator


def test_mask_counts_hit_the_target_without_overshooting() -> None:
    gen = MaskingGenerator((16, 16), max_num_patches=128)
    rng = np.random.default_rng(0)
    for target in (0, 5, 26, 64, 128):
        counts = np.array([gen(target, rng=rng).sum() for _ in range(100)])
        assert counts.max() <= target
        assert counts.min() >= 0.9 * target - 1  # the last block may stop a few patches short
        assert counts.mean() >= 0.97 * target


def test_masks_are_blocks_and_reproducible() -> None:
    gen = MaskingGenerator((14, 14), min_num_patches=4, max_num_patches=60, rng=7)
    first = MaskingGenerator((14, 14), min_num_patches=4, max_num_patches=60, rng=7)(40)
    assert np.array_equal(gen(40), first)  # same seed, same mask
    assert not np.array_equal(gen(40), first)  # the generator moves on
    torch.manual_seed(3)
    a = MaskingGenerator((14, 14))(30)
    torch.manual_seed(3)
    assert np.array_equal(MaskingGenerator((14, 14))(30), a)  # no rng: follows torch.manual_seed
    square = MaskingGenerator((14, 14), min_num_patches=16, max_num_patches=16, min_aspect=1.0)(16, rng=1)
    rows, cols = np.nonzero(square)  # area 16, aspect 1: exactly one 4 x 4 block
    assert square.sum() == 16 and np.ptp(rows) == 3 and np.ptp(cols) == 3
    with pytest.raises(ValueError, match="cannot mask"):
        gen(14 * 14 + 1)


def samples(batch: int, n_local: int = 3, size: int = 28, local: int = 14) -> list[dict]:
    """Crops whose pixels encode (image, crop) so that the batch order can be checked."""
    return [
        {
            "global_crops": [torch.full((3, size, size), 10.0 * i + c) for c in range(2)],
            "local_crops": [torch.full((3, local, local), 100 + 10.0 * i + c) for c in range(n_local)],
        }
        for i in range(batch)
    ]


def test_collate_shapes_order_and_weights() -> None:
    b, grid = 8, 8
    n = grid * grid
    out = collate_data_and_cast(
        samples(b),
        mask_ratio_tuple=(0.1, 0.5),
        mask_probability=0.5,
        n_tokens=n,
        mask_generator=MaskingGenerator((grid, grid), max_num_patches=n // 2),
        dtype=torch.bfloat16,
        rng=0,
    )
    g, loc, masks = out["collated_global_crops"], out["collated_local_crops"], out["collated_masks"]
    assert g.shape == (2 * b, 3, 28, 28) and g.dtype == torch.bfloat16
    assert loc.shape == (3 * b, 3, 14, 14)
    assert [g[j, 0, 0, 0].item() for j in range(2 * b)] == [10.0 * i + c for c in range(2) for i in range(b)]
    assert loc[b, 0, 0, 0].item() == 101  # crop-major: image 0's second local crop follows all first ones
    assert masks.shape == (2 * b, n) and masks.dtype == torch.bool
    per_image = masks.sum(1)
    assert (per_image > 0).sum() == int(2 * b * 0.5)  # half the global crops carry a mask
    assert per_image.max() <= int(n * 0.5) and per_image[per_image > 0].min() >= 4
    m = out["n_masked_patches"].item()
    assert out["mask_indices_list"].shape == (m,) and m == per_image.sum() <= out["upperbound"]
    assert torch.equal(masks.flatten().nonzero().flatten(), out["mask_indices_list"])
    w = out["masks_weight"]
    torch.testing.assert_close(w.sum(), (per_image > 0).sum().float())  # each masked image weighs 1
    owner = out["mask_indices_list"] // n
    torch.testing.assert_close(w, 1.0 / per_image[owner].float())


def test_collate_ratios_spread_over_the_range_and_are_seeded() -> None:
    b, grid = 32, 16
    n = grid * grid
    kw = {"n_tokens": n, "mask_generator": MaskingGenerator((grid, grid), max_num_patches=n // 2)}
    out = collate_data_and_cast(samples(b, n_local=0), (0.1, 0.5), 0.5, **kw, rng=1)
    ratios = np.sort(out["collated_masks"].sum(1).numpy()[out["collated_masks"].any(1).numpy()]) / n
    assert ratios.min() < 0.15 and ratios.max() > 0.45  # linear spread: both ends are covered
    assert out["collated_local_crops"].numel() == 0
    again = collate_data_and_cast(samples(b, n_local=0), (0.1, 0.5), 0.5, **kw, rng=1)
    assert torch.equal(again["collated_masks"], out["collated_masks"])
    torch.manual_seed(5)
    x = collate_data_and_cast(samples(4), (0.1, 0.5), 0.5, **kw)["collated_masks"]
    torch.manual_seed(5)
    assert torch.equal(collate_data_and_cast(samples(4), (0.1, 0.5), 0.5, **kw)["collated_masks"], x)


def test_collate_rejects_bad_input() -> None:
    gen = MaskingGenerator((4, 4))
    with pytest.raises(ValueError, match="empty"):
        collate_data_and_cast([], n_tokens=16, mask_generator=gen)
    with pytest.raises(ValueError, match="global_crops"):
        collate_data_and_cast([{"crops": []}], n_tokens=16, mask_generator=gen)
    with pytest.raises(ValueError, match="n_tokens is 9"):
        collate_data_and_cast(samples(2), n_tokens=9, mask_generator=gen)
    bad = samples(2)
    bad[1]["local_crops"] = bad[1]["local_crops"][:1]
    with pytest.raises(ValueError, match="different numbers"):
        collate_data_and_cast(bad, n_tokens=16, mask_generator=gen)
