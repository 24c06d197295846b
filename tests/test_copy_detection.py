"""Planted copies, splits and ground truth of the copy-detection measurement (evaluation/copy_detection.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_catalog.image import open_image
from evaluation.copy_detection import (
    EDITS,
    GROUPS,
    copy_bytes,
    generated_pool,
    pair_type,
    split_of,
    split_photos,
    ukbench_pool,
    ukbench_scene,
)

PHOTO = "n01440764_tench.JPEG"


@pytest.fixture(scope="module")
def photo(shared_data: Path) -> tuple[bytes, Image.Image]:
    data = (shared_data / "raw-photos" / "images" / PHOTO).read_bytes()
    return data, open_image(data)


def test_groups_are_the_issues() -> None:
    assert GROUPS["easy"] == ("resize_50", "jpeg_q50", "brightness_+30")
    assert GROUPS["hard"] == ("crop_85", "hflip", "rotate_5", "border", "caption", "grayscale")
    assert GROUPS["exact"] == ("exact",) and GROUPS["extra"] == ("overlay_text", "blur")
    with pytest.raises(ValueError, match="unknown edit 'flip'; valid edits: exact, resize_50"):
        copy_bytes(b"", Image.new("RGB", (8, 8)), "flip")


def test_every_edit_is_deterministic_and_does_what_it_says(photo: tuple[bytes, Image.Image]) -> None:
    data, img = photo
    w, h = img.size
    pad = round(min(w, h) * 0.10)
    sizes = {"resize_50": (round(w / 2), round(h / 2)), "crop_85": (w - round(w * 0.15), h - round(h * 0.15)),
             "border": (w + 2 * pad, h + 2 * pad), "caption": (w, h + round(h * 0.2))}  # fmt: skip
    rgb = np.asarray(img, dtype=np.float32)
    for name in EDITS:
        out = copy_bytes(data, img, name)
        assert out == copy_bytes(data, img, name), name
        copy = Image.open(io.BytesIO(out))
        assert copy.size == sizes.get(name, (w, h)), name
        assert copy.format == "JPEG"
        if name in ("jpeg_q50", "brightness_+30", "hflip", "grayscale", "blur", "rotate_5", "overlay_text"):
            assert out != data
    assert copy_bytes(data, img, "exact") == data
    assert Image.open(io.BytesIO(copy_bytes(data, img, "grayscale"))).mode == "L"
    flipped = np.asarray(open_image(copy_bytes(data, img, "hflip")), dtype=np.float32)
    assert np.abs(flipped[:, ::-1] - rgb).mean() < 3  # mirror image, up to JPEG error
    bright = np.asarray(open_image(copy_bytes(data, img, "brightness_+30")), dtype=np.float32)
    assert bright.mean() > rgb.mean() * 1.15
    border = np.asarray(open_image(copy_bytes(data, img, "border")), dtype=np.float32)
    assert border[: pad - 2].max() < 30 and border[:, : pad - 2].max() < 30  # black frame
    caption = np.asarray(open_image(copy_bytes(data, img, "caption")).convert("L"), dtype=np.float32)
    band = caption[: round(h * 0.2)]
    assert np.median(band) > 240 and band.min() < 60  # white band with dark text
    rotated = np.asarray(open_image(copy_bytes(data, img, "rotate_5")), dtype=np.float32)
    assert rotated[:3, :3].max() < 30 and np.abs(rotated - rgb).mean() > 5  # black corner, pixels moved


def test_split_is_fixed_and_about_half(shared_data: Path) -> None:
    paths = sorted((shared_data / "raw-photos" / "images").iterdir())
    splits = split_photos(paths)
    calib, held = splits["calibration"], splits["heldout"]
    assert sorted(calib + held) == paths and not set(calib) & set(held)
    assert (len(calib), len(held)) == (268, 232)  # changes only if the salt or the photos change
    assert all(split_of(p.name) == "calibration" for p in calib)
    assert split_of(PHOTO) == split_of(PHOTO)


def test_generated_pool_groups_copies_with_their_original(shared_data: Path) -> None:
    paths = sorted((shared_data / "raw-photos" / "images").iterdir())[:2]
    pool = generated_pool(paths, ["resize_50", "hflip"])
    assert [(p.key, p.source, p.edit) for p in pool] == [
        (paths[0].name, paths[0].name, "original"),
        (f"{paths[0].name}#resize_50", paths[0].name, "resize_50"),
        (f"{paths[0].name}#hflip", paths[0].name, "hflip"),
        (paths[1].name, paths[1].name, "original"),
        (f"{paths[1].name}#resize_50", paths[1].name, "resize_50"),
        (f"{paths[1].name}#hflip", paths[1].name, "hflip"),
    ]
    assert pool[0].data == paths[0].read_bytes()


def test_ukbench_ground_truth(shared_data: Path) -> None:
    pool = ukbench_pool(shared_data / "imagededup-testdata")
    keys = {p.key: p for p in pool}
    assert len(pool) == 32  # 34 images, the corrupt JPEG twice left out
    assert not any("corrupt" in k for k in keys)
    assert keys["alpha_channel_image.png"].source == "ukbench00120"
    assert keys["alpha_channel_image.png"].edit == "alpha"
    assert keys["ukbench00120_gray.jpg"].edit == "grayscale"
    assert keys["mixed_images/ukbench00120_hflip.jpg"].edit == "hflip"
    assert keys["formats_images/ukbench09380.webp"].edit == "format"
    assert keys["formats_images/baboon.pgm"].source == "formats_images/baboon.pgm"
    assert ukbench_scene("mixed_nested_images/lvl1/lvl2a/ukbench00120_rotation.jpg") == "ukbench00120"
    assert sum(p.source == "ukbench00120" for p in pool) == 11


def test_pair_type_names_the_edit() -> None:
    assert pair_type("original", "hflip") == "hflip"
    assert pair_type("hflip", "original") == "hflip"
    assert pair_type("original", "original") == "exact"
    assert pair_type("resize_50", "crop_85") == "crop_85+resize_50"
