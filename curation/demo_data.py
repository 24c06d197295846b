"""Build the demo's raw image pool: real photos plus generated copies, edits and broken files.

The demo must give every stage work offline. It starts from real photos
(``../shared/data/raw-photos`` when present, otherwise the photos shipped inside the scikit-image
and scikit-learn wheels) and adds, with a fixed seed:

- exact copies (same bytes, another name, nested folder)  -> ``duplicate/exact_duplicate``
- edited near-duplicates (downscale, JPEG re-encode, slight brightness change)
                                                           -> ``duplicate/near_duplicate_phash``
- broken files: zero bytes, truncated JPEG, text named ``.jpg``, a tiny image, a blank image
                                                           -> ``rejected/<reason>``
- with an evaluation set (``eval_source``: an ImageFolder directory or a tar of one), re-encoded
  copies of a few of its images, as a crawl picks up benchmark images -> ``rejected/eval_leak``
"""

from __future__ import annotations

import importlib.util
import io
import random
import shutil
import tarfile
from pathlib import Path

from PIL import Image, ImageEnhance

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}

# Real photographs inside dependency wheels (never downloaded): (package, relative path).
_WHEEL_PHOTOS = [
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/chelsea.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/rocket.jpg"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/brick.png"),
    ("skimage", "data/gravel.png"),
    ("skimage", "data/grass.png"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/moon.png"),
    ("skimage", "data/horse.png"),
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
]


def wheel_photos() -> list[Path]:
    """Photos shipped in the scikit-image / scikit-learn wheels that are installed here."""
    found = []
    for package, rel in _WHEEL_PHOTOS:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if path.is_file():
            found.append(path)
    return found


def find_photos(photos_dir: Path | None) -> list[Path]:
    """Real photos for the demo: ``photos_dir`` if it holds images, else the wheel photos."""
    if photos_dir is not None and photos_dir.is_dir():
        files = sorted(p for p in photos_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
    files = wheel_photos()
    if not files:
        raise FileNotFoundError(
            "no demo photos: pass a folder of images, or install scikit-image / scikit-learn "
            "(their wheels ship sample photos)"
        )
    return files


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _near_duplicate(img: Image.Image, kind: str) -> bytes:
    if kind == "downscale":
        w, h = img.size
        return _jpeg(img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS), 90)
    if kind == "recompress":
        return _jpeg(img, 40)
    if kind == "brighter":
        return _jpeg(ImageEnhance.Brightness(img.convert("RGB")).enhance(1.15), 92)
    raise ValueError(f"unknown edit {kind!r}; valid: downscale, recompress, brighter")


def _eval_images(source: Path, n: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """``n`` (name, bytes) drawn from the images of an ImageFolder directory or a tar of one."""
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [(p.name, p.read_bytes()) for p in rng.sample(paths, min(n, len(paths)))]
    with tarfile.open(source) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and Path(m.name).suffix.lower() in IMAGE_SUFFIXES),
            key=lambda m: m.name,
        )
        out = []
        for m in rng.sample(members, min(n, len(members))):
            f = tar.extractfile(m)
            assert f is not None  # a regular file
            out.append((Path(m.name).name, f.read()))
        return out


def planted_path(pool: Path) -> Path:
    """Where the demo records what it planted in ``pool``: beside it, so it is not ingested."""
    return pool.parent / "planted.json"


def build_demo_pool(
    dest: Path,
    photos_dir: Path | None = None,
    max_photos: int | None = None,
    n_exact: int = 10,
    n_near: int = 15,
    seed: int = 0,
    eval_source: Path | None = None,
    n_leaks: int = 6,
) -> dict[str, int]:
    """Write the demo pool under ``dest`` (recreated) and return what was planted, by kind
    (``eval_leaks`` only with ``eval_source``).

    Planted counts let the demo (and its test) compare the catalog's counts with the truth.
    """
    rng = random.Random(seed)
    photos = find_photos(photos_dir)
    if max_photos is not None:
        photos = photos[:max_photos]
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "photos").mkdir(parents=True)
    for src in photos:
        shutil.copyfile(src, dest / "photos" / src.name)

    planted = {"photos": len(photos), "exact_copies": 0, "near_duplicates": 0, "broken": 0}
    exact_dir = dest / "incoming" / "copies"
    exact_dir.mkdir(parents=True)
    for i, src in enumerate(rng.sample(photos, min(n_exact, len(photos)))):
        shutil.copyfile(src, exact_dir / f"copy_{i:03d}{src.suffix.upper()}")
        planted["exact_copies"] += 1

    near_dir = dest / "incoming" / "edited"
    near_dir.mkdir(parents=True)
    edits = ["downscale", "recompress", "brighter"]
    for i, src in enumerate(rng.sample(photos, min(n_near, len(photos)))):
        with Image.open(src) as img:
            img.load()
            (near_dir / f"edit_{i:03d}.jpg").write_bytes(_near_duplicate(img, edits[i % len(edits)]))
        planted["near_duplicates"] += 1

    broken = dest / "incoming" / "broken"
    broken.mkdir(parents=True)
    with Image.open(photos[0]) as img:
        good = _jpeg(img, 90)
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (broken / "notes.jpg").write_text("this is a text file with an image extension\n")
    (broken / "README.txt").write_text("not an image at all\n")
    Image.new("RGB", (20, 20), (200, 30, 30)).save(broken / "tiny.png")
    Image.new("RGB", (640, 480), (255, 255, 255)).save(broken / "blank.png")
    Image.new("RGB", (2000, 100), (30, 120, 200)).save(broken / "banner.jpg")
    planted["broken"] = 7

    if eval_source is not None:
        scraped = dest / "incoming" / "scraped"
        scraped.mkdir(parents=True)
        planted["eval_leaks"] = 0
        for i, (name, data) in enumerate(_eval_images(eval_source, n_leaks, random.Random(seed + 1))):
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                (scraped / f"leak_{i:03d}_{Path(name).stem}.jpg").write_bytes(_jpeg(img.convert("RGB"), 75))
            planted["eval_leaks"] += 1
    return planted
