"""The demo pool: real photos plus planted copies, edits and broken files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from curation.demo_data import build_demo_pool, wheel_photos


def test_pool_from_wheel_photos(tmp_path: Path) -> None:
    assert len(wheel_photos()) >= 10, "scikit-image / scikit-learn sample photos are missing"
    planted = build_demo_pool(tmp_path / "pool", photos_dir=tmp_path / "absent", n_exact=3, n_near=4)
    files = [p for p in (tmp_path / "pool").rglob("*") if p.is_file()]
    assert (
        len(files)
        == planted["photos"] + planted["exact_copies"] + planted["near_duplicates"] + planted["broken"]
    )
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "pool" / "photos").iterdir()}
    copies = list((tmp_path / "pool" / "incoming" / "copies").iterdir())
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() in digests for p in copies)
    assert (tmp_path / "pool" / "incoming" / "broken" / "empty.jpg").stat().st_size == 0


def test_pool_is_deterministic(tmp_path: Path, raw_photos: Path) -> None:
    a = build_demo_pool(tmp_path / "a", raw_photos, max_photos=40, n_exact=5, n_near=5, seed=1)
    b = build_demo_pool(tmp_path / "b", raw_photos, max_photos=40, n_exact=5, n_near=5, seed=1)
    assert a == b
    names_a = sorted(
        p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    names_b = sorted(
        p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    assert names_a == names_b


def test_copies_of_the_evaluation_images_are_planted_from_a_folder_or_its_tar(
    tmp_path: Path, raw_photos: Path
) -> None:
    import tarfile

    from PIL import Image

    from tests.test_eval_data import make_image_folder

    folder = make_image_folder(tmp_path / "bench", 3, 4)
    with tarfile.open(tmp_path / "bench.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="bench")
    pools = []
    for name, source in (("dir", folder), ("tar", tmp_path / "bench.tar.gz")):
        planted = build_demo_pool(
            tmp_path / name, raw_photos, max_photos=10, n_exact=2, n_near=2, eval_source=source, n_leaks=5
        )
        assert planted["eval_leaks"] == 5
        leaks = sorted((tmp_path / name / "incoming" / "scraped").iterdir())
        assert len(leaks) == 5
        originals = {p.stem for p in folder.rglob("*.jpg")} | {p.stem for p in folder.rglob("*.png")}
        for leak in leaks:  # a re-encoded copy of a named benchmark image, same size
            stem = leak.stem.split("_", 2)[2]
            assert stem in originals
            with Image.open(leak) as img:
                assert img.size == (40, 40) and img.format == "JPEG"  # make_image_folder's size
        pools.append([p.name for p in leaks])
    assert pools[0] == pools[1]  # the same draw from the folder and from its tar
    assert "eval_leaks" not in build_demo_pool(tmp_path / "none", raw_photos, max_photos=10)
