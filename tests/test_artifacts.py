"""Markdown artifacts stay pages the UI opens fast: their inline PNGs are fitted to a byte budget
(the Prefect server also refuses the event of an artifact over 1.5 MB), photos and plots still
readable, the files on disk untouched."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image, ImageDraw

from flows.artifacts import MAX_PAGE_BYTES, MIN_IMAGE_SIDE, fit_page, png_markdown, shrink_png


def photo_png(w: int, h: int, seed: int) -> bytes:
    """A noisy photo-like PNG (smooth gradient plus noise: compresses badly, like a photo grid)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def plot_png(w: int, h: int) -> bytes:
    """A plot-like PNG: white ground, a few coloured bars and lines, antialiased text."""
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    for i in range(40):
        draw.rectangle([20 + i * (w - 40) // 40, h - 20 - (i * 37 % (h - 60)), 20 + (i + 1) * (w - 40) // 40 - 2, h - 20],
                       fill=(31, 119, 180) if i % 2 else (255, 127, 14))  # fmt: skip
        draw.text((25 + i * (w - 40) // 40, 10), str(i), fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def inline_images(markdown: str) -> list[Image.Image]:
    out = []
    for b64 in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown):
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        img.load()
        out.append(img)
    return out


def test_a_page_of_large_photos_is_fitted_to_the_budget_and_keeps_its_text() -> None:
    pngs = [photo_png(1050, 750, seed) for seed in range(4)]
    assert sum(len(p) for p in pngs) > 3 * MAX_PAGE_BYTES  # ~7 MB
    page = "# Report\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n" + "".join(
        png_markdown(p, f"grid {i}") for i, p in enumerate(pngs)
    )
    fitted = fit_page(page)
    assert len(fitted) <= MAX_PAGE_BYTES
    assert re.sub(r"base64,[^)]+", "", fitted) == re.sub(r"base64,[^)]+", "", page)  # only the images changed
    for img in inline_images(fitted):
        assert img.format == "PNG" and max(img.size) >= MIN_IMAGE_SIDE
        assert abs(img.width / img.height - 1.4) < 0.02  # the aspect ratio is kept


def test_a_page_under_the_budget_is_published_as_it_is() -> None:
    page = "# Small\n\n" + png_markdown(plot_png(480, 280), "sizes")
    assert len(page) < MAX_PAGE_BYTES
    assert fit_page(page) is page


def test_small_images_keep_their_bytes_while_the_large_ones_share_the_rest() -> None:
    small, large = plot_png(480, 280), photo_png(1000, 750, 0)
    page = png_markdown(small, "small") + png_markdown(large, "large") + png_markdown(large, "again")
    fitted = fit_page(page, budget=600_000)
    assert len(fitted) <= 600_000
    assert base64.b64encode(small).decode() in fitted
    kept, shrunk, _ = inline_images(fitted)
    assert kept.size == (480, 280) and shrunk.size[0] < 1000


def test_a_plot_that_fits_after_colour_reduction_keeps_its_size() -> None:
    """Plots have few colours: 256 adaptive colours at full resolution before any downscaling."""
    data = plot_png(2400, 1400)
    out = shrink_png(data, budget=len(data) - 1)
    img = Image.open(io.BytesIO(out))
    assert len(out) < len(data) and img.size == (2400, 1400)
    assert shrink_png(data, budget=len(data)) is data
    assert shrink_png(b"not a png", budget=1) == b"not a png"
