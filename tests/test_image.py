"""One image path: the opener (data_catalog.image) on real files that need it (EXIF-rotated,
transparent, palette, CMYK, 16-bit, grayscale, 1-bit), then the same files through ingest, a dataset
version, plain webdataset decoding, the training loader and the evaluation loader. Every expected
image is computed here independently (numpy, explicit transposes), never by the opener itself."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from curation.config import CurateConfig
from curation.dataset_version import create_dataset_version
from curation.ingest import ingest
from curation.shards import shard_urls
from data_catalog.catalog import Catalog
from data_catalog.image import exif_orientation, kept_ext, normalize, open_image, oriented_size
from data_catalog.images import read_images
from evaluation.knn import eval_transform, image_folder_loader
from pretrain.data import StepBatches, decode_image, make_loader, open_dataset

GREEN, RED = (0, 255, 0), (255, 0, 0)


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def upright_photo(raw_photos: Path, size: tuple[int, int] = (240, 160)) -> Image.Image:
    """A real RGB photo, landscape and resized to ``size`` so rotations change its shape."""
    for path in sorted(raw_photos.iterdir()):
        with Image.open(path) as img:
            if img.mode == "RGB" and img.width > 1.3 * img.height and exif_orientation(img) == 1:
                return img.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    raise AssertionError("no landscape RGB photo in raw-photos")


def problem_files(photo: Image.Image) -> dict[str, tuple[bytes, np.ndarray, bool]]:
    """``{file name: (bytes, expected upright RGB pixels [H, W, 3] uint8, lossy)}``.

    ``lossy``: the expected pixels are those before JPEG compression, so compare with a tolerance.
    """
    rgb = np.asarray(photo)
    h, w = rgb.shape[:2]
    out: dict[str, tuple[bytes, np.ndarray, bool]] = {}
    # orientation 6: shown rotated 90 degrees clockwise, so the file holds the photo turned the other way
    out["rot6.jpg"] = (
        _save(photo.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=_exif(6)),
        rgb,
        True,
    )
    out["rot8.jpg"] = (
        _save(photo.transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95, exif=_exif(8)),
        rgb,
        True,
    )
    # RGBA: left third fully transparent over pure green, middle third half transparent
    alpha = np.full((h, w), 255, np.uint8)
    alpha[:, : w // 3], alpha[:, w // 3 : 2 * w // 3] = 0, 128
    hidden = rgb.copy()
    hidden[:, : w // 3] = GREEN
    rgba = Image.fromarray(np.dstack([hidden, alpha]), "RGBA")
    a = alpha[..., None] / 255.0
    on_white = np.round(hidden * a + 255 * (1 - a)).astype(np.uint8)
    out["alpha.png"] = (_save(rgba, "PNG"), on_white, False)
    # palette with a transparent index (red) covering a rectangle
    pal = photo.quantize(63)
    pal_rgb = np.asarray(pal.convert("RGB")).copy()
    palette = pal.getpalette()[: 63 * 3] + list(RED)  # type: ignore[index]
    pal.putpalette(palette)
    idx = np.asarray(pal).copy()
    idx[h // 4 : h // 2, w // 4 : w // 2] = 63
    pal_t = Image.fromarray(idx, "P")
    pal_t.putpalette(palette)
    pal_rgb[h // 4 : h // 2, w // 4 : w // 2] = 255
    out["palette.png"] = (_save(pal_t, "PNG", transparency=63), pal_rgb, False)
    # RGB PNG with a tRNS colour key: the green square is transparent
    keyed = rgb.copy()
    keyed[:20, :20] = GREEN
    keyed_white = keyed.copy()
    keyed_white[:20, :20] = 255
    out["trns.png"] = (_save(Image.fromarray(keyed), "PNG", transparency=GREEN), keyed_white, False)
    out["cmyk.jpg"] = (_save(photo.convert("CMYK"), "JPEG", quality=95), rgb, True)
    # 16-bit grayscale: full 0..65535 range, scaled by 255/65535
    luma16 = (np.asarray(photo.convert("L"), np.uint32) * 257 + np.arange(w) % 200).astype(np.uint16)
    gray16 = np.round(luma16 * (255 / 65535)).astype(np.uint8)
    out["deep16.png"] = (_save(Image.fromarray(luma16), "PNG"), np.dstack([gray16] * 3), False)
    gray = np.asarray(photo.convert("L"))
    out["gray.jpg"] = (_save(Image.fromarray(gray), "JPEG", quality=95), np.dstack([gray] * 3), True)
    bits = gray > 128
    out["onebit.png"] = (
        _save(Image.fromarray(bits), "PNG"),
        np.dstack([bits * 255] * 3).astype(np.uint8),
        False,
    )
    return out


@pytest.fixture(scope="module")
def files(raw_photos: Path) -> dict[str, tuple[bytes, np.ndarray, bool]]:
    return problem_files(upright_photo(raw_photos))


def assert_same_image(got: Image.Image | np.ndarray, want: np.ndarray, lossy: bool, what: str) -> None:
    arr = np.asarray(got)
    assert arr.shape == want.shape, f"{what}: shape {arr.shape}, expected {want.shape}"
    err = np.abs(arr.astype(float) - want.astype(float)).mean()
    assert err < (3.0 if lossy else 1e-9), f"{what}: mean abs error {err:.2f} grey levels"


def test_opener_gives_the_upright_rgb_image(files: dict) -> None:
    for name, (data, want, lossy) in files.items():
        img = open_image(data)
        assert img.mode == "RGB", name
        assert_same_image(img, want, lossy, name)
        with Image.open(io.BytesIO(data)) as src:
            assert oriented_size(src) == img.size, name  # header-only size agrees with the pixels


def test_hidden_colours_never_show(files: dict) -> None:
    """Pixels under full transparency are white: not the green / red the file hides there."""
    alpha = np.asarray(open_image(files["alpha.png"][0]))
    w = alpha.shape[1]
    assert (alpha[:, : w // 3] == 255).all()
    palette = np.asarray(open_image(files["palette.png"][0]))
    h, w = palette.shape[:2]
    assert (palette[h // 4 : h // 2, w // 4 : w // 2] == 255).all()
    assert (np.asarray(open_image(files["trns.png"][0]))[:20, :20] == 255).all()


def test_luma_mode_is_the_luma_of_the_rgb_image(files: dict) -> None:
    for name, (data, _, _) in files.items():
        rgb, luma = open_image(data), open_image(data, mode="L")
        assert luma.mode == "L" and luma.size == rgb.size
        assert np.abs(np.asarray(rgb.convert("L"), float) - np.asarray(luma, float)).max() <= 1, name


def test_draft_decodes_smaller_but_upright(files: dict) -> None:
    data, want, _ = files["rot6.jpg"]
    small = open_image(data, draft=(80, 80))  # stored 160 x 240: scale 1/2 keeps both sides >= 80
    assert small.size == (want.shape[1] // 2, want.shape[0] // 2)  # DCT scale 1/2, still landscape
    ref = Image.fromarray(want).resize(small.size, Image.Resampling.BOX)
    assert np.abs(np.asarray(small, float) - np.asarray(ref, float)).mean() < 6


def test_training_decoder_normalises_old_shards(files: dict) -> None:
    """Shards written before normalisation hold EXIF-rotated / RGBA originals: the training
    loader's decoder still gives the upright image on white."""
    for name in ("rot6.jpg", "alpha.png", "palette.png"):
        data, want, lossy = files[name]
        sample = {"__key__": "k", name.rsplit(".", 1)[1]: data}
        assert_same_image(decode_image(sample), want, lossy, name)
    with pytest.raises(ValueError, match="cannot decode"):
        decode_image({"__key__": "bad", "jpg": b"not an image"})


