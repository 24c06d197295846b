"""The curation plots: valid PNGs of the documented pixel size, unreadable images as tiles."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.plots import LINE, cluster_grid, cluster_sizes, pair_grid, pick_grid_clusters

PNG = b"\x89PNG\r\n\x1a\n"


def photos(tmp_path: Path, n: int = 8) -> list[str]:
    rng = np.random.default_rng(0)
    uris = []
    for i in range(n):
        h, w = (120, 90) if i % 2 else (60, 160)
        path = tmp_path / f"img{i}.{'png' if i % 3 == 0 else 'jpg'}"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        uris.append(str(path))
    return uris


def opened(png: bytes) -> Image.Image:
    assert png.startswith(PNG)
    img = Image.open(io.BytesIO(png))
    img.load()
    return img


def test_cluster_sizes_png() -> None:
    rng = np.random.default_rng(0)
    before = rng.zipf(1.5, 300)
    img = opened(cluster_sizes(before, np.minimum(before, 20)))
    assert img.size == (480, 280)
    assert opened(cluster_sizes(np.array([5, 0, 3]))).size == (480, 280)  # empty clusters, no "after"


def test_cluster_grid_size_and_placeholder(tmp_path: Path) -> None:
    uris = photos(tmp_path)
    groups = {"cluster 3: 4 images": uris[:4], 7: uris[4:] + [str(tmp_path / "missing.jpg")]}
    png = cluster_grid(None, groups, per_cluster=5, thumb=48, label_width=100)
    img = opened(png)
    assert img.size == (100 + 5 * 50, 2 * 50)
    assert len(png) < 60_000
    rgb = np.asarray(img.convert("RGB"))
    tile = rgb[50 + 10 : 50 + 40, 100 + 4 * 50 + 10 : 100 + 4 * 50 + 40]  # row 2, 5th: the missing file
    assert (np.median(tile.reshape(-1, 3), axis=0) == 200).all()  # the grey placeholder
    with pytest.raises(ValueError, match="no clusters"):
        cluster_grid(None, {})


def test_pair_grid_size(tmp_path: Path) -> None:
    uris = photos(tmp_path)
    pairs = [
        (uris[i], uris[i + 1], f"cos 0.9{i} a long caption that wraps over two lines") for i in range(0, 8, 2)
    ]
    img = opened(pair_grid(None, pairs, columns=3, thumb=64))
    assert img.size == (3 * (2 * 64 + 12), 2 * (64 + 2 * LINE + 6))
    assert opened(pair_grid(None, pairs, max_pairs=1, columns=3, thumb=64)).size[1] == 64 + 2 * LINE + 6
    with pytest.raises(ValueError, match="no pairs"):
        pair_grid(None, [])


def test_pick_grid_clusters_spans_the_size_ranking() -> None:
    assign = np.repeat(np.arange(10), [50, 1, 30, 2, 9, 0, 7, 3, 4, 5])
    uris = [f"u{i}" for i in range(len(assign))]
    groups = pick_grid_clusters(assign, uris, n_clusters=3, per_cluster=4)
    assert list(groups) == ["cluster 0: 50 images", "cluster 9: 5 images", "cluster 1: 1 images"]
    assert [len(v) for v in groups.values()] == [4, 4, 1]  # the median cluster by size, the smallest
    assert all(int(u[1:]) < 50 for u in groups["cluster 0: 50 images"])
