"""The curation stages' pictures, as PNG bytes (Prefect artifacts embed them as data URIs).

- :func:`cluster_sizes`: images per cluster before and after rebalancing, largest first, log scale.
- :func:`cluster_grid`: a row of sample images from each of a few clusters.
- :func:`pair_grid`: pairs of images side by side with a caption (duplicate pairs, eval leaks), for a
  human to check what was removed.

Grids are composed with PIL from small thumbnails (64 px by default) and saved as 256-colour PNGs,
so a 6 x 6 grid stays around 100 KB; images are read by uri (``data_catalog.uris``) and opened by
the one image opener (``data_catalog.image.open_image``). An unreadable image becomes a grey tile
marked "unreadable", never an error.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from data_catalog.image import open_image
from data_catalog.uris import UriReader

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
LINE = 12  # pixel height of one caption line (PIL's default bitmap font is ~11 px)


def _png(img: Image.Image, colours: int = 256) -> bytes:
    """PNG bytes of ``img``, quantised to ``colours`` (median cut) to keep data URIs small."""
    out = io.BytesIO()
    img.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return out.getvalue()


def cluster_sizes(
    before: np.ndarray, after: np.ndarray | None = None, title: str = "images per cluster", dpi: int = 80
) -> bytes:
    """A PNG (480 x 280 px at the default ``dpi``) of cluster sizes ``before`` [K] and ``after`` [K]
    rebalancing, each sorted largest first, on a log y axis (empty clusters are not drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.5), dpi=dpi)
    try:
        for sizes, label in ((before, "pool"), (after, "selected")):
            if sizes is None:
                continue
            s = np.sort(np.asarray(sizes, np.float64))[::-1]
            s = s[s > 0]
            ax.plot(
                np.arange(1, len(s) + 1), s, label=f"{label} ({int(s.sum()):,} images, {len(s):,} clusters)"
            )
        ax.set_yscale("log")
        ax.set_xlabel("cluster rank (largest first)")
        ax.set_ylabel("images")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=dpi)
        return out.getvalue()
    finally:
        plt.close(fig)


def _placeholder(size: int, text: str = "unreadable") -> Image.Image:
    tile = Image.new("RGB", (size, size), (200, 200, 200))
    ImageDraw.Draw(tile).text((3, size // 2 - 6), text, fill=(90, 0, 0))
    return tile


def load_thumbnails(
    uris: Iterable[str], size: int, storage_options: dict[str, Any] | None = None
) -> dict[str, Image.Image]:
    """Each uri's image fitted into ``size`` x ``size`` (aspect kept), through the one image opener;
    unreadable uris map to a grey placeholder."""
    wanted = list(dict.fromkeys(uris))
    out: dict[str, Image.Image] = {}
    with UriReader(wanted, storage_options=storage_options) as reader:
        for uri, data in reader.read_many(wanted):
            try:
                if isinstance(data, BaseException):
                    raise data
                img = open_image(data, draft=(size, size))
                img.thumbnail((size, size))
                out[uri] = img
            except Exception:  # noqa: BLE001 - a picture for a human: mark the tile, go on
                out[uri] = _placeholder(size)
    return out


def _paste_centred(canvas: Image.Image, img: Image.Image, x: int, y: int, size: int) -> None:
    canvas.paste(img, (x + (size - img.width) // 2, y + (size - img.height) // 2))


def _options(catalog: Any) -> dict[str, Any] | None:
    return getattr(catalog, "storage_options", None) or None


def cluster_grid(
    catalog: Any,
    groups: Mapping[Any, Sequence[str]],
    per_cluster: int = 6,
    thumb: int = 64,
    label_width: int = 130,
) -> bytes:
    """A PNG with one row per group: its label, then up to ``per_cluster`` thumbnails.

    ``groups``: label (a string, or a cluster id shown as "cluster N") -> image uris. ``catalog``
    (a ``Catalog`` or None) gives the storage options of remote uris. Size: ``label_width +
    per_cluster * (thumb + 2)`` x ``len(groups) * (thumb + 2)`` px.
    """
    rows = [(k if isinstance(k, str) else f"cluster {k}", list(v)[:per_cluster]) for k, v in groups.items()]
    if not rows:
        raise ValueError("cluster_grid: no clusters to show")
    pics = load_thumbnails((u for _, us in rows for u in us), thumb, _options(catalog))
    cell = thumb + 2
    canvas = Image.new("RGB", (label_width + per_cluster * cell, len(rows) * cell), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for r, (label, uris) in enumerate(rows):
        draw.text((4, r * cell + thumb // 2 - 6), label[:24], fill=TEXT)
        for c, uri in enumerate(uris):
            _paste_centred(canvas, pics[uri], label_width + c * cell, r * cell, thumb)
    return _png(canvas)


def pair_grid(
    catalog: Any,
    pairs: Sequence[tuple[str, str, str]],
    max_pairs: int = 12,
    columns: int = 3,
    thumb: int = 80,
) -> bytes:
    """A PNG of up to ``max_pairs`` (uri_a, uri_b, caption) pairs: the two images side by side, the
    caption (e.g. "cos 0.93" or "cifar10 test #123") under them, ``columns`` pairs per row.
    Size: ``columns * (2 * thumb + 12)`` x ``rows * (thumb + 2 * LINE + 6)`` px."""
    shown = list(pairs)[:max_pairs]
    if not shown:
        raise ValueError("pair_grid: no pairs to show")
    pics = load_thumbnails((u for a, b, _ in shown for u in (a, b)), thumb, _options(catalog))
    cell_w, cell_h = 2 * thumb + 12, thumb + 2 * LINE + 6
    n_rows = -(-len(shown) // columns)
    canvas = Image.new("RGB", (columns * cell_w, n_rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    chars = max(8, cell_w // 6)
    for i, (a, b, caption) in enumerate(shown):
        x, y = (i % columns) * cell_w + 4, (i // columns) * cell_h + 2
        _paste_centred(canvas, pics[a], x, y, thumb)
        _paste_centred(canvas, pics[b], x + thumb + 4, y, thumb)
        text = str(caption)
        for line, start in enumerate(range(0, min(len(text), 2 * chars), chars)):
            draw.text((x, y + thumb + 2 + line * LINE), text[start : start + chars], fill=TEXT)
    return _png(canvas)


def pick_grid_clusters(
    assign: np.ndarray, uris: Sequence[str], n_clusters: int = 6, per_cluster: int = 6, seed: int = 0
) -> dict[str, list[str]]:
    """Groups for :func:`cluster_grid`: ``n_clusters`` non-empty clusters of ``assign`` [N] spread
    over the size ranking (the largest, the smallest and evenly between), ``per_cluster`` random
    members of each (seeded); labels "cluster C: S images"."""
    sizes = np.bincount(assign)
    ranked = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    chosen = [
        ranked[i]
        for i in np.unique(np.linspace(0, len(ranked) - 1, min(n_clusters, len(ranked))).astype(int))
    ]
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for c in chosen:
        members = np.flatnonzero(assign == c)
        take = rng.choice(members, min(per_cluster, len(members)), replace=False)
        groups[f"cluster {c}: {sizes[c]} images"] = [uris[i] for i in np.sort(take)]
    return groups