def test_kept_ext_only_for_files_plain_pil_decodes_right(files: dict) -> None:
    kept = {}
    for name, (data, _, _) in files.items():
        with Image.open(io.BytesIO(data)) as img:
            kept[name] = kept_ext(img, data)
    assert kept == {name: ("jpg" if name in ("gray.jpg",) else None) for name in files}
    plain = _save(Image.new("RGB", (8, 8), RED), "PNG")
    assert kept_ext(Image.open(io.BytesIO(plain)), plain) == "png"


def test_png_exif_after_pixel_data_is_found(raw_photos: Path) -> None:
    """PNG allows the eXIf chunk after IDAT: PIL reads it only while decoding; the sample format
    decision and the opener still see orientation 6."""
    photo = upright_photo(raw_photos, (60, 40))
    data = _save(photo.transpose(Image.Transpose.ROTATE_90), "PNG", exif=_exif(6))
    start = data.index(b"eXIf") - 4
    end = start + 12 + int.from_bytes(data[start : start + 4], "big")
    chunk, rest = data[start:end], data[:start] + data[end:]
    iend = rest.index(b"IEND") - 4
    late = rest[:iend] + chunk + rest[iend:]
    with Image.open(io.BytesIO(late)) as img:
        assert "exif" not in img.info and kept_ext(img, late) is None
    assert open_image(late).size == (60, 40)


@pytest.mark.parametrize(
    "mode", ["1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F"]
)
def test_every_opaque_mode_becomes_rgb(mode: str) -> None:
    img = Image.new(mode, (5, 3))
    for target in ("RGB", "L"):
        out = normalize(img, target)
        assert out.mode == target and out.size == (5, 3)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "RGBa", "La"])
