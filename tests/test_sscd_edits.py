"""Copy-detection edits: configured sizes, every family wired to its probability, reproducible views."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from benchmarks.common import write_file_shards
from pretrain.config import EditsConfig, load_config
from pretrain.edits import (
    CopyEditAugmentation,
    add_border,
    add_caption,
    draw_shape,
    draw_text,
    jpeg_recompress,
    resize_down_up,
    rotate,
)

# every family off, crops of the whole image: the view is the photo resized
OFF: dict[str, Any] = {name: 0.0 for name in EditsConfig.model_fields if name.endswith("_p")} | {
    "crop_scale": (1.0, 1.0)
}
FAMILIES = [name for name in EditsConfig.model_fields if name.endswith("_p")]


@pytest.fixture(scope="module")
def photos(raw_photos: Path) -> list[Image.Image]:
    files = sorted(raw_photos.glob("*"))[:3]
    return [Image.open(f) for f in files]


def test_views_have_the_configured_count_size_and_range(photos: list[Image.Image]) -> None:
    for size, views in ((32, 2), (48, 3)):
        aug = CopyEditAugmentation(size, views, blur_sigma=(0.3, 1.0))
        for img in [*photos, photos[0].convert("L"), photos[0].convert("RGBA"), Image.new("RGB", (9, 5))]:
            out = aug(img)["views"]
            assert len(out) == views and all(
                v.shape == (3, size, size) and v.dtype == torch.float32 for v in out
            )
            raw = aug.edit_views(img)
            assert raw.shape == (views, 3, size, size) and 0 <= raw.min() and raw.max() <= 1


def test_views_are_reproducible_from_a_generator_or_the_global_seed(photos: list[Image.Image]) -> None:
    aug = CopyEditAugmentation(32, 2, blur_sigma=(0.3, 1.0))

    def views(seed: int) -> torch.Tensor:
        return aug.edit_views(photos[1], torch.Generator().manual_seed(seed))

    assert torch.equal(views(5), views(5))
    assert not torch.equal(views(5), views(6))
    torch.manual_seed(5)
    assert torch.equal(aug.edit_views(photos[1]), views(5))  # no generator: torch's global RNG
    first, second = views(7)
    assert not torch.equal(first, second)  # two different edits of one image


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_applied_by_its_probability(photos: list[Image.Image], family: str) -> None:
    """With only ``family`` at probability 1, the view differs from the plain resize; at 0 it does not."""
    plain = CopyEditAugmentation(32, 1, **OFF)
    edited = CopyEditAugmentation(32, 1, **(OFF | {family: 1.0}))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    base = plain.edit_views(photos[0], g())
    assert torch.equal(base, CopyEditAugmentation(32, 1, **OFF).edit_views(photos[0], g()))
    if family == "color_jitter_p":  # a jitter may draw factors near 1: try a few seeds
        changed = any(not torch.allclose(edited.edit_views(photos[0], torch.Generator().manual_seed(s)), base,
                                         atol=2 / 255) for s in range(5))  # fmt: skip
    else:
        changed = not torch.allclose(edited.edit_views(photos[0], g()), base, atol=2 / 255)
    assert changed, family


def test_tight_crops_follow_crop_scale(photos: list[Image.Image]) -> None:
    """A crop of 1% of the area is much less like the whole photo than a crop of all of it."""
    whole = CopyEditAugmentation(32, 4, **OFF).edit_views(photos[2], torch.Generator().manual_seed(0))
    tight = CopyEditAugmentation(32, 4, **(OFF | {"crop_scale": (0.01, 0.01)})).edit_views(
        photos[2], torch.Generator().manual_seed(0)
    )
    assert torch.equal(whole[0], whole[1])
    assert (tight - whole).abs().mean() > 0.05


def test_pure_edits_keep_the_size_and_do_what_they_say() -> None:
    img = Image.new("RGB", (40, 30), (0, 128, 255))
    bordered = add_border(img, (10, 0, 0, 0), (255, 0, 0))
    assert bordered.size == img.size and bordered.getpixel((0, 15)) == (255, 0, 0)
    assert bordered.getpixel((39, 15)) == (0, 128, 255)
    turned = rotate(img, 10, (0, 0, 0))
    assert turned.size == img.size and turned.getpixel((0, 0)) == (0, 0, 0)
    assert turned.getpixel((20, 15)) == (0, 128, 255)
    captioned = add_caption(img, "hello", 8, True, (255, 255, 255), (0, 0, 0), append=False)
    assert captioned.size == img.size and captioned.getpixel((39, 29)) == (255, 255, 255)
    assert add_caption(img, "hi", 8, False, (9, 9, 9), (0, 0, 0), append=True).size == img.size
    texted = draw_text(img, "WWW", 20, (255, 255, 255), 1.0, (2, 2))
    assert texted.size == img.size and texted != img
    assert draw_shape(img, "smiley", (5, 5, 25, 25), (255, 214, 0), 0.5).getpixel((15, 15)) != (0, 128, 255)
    with pytest.raises(ValueError, match="valid shapes"):
        draw_shape(img, "cat", (0, 0, 5, 5), (0, 0, 0), 1.0)
    x = torch.rand(1, 3, 32, 32)
    assert resize_down_up(x, 0.25).shape == x.shape
    low, high = jpeg_recompress(x[0], 5), jpeg_recompress(x[0], 100)
    assert low.shape == x[0].shape and (low - x[0]).abs().mean() > (high - x[0]).abs().mean()


def test_bad_edit_settings_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="text_p is a probability"):
        CopyEditAugmentation(32, 2, text_p=1.5)
    with pytest.raises(ValueError, match="jpeg_quality"):
        CopyEditAugmentation(32, 2, jpeg_quality=(0, 50))
    with pytest.raises(ValueError, match="unknown config key 'blur_sigmaa'"):
        CopyEditAugmentation(32, 2, blur_sigmaa=(1, 2))


def test_the_loader_gives_step_ordered_reproducible_view_batches(tmp_path: Path, raw_photos: Path) -> None:
    """The SSCD data path through the engine's step-indexed loader: a resumed reader gives the same views."""
    from data_catalog.shard_index import read_index
    from pretrain.data import build_loader

    index = write_file_shards(sorted(raw_photos.glob("*"))[:24], tmp_path / "shards")
    cfg = load_config("sscd-demo", ["sscd.size=32", "train.batch_size_per_device=4", "train.num_workers=0",
                                    "train.iterations_per_epoch=3", "train.shuffle_buffer=10"])  # fmt: skip
    shards = read_index(str(index)).absolute_shards()
    full = list(build_loader(cfg, "main", shards, 0, 1, 0, 5))
    resumed = list(build_loader(cfg, "main", shards, 0, 1, 2, 5))
    assert [b["step"] for b in full] == list(range(5))
    assert full[0]["collated_views"].shape == (2 * 4, 3, 32, 32)
    for a, b in zip(full[2:], resumed, strict=True):
        assert a["keys"] == b["keys"] and torch.equal(a["collated_views"], b["collated_views"])
