"""Copy-detection edits: strongly edited views of one image for SSCD training (Pizzi et al. 2022).

:class:`CopyEditAugmentation` turns an image into ``views`` edited copies of ``size`` px, the
positives of the InfoNCE objective (``pretrain/losses/sscd.py``). Per view, in this order, each
family with its own probability (``pretrain.config.EditsConfig`` names and documents them):

1. random resized crop (area ``crop_scale``, down to tight crops), horizontal flip, quarter turns,
   a small rotation (corners filled with a solid colour);
2. the view pasted, smaller, onto a generated background image (solid, gradient, noise or shapes);
3. a solid border of a random width on each side (padding), resized back to the square;
4. a caption strip with text, a text line, an emoji-like shape (PIL ``ImageDraw`` with Pillow's own
   default font: nothing is downloaded), each with a random opacity;
5. colour jitter, grayscale and Gaussian blur (``pretrain.augment.BatchedPhotometric``: the same ops
   as the DINOv2 crops), resize down and up, JPEG recompression at a random quality, normalisation.

SSCD (sscd/transforms/settings.py, "advanced") applies its overlays before the crop, on the full
image; here the crop comes first and everything after runs at the view's size, so a 2,400 px photo
costs one resize. The edit functions are pure (explicit parameters, no randomness) so evaluation
code can plant the same edits; :class:`CopyEditAugmentation` only draws their parameters.

Randomness: every draw comes from ``generator`` (a CPU ``torch.Generator``) when one is passed, else
from torch's global RNG, exactly as :class:`pretrain.augment.MultiCropAugmentation`; the training
loader seeds that per sample and step, which makes the views reproducible and a resumed run exact.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from data_catalog.settings import validate
from pretrain.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchedPhotometric,
    random_resized_crop_params,
    to_uint8_chw,
)
from pretrain.config import EditsConfig

RGB = tuple[int, int, int]
TEXT_CHARS = string.ascii_letters + string.digits + "  !?.,:-#@&"
SHAPES = ("ellipse", "rectangle", "triangle", "star", "smiley")
BACKGROUNDS = ("solid", "gradient", "noise", "shapes")


@lru_cache(maxsize=64)
def font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font at ``size_px`` (a bitmap font where FreeType is missing)."""
    return ImageFont.load_default(max(int(size_px), 4))


def to_pil(x: Tensor) -> Image.Image:
    """uint8 [3, H, W] -> RGB PIL image."""
    return Image.fromarray(x.permute(1, 2, 0).contiguous().numpy(), "RGB")


def from_pil(img: Image.Image) -> Tensor:
    """RGB PIL image -> uint8 [3, H, W]."""
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------- pure edits (PIL RGB in, RGB out)


def rotate(img: Image.Image, degrees: float, fill: RGB) -> Image.Image:
    """Rotate counter-clockwise by ``degrees`` about the centre, same size, corners in ``fill``."""
    return img.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=fill)


def add_border(img: Image.Image, widths: tuple[int, int, int, int], colour: RGB) -> Image.Image:
    """Pad with ``colour`` by ``widths`` px (left, top, right, bottom), then resize back to the input size."""
    left, top, right, bottom = widths
    canvas = Image.new("RGB", (img.width + left + right, img.height + top + bottom), colour)
    canvas.paste(img, (left, top))
    return canvas.resize(img.size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def paste_on(img: Image.Image, background: Image.Image, side: int, xy: tuple[int, int]) -> Image.Image:
    """``img`` resized to ``side`` px (square) and pasted onto a copy of ``background`` at ``xy``."""
    out = background.copy()
    out.paste(img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0), xy)
    return out


def _blend(img: Image.Image, layer: Image.Image, opacity: float) -> Image.Image:
    """Composite an RGBA ``layer`` drawn at full alpha onto ``img`` at ``opacity``."""
    alpha = layer.getchannel("A").point(lambda a: int(a * opacity))
    layer.putalpha(alpha)
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def draw_text(
    img: Image.Image, text: str, size_px: int, colour: RGB, opacity: float, xy: tuple[int, int]
) -> Image.Image:
    """``text`` in the default font of ``size_px`` at ``xy`` (its top-left), blended at ``opacity``."""
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(xy, text, font=font(size_px), fill=(*colour, 255))
    return _blend(img, layer, opacity)


