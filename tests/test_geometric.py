"""Geometric verification on real photos: a photo verifies against its edited copies, not others."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from curation.geometric import is_copy, local_features, match_features, verify_pair
from data_catalog.image import open_image
from evaluation.copy_detection import copy_bytes

PHOTOS = ["n01440764_tench.JPEG", "n02085620_Chihuahua.JPEG", "n02123045_tabby.JPEG"]


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> dict[str, tuple[bytes, Image.Image]]:
    out = {}
    for name in PHOTOS:
        data = (shared_data / "raw-photos" / "images" / name).read_bytes()
        out[name] = (data, open_image(data))
    return out


@pytest.mark.parametrize(
    "edit", ["resize_50", "crop_85", "hflip", "rotate_5", "border", "caption", "grayscale"]
)
def test_photo_verifies_against_its_copies(photos: dict[str, tuple[bytes, Image.Image]], edit: str) -> None:
    for data, img in photos.values():
        copy = open_image(copy_bytes(data, img, edit))
        match = verify_pair(img, copy)
        assert is_copy(match), (edit, match)
        assert match.mirrored == (edit == "hflip")


def test_different_photos_do_not_verify(photos: dict[str, tuple[bytes, Image.Image]]) -> None:
    feats = {n: local_features(img) for n, (_, img) in photos.items()}
    for a in PHOTOS:
        for b in PHOTOS:
            if a != b:
                match = match_features(feats[a], feats[b])
                assert not is_copy(match) and match.inliers < 15, (a, b, match)
    # the same caption on two different photos matches on the text, in a thin band: not a copy
    (da, ia), (db, ib) = photos[PHOTOS[0]], photos[PHOTOS[1]]
    text = verify_pair(open_image(copy_bytes(da, ia, "caption")), open_image(copy_bytes(db, ib, "caption")))
    assert not is_copy(text), text


# Captioned copies of different calibration photos that matched with 80-169 inliers, the caption's text
# plus one or two stray inliers far from it, whose convex hull covered 0.12-0.28 of the image.
CAPTION_PAIRS = [
    ("n02098286_West_Highland_white_terrier.JPEG", "n04493381_tub.JPEG"),
    ("n03788365_mosquito_net.JPEG", "n03902125_pay-phone.JPEG"),
    ("n02859443_boathouse.JPEG", "n03131574_crib.JPEG"),
    ("n03584254_iPod.JPEG", "n04336792_stretcher.JPEG"),
]


@pytest.mark.parametrize("pair", CAPTION_PAIRS, ids=lambda p: p[0].split("_")[1])
def test_a_shared_caption_with_stray_inliers_is_not_a_copy(shared_data: Path, pair: tuple[str, str]) -> None:
    a, b = (shared_data / "raw-photos" / "images" / name for name in pair)
    ia, ib = open_image(a.read_bytes()), open_image(b.read_bytes())
    match = verify_pair(
        open_image(copy_bytes(a.read_bytes(), ia, "caption")),
        open_image(copy_bytes(b.read_bytes(), ib, "caption")),
    )
    assert match.inliers >= 20 and not is_copy(match), match  # many inliers, all but a few in one band
    assert is_copy(verify_pair(ia, open_image(copy_bytes(a.read_bytes(), ia, "caption"))))


def test_small_and_blank_images_score_zero_without_error(
    photos: dict[str, tuple[bytes, Image.Image]],
) -> None:
    _, img = photos[PHOTOS[0]]
    blank = Image.new("RGB", (8, 8), (90, 90, 90))
    assert verify_pair(img, blank).inliers == 0
    assert verify_pair(blank, blank).inliers == 0
    tiny = img.resize((48, 32))
    match = verify_pair(img, tiny)  # upscaled to the working size: still matches or scores low, no error
    assert match.inliers >= 0 and 0.0 <= match.spread <= 1.0
    assert verify_pair(img, tiny) == match  # RANSAC seeded: deterministic


def test_pairs_measured_in_blocks_on_threads_match_one_by_one(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of pairs on several threads give each pair the match a lone verify_pair gives, an
    unreadable file gives None, and the order of the answers is the order of the pairs."""
    import curation.geometric as geometric
    from data_catalog.uris import UriReader

    paths = []
    for name in PHOTOS:
        data = (shared_data / "raw-photos" / "images" / name).read_bytes()
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
        paths.append(tmp_path / f"crop-{name}")
        paths[-1].write_bytes(copy_bytes(data, open_image(data), "crop_85"))
    missing = str(tmp_path / "gone.jpg")
    pairs = [(str(a), str(b)) for a in paths for b in paths if a != b][:14] + [(str(paths[0]), missing)]
    monkeypatch.setattr(geometric, "BLOCK_PAIRS", 4)  # several blocks, images recur across them
    with UriReader() as reader:
        got = geometric.measure_uri_pairs(pairs, reader, threads=3)
    assert got[-1] is None
    for (a, b), match in zip(pairs[:-1], got[:-1], strict=True):
        assert match == verify_pair(open_image(Path(a).read_bytes()), open_image(Path(b).read_bytes())), (
            a,
            b,
        )