def test_every_alpha_mode_is_composited_on_white(mode: str) -> None:
    clear = Image.new(mode, (5, 3))  # all zero: black, fully transparent
    assert (np.asarray(normalize(clear)) == 255).all() and normalize(clear).mode == "RGB"


def test_normalize_rejects_unknown_modes_and_keeps_rgb_as_is() -> None:
    img = Image.new("RGB", (4, 4))
    assert normalize(img) is img  # no copy on the hot path (training decodes every sample)
    with pytest.raises(ValueError, match="choose one of"):
        normalize(img, "RGBA")


# ------------------------------------------------------------------ one image through every stage
@pytest.fixture(scope="module")
def written(files: dict, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The problem files ingested into a catalog and written as dataset version ``norm:v1``; the
    source folder is also an ImageFolder tree (one class) for the evaluation loader."""
    root = tmp_path_factory.mktemp("one-image")
    (root / "src" / "all").mkdir(parents=True)
    for name, (data, _, _) in files.items():
        (root / "src" / "all" / name).write_bytes(data)
    catalog = Catalog(root / "catalog")
    ingest(catalog, str(root / "src"), CurateConfig(), "run", client_or_address="sync")
    record = create_dataset_version(catalog, "norm")
    return root, catalog, record


def _name(uri: str) -> str:
    return uri.rsplit("/", 1)[1]


def test_ingest_measures_the_upright_image(files: dict, written) -> None:  # type: ignore[no-untyped-def]
    _, catalog, _ = written
    rows = {_name(r["uri"]): r for r in read_images(catalog).to_pylist()}
    assert sorted(rows) == sorted(files) and {r["status"] for r in rows.values()} == {"accepted"}
    for name, (_, want, _) in files.items():
        assert (rows[name]["width"], rows[name]["height"]) == (want.shape[1], want.shape[0]), name
        luma = np.asarray(Image.fromarray(want).convert("L"), float).mean()
        assert abs(rows[name]["mean_luma"] - luma) < 2, name  # measured on white, not on hidden colours


def test_plain_webdataset_decode_gives_the_upright_rgb_image(files: dict, written) -> None:  # type: ignore[no-untyped-def]
    """What timm / open_clip / any ``WebDataset(url).decode("pil")`` user gets: RGB, the json's size,
    upright, transparency on white; byte copies only where that already holds."""
    _, _, record = written
    ds = wds.WebDataset(shard_urls(record), shardshuffle=False, empty_check=False).decode("pil")
    seen = set()
    for sample in ds:
        meta = sample["json"]
        name = _name(meta["uri"])
        _, want, lossy = files[name]
        ext = "jpg" if name.endswith(".jpg") else "png"
        assert [k for k in ("jpg", "png") if k in sample] == [ext], name
        img = sample[ext]
        assert img.mode == "RGB" and img.size == (meta["width"], meta["height"]), name
        assert_same_image(img, want, lossy, name)
        assert meta["reencoded"] is (name != "gray.jpg"), name  # only the plain grayscale JPEG is copied
        seen.add(name)
    assert seen == set(files)


def test_training_and_evaluation_loaders_see_the_same_image(files: dict, written) -> None:  # type: ignore[no-untyped-def]
    root, catalog, _ = written
    shards, _ = open_dataset(str(catalog.root), "norm:v1")
    n = len(files)
    batches = StepBatches(
        shards, seed=0, phase="main", rank=0, world_size=1, num_workers=0, batch_size=n,
        iterations_per_epoch=100, start_step=0, end_step=4, transform=np.array,
        collate=lambda xs: {"images": xs}, shuffle_buffer=n,
    )  # fmt: skip
    by_key: dict[str, np.ndarray] = {}
    for batch in make_loader(batches, 0):
        by_key.update(zip(batch["keys"], batch["images"], strict=True))
    assert len(by_key) == n  # every sample reached the trainer
    for name, (data, want, lossy) in files.items():
        got = by_key[hashlib.sha256(data).hexdigest()]
        assert got.shape == want.shape  # same size as ingest measured and the json says
        assert_same_image(got, want, lossy, f"training {name}")
    loader = image_folder_loader(str(root / "src"), resize=64, crop=64, batch_size=n)
    (images, _labels), names = next(iter(loader)), sorted(files)  # ImageFolder sorts file names
    transform = eval_transform(64, 64)
    for name, tensor in zip(names, images, strict=True):
        _, want, lossy = files[name]
        err = float((tensor - transform(Image.fromarray(want))).abs().mean())
        assert err < (0.05 if lossy else 1e-6), f"evaluation {name}: mean abs error {err:.3f}"