def add_caption(
    img: Image.Image, text: str, height: int, bottom: bool, strip: RGB, ink: RGB, append: bool
) -> Image.Image:
    """A solid ``strip`` of ``height`` px with ``text`` in ``ink``: drawn over the top or bottom edge,
    or (``append``) added below/above the image and the whole resized back to the input size."""
    w, h = img.size
    if append:
        canvas = Image.new("RGB", (w, h + height), strip)
        canvas.paste(img, (0, 0 if bottom else height))
        y0 = h if bottom else 0
    else:
        canvas = img.copy()
        y0 = h - height if bottom else 0
        ImageDraw.Draw(canvas).rectangle([0, y0, w, y0 + height], fill=strip)
    size = max(int(height * 0.7), 4)
    ImageDraw.Draw(canvas).text(
        (max(height // 4, 1), y0 + (height - size) // 2), text, font=font(size), fill=ink
    )
    return canvas.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0) if append else canvas


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy - rad * math.sin(a)))
    return pts


def draw_shape(
    img: Image.Image, shape: str, box: tuple[int, int, int, int], colour: RGB, opacity: float
) -> Image.Image:
    """An emoji-like ``shape`` (one of :data:`SHAPES`) filling ``box`` (x0, y0, x1, y1), at ``opacity``."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    x0, y0, x1, y1 = box
    fill, cx, cy, r = (*colour, 255), (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "ellipse":
        d.ellipse(box, fill=fill)
    elif shape == "rectangle":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "star":
        d.polygon(_star(cx, cy, r), fill=fill)
    else:  # a smiley face: disc, two eyes, a mouth
        d.ellipse(box, fill=fill, outline=(0, 0, 0, 255), width=max(int(r / 10), 1))
        e = max(r / 6, 1)
        for ex in (cx - r / 3, cx + r / 3):
            d.ellipse([ex - e, cy - r / 3 - e, ex + e, cy - r / 3 + e], fill=(0, 0, 0, 255))
        d.arc(
            [cx - r / 2, cy - r / 4, cx + r / 2, cy + r / 2],
            20,
            160,
            fill=(0, 0, 0, 255),
            width=max(int(r / 8), 1),
        )
    return _blend(img, layer, opacity)


def resize_down_up(x: Tensor, scale: float) -> Tensor:
    """Float images [B, C, S, S] resized to ``round(scale * S)`` px and back (bilinear, antialiased)."""
    side = x.shape[-1]
    small = max(int(round(scale * side)), 1)
    down = F.interpolate(x, size=(small, small), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(down, size=(side, side), mode="bilinear", antialias=False, align_corners=False)


def jpeg_recompress(x: Tensor, quality: int) -> Tensor:
    """A float image [3, H, W] in [0, 1] through a JPEG encode/decode at ``quality`` (1-100)."""
    q = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return decode_jpeg(encode_jpeg(q, quality=int(quality))).float() / 255.0


# ---------------------------------------------------------------- random parameters


class _Draw:
    """Uniform draws from a generator (or torch's global RNG) in a fixed order."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.g = generator

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand(1, generator=self.g))

    def coin(self, p: float) -> bool:
        return self.u() < p

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi] (inclusive)."""
        return int(torch.randint(lo, hi + 1, (1,), generator=self.g))

    def colour(self) -> RGB:
        """Black or white half of the time (the usual borders), else any colour."""
        if self.coin(0.5):
            return (0, 0, 0) if self.coin(0.5) else (255, 255, 255)
        return (self.randint(0, 255), self.randint(0, 255), self.randint(0, 255))

    def text(self, lo: int = 3, hi: int = 14) -> str:
        idx = torch.randint(0, len(TEXT_CHARS), (self.randint(lo, hi),), generator=self.g).tolist()
        return "".join(TEXT_CHARS[i] for i in idx).strip() or "x"


def background(size: int, d: _Draw) -> Image.Image:
    """A generated ``size`` px background: solid, a two-colour gradient, coarse noise or random shapes."""
    kind = BACKGROUNDS[d.randint(0, len(BACKGROUNDS) - 1)]
    if kind == "noise":
        cells = d.randint(2, 16)
        grid = torch.rand(1, 3, cells, cells, generator=d.g)
        x = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)[0]
        return to_pil((x * 255).round().to(torch.uint8))
    if kind == "gradient":
        a, b = torch.tensor(d.colour(), dtype=torch.float32), torch.tensor(d.colour(), dtype=torch.float32)
        t = torch.linspace(0, 1, size).view(1, 1, size)
        x = a.view(3, 1, 1) * (1 - t) + b.view(3, 1, 1) * t
        x = x.expand(3, size, size) if d.coin(0.5) else x.expand(3, size, size).transpose(1, 2)
        return to_pil(x.round().to(torch.uint8))
    img = Image.new("RGB", (size, size), d.colour())
    if kind == "shapes":
        for _ in range(d.randint(2, 6)):
            img = _random_shape(img, d, (0.2, 0.6), (1.0, 1.0))
    return img


def _random_shape(
    img: Image.Image, d: _Draw, size: tuple[float, float], opacity: tuple[float, float]
) -> Image.Image:
    side = max(int(d.u(*size) * img.width), 2)
    x0, y0 = (
        d.randint(-side // 3, img.width - 2 * side // 3),
        d.randint(-side // 3, img.height - 2 * side // 3),
    )
    shape = SHAPES[d.randint(0, len(SHAPES) - 1)]
    colour = (255, 214, 0) if shape == "smiley" and d.coin(0.7) else d.colour()
    return draw_shape(img, shape, (x0, y0, x0 + side, y0 + side), colour, d.u(*opacity))


# ---------------------------------------------------------------- the augmentation


class CopyEditAugmentation:
    """``__call__(img, generator=None) -> {"views": [Tensor[3, size, size]] * views}`` (float32, normalised).

    ``img``: a PIL image (any mode) or a uint8 tensor [3 or 1, H, W]. Keyword arguments are the
    fields of ``pretrain.config.EditsConfig`` (probabilities ``*_p``, ranges as (min, max), sizes as
    fractions of ``size`` except ``blur_sigma``, in px). :meth:`edit_views` gives the uint8-free
    float views in [0, 1] before normalisation (for evaluation and tests).
    """

    def __init__(
        self,
        size: int = 224,
        views: int = 2,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **edits: Any,
    ) -> None:
        if size < 8 or views < 1:
            raise ValueError(f"bad view setup: {views} views of {size} px (need >= 1 view of >= 8 px)")
        self.size, self.views = size, views
        # the one definition of names, defaults and checks; a mistake is a one-line ConfigError
        self.p = validate(EditsConfig, edits, "copy-detection edits")
        e = self.p
        kernel = min(2 * math.ceil(3 * e.blur_sigma[1]) + 1, size - 1 - (size % 2 == 0))
        self.photometric = BatchedPhotometric(
            e.color_jitter_p, e.color_jitter, e.grayscale_p, e.blur_sigma, max(kernel, 3),
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        )  # fmt: skip
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def _geometry(self, x: Tensor, d: _Draw) -> Image.Image:
        """Crop, flip, quarter turn, small rotation, overlay, border, caption, text, shape: one view."""
        e, s = self.p, self.size
        top, left, h, w = random_resized_crop_params(
            x.shape[-2], x.shape[-1], e.crop_scale, e.crop_ratio, d.g
        )
        crop = TF.resized_crop(
            x, top, left, h, w, [s, s], interpolation=InterpolationMode.BICUBIC, antialias=True
        )
        img = to_pil(crop)
        if d.coin(e.flip_p):
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if d.coin(e.rotate90_p):
            turns = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
            img = img.transpose(turns[d.randint(0, 2)])
        if d.coin(e.rotate_p):
            img = rotate(img, d.u(-e.rotate_degrees, e.rotate_degrees), d.colour())
        if d.coin(e.overlay_p):
            side = max(int(d.u(*e.overlay_scale) * s), 4)
            img = paste_on(img, background(s, d), side, (d.randint(0, s - side), d.randint(0, s - side)))
        if d.coin(e.border_p):
            widths = tuple(int(d.u(*e.border_width) * s) for _ in range(4))
            img = add_border(img, widths, d.colour())  # type: ignore[arg-type]
        if d.coin(e.caption_p):
            height = max(int(d.u(*e.caption_height) * s), 4)
            img = add_caption(img, d.text(), height, d.coin(0.5), d.colour(), d.colour(), d.coin(0.5))
        if d.coin(e.text_p):
            size_px = max(int(d.u(*e.text_size) * s), 4)
            xy = (d.randint(-size_px, s - size_px), d.randint(-size_px // 2, s - size_px))
            img = draw_text(img, d.text(), size_px, d.colour(), d.u(*e.overlay_opacity), xy)
        if d.coin(e.emoji_p):
            img = _random_shape(img, d, e.emoji_size, e.overlay_opacity)
        return img

    def edit_views(self, img: Image.Image | Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The ``views`` edited copies of ``img`` as float32 [views, 3, size, size] in [0, 1]."""
        x, d, e = to_uint8_chw(img), _Draw(generator), self.p
        views = torch.stack([from_pil(self._geometry(x, d)) for _ in range(self.views)])
        out = self.photometric(views, blur_p=e.blur_p, solarize_p=0.0, generator=generator)
        for i in range(self.views):
            if d.coin(e.resize_p):
                out[i : i + 1] = resize_down_up(out[i : i + 1], d.u(*e.resize_scale)).clamp_(0, 1)
            if d.coin(e.jpeg_p):
                out[i] = jpeg_recompress(out[i], d.randint(*e.jpeg_quality))
        return out.clamp_(0, 1)

    def __call__(
        self, img: Image.Image | Tensor, generator: torch.Generator | None = None
    ) -> dict[str, list[Tensor]]:
        views = (self.edit_views(img, generator) - self.mean) / self.std
        return {"views": list(views.unbind(0))}
