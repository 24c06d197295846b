"""DINOv2 multi-crop augmentation (Caron et al. 2021, section 3; Oquab et al. 2023, appendix).

Per image: 2 global crops (``RandomResizedCrop`` scale 0.32-1, 224 px) and ``local_crops_number``
local crops (scale 0.05-0.32, 98 px), each flipped (p 0.5), colour-jittered (p 0.8; brightness 0.4,
contrast 0.4, saturation 0.2, hue 0.1, in a random order per crop), grayscaled (p 0.2), blurred
(Gaussian, kernel 9, sigma 0.1-2) with probability 1.0 for the first global crop, 0.1 for the second
and 0.5 for locals, the second global crop solarised (p 0.2, threshold 128/255), then normalised.

Blur probabilities: these are the paper's values (BYOL's asymmetric recipe) and are applied as
given. The reference code passes them to a ``RandomApply`` with ``1 - p``, so it never blurs the
first global crop and blurs the second 90% of the time; pass ``blur_p=(0.0, 0.9, 0.5)`` for that.

How it runs: crops are cut and resized on uint8 (torchvision v2 ``resized_crop``, bicubic with
antialiasing, the native uint8 kernel), then the crops of one size are stacked and the photometric
chain (:class:`BatchedPhotometric`) runs on the stack with per-crop random parameters, in float32
without re-quantising between operations: crop by crop on CPU for crops of 72 px and more, one
batched op over the selected crops otherwise. The same module applies to a whole [B, 3, H, W]
batch on a GPU (build ``MultiCropAugmentation(..., photometric_on_device=True)``: it then returns
uint8 flipped crops, and the trainer calls its ``photometric_batch`` on the collated batch). The
GPU path is optional and not wired into the trainer: on CPU workers the per-image chain suffices.

Randomness: every draw comes from ``generator`` (a CPU ``torch.Generator``) when one is passed,
else from torch's global RNG, so ``torch.manual_seed(s)`` before a call fixes its output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from data_catalog.image import normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision
_SOLARIZE_THRESHOLD = 128 / 255  # PIL's solarize(threshold=128) on 8-bit values


def _rand(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * _rand(n, generator)


def to_uint8_chw(img: Image.Image | Tensor) -> Tensor:
    """PIL image (any mode: normalised as ``data_catalog.image.normalize`` does, so transparency is
    white as in every stage; orientation is the opener's job) or uint8 tensor [C, H, W] (C 1 or 3)
    -> uint8 [3, H, W]."""
    if isinstance(img, Image.Image):
        arr = np.array(normalize(img))  # a writable copy, [H, W, 3]
        return torch.from_numpy(arr).permute(2, 0, 1)  # channels-last strides: fast uint8 resize
    if not torch.is_tensor(img) or img.dtype != torch.uint8 or img.dim() != 3 or img.shape[0] not in (1, 3):
        desc = f"{img.dtype} tensor {tuple(img.shape)}" if torch.is_tensor(img) else type(img).__name__
        raise ValueError(f"expected a PIL image or a uint8 tensor [3 or 1, H, W], got {desc}")
    return img.expand(3, -1, -1) if img.shape[0] == 1 else img


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop with area fraction in ``scale`` and aspect in ``ratio``.

    torchvision's ``RandomResizedCrop.get_params`` algorithm: 10 tries, then the largest central
    crop within the ratio bounds.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    draws = torch.rand(10, 4, generator=generator).tolist()
    for u_area, u_ratio, u_top, u_left in draws:
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _gray(x: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    return (_GRAY[0] * x[:, 0:1] + _GRAY[1] * x[:, 1:2] + _GRAY[2] * x[:, 2:3]).clamp_(0, 1)


def _col(f: Tensor) -> Tensor:
    return f.view(-1, 1, 1, 1)


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * _col(f)).clamp_(0, 1)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    """Blend with each image's mean luma (torchvision's definition)."""
    mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    return (_col(f) * x + (1 - _col(f)) * mean).clamp_(0, 1)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    return (_col(f) * x + (1 - _col(f)) * _gray(x)).clamp_(0, 1)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue by ``shift`` (fraction of a turn) per image; value and saturation kept.

    Hue in sextants H6 in [0, 6) from RGB as torchvision/PIL; back to RGB with the closed form
    c = min + C * s(H6), C = max - min (unchanged by a hue rotation), s_R = clamp(|H6 - 3| - 1),
    s_G = clamp(2 - |H6 - 2|), s_B = clamp(2 - |H6 - 4|) on [0, 1]: no per-sextant branches.
    """
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    chroma = maxc - minc
    inv = 1.0 / chroma.clamp_min(1e-12)  # gray pixels: numerators are 0, hue 0, output = value
    h = torch.where(
        maxc == r, (g - b) * inv, torch.where(maxc == g, 2.0 + (b - r) * inv, 4.0 + (r - g) * inv)
    )
    h6 = torch.remainder(h + 6.0 * shift.view(-1, 1, 1), 6.0)
    s_r = ((h6 - 3.0).abs_() - 1.0).clamp_(0, 1)
    s_g = (2.0 - (h6 - 2.0).abs_()).clamp_(0, 1)
    s_b = (2.0 - (h6 - 4.0).abs_()).clamp_(0, 1)
    return torch.stack([torch.addcmul(minc, chroma, s) for s in (s_r, s_g, s_b)], dim=1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int = 9) -> Tensor:
    """Separable Gaussian blur, one sigma per image, reflect padding (torchvision's GaussianBlur).

    ``x`` [B, C, H, W] float, ``sigma`` [B]. Written as ``kernel_size`` shifted multiply-adds per
    direction: on one CPU thread this beats oneDNN's depthwise convolution with 1 x 9 kernels by
    2-4x and has no per-shape setup cost.
    """
    b, _, hgt, wid = x.shape
    half = (kernel_size - 1) / 2
    grid = torch.linspace(-half, half, kernel_size, device=x.device)
    k = torch.exp(-0.5 * (grid[None] / sigma.to(x.device).view(-1, 1)) ** 2)
    taps = (k / k.sum(dim=1, keepdim=True)).T.reshape(kernel_size, b, 1, 1, 1)
    pad = kernel_size // 2
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if b == 1 and x.device.type == "cpu":  # one image: scalar taps, fused multiply-adds, no temporaries
        w = taps.flatten().tolist()
        rows = xp[..., 0:wid] * w[0]
        for j in range(1, kernel_size):
            rows.add_(xp[..., j : j + wid], alpha=w[j])
        out = rows[..., 0:hgt, :] * w[0]
        for j in range(1, kernel_size):
            out.add_(rows[..., j : j + hgt, :], alpha=w[j])
        return out
    rows = xp[..., 0:wid] * taps[0]  # horizontal pass, on the padded rows too
    for j in range(1, kernel_size):
        rows.add_(xp[..., j : j + wid] * taps[j])
    out = rows[..., 0:hgt, :] * taps[0]
    for j in range(1, kernel_size):
        out.add_(rows[..., j : j + hgt, :] * taps[j])
    return out


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


class BatchedPhotometric(nn.Module):
    """Jitter, grayscale, blur, solarise and normalise a batch [B, 3, H, W] with per-image draws.

    ``forward(x, blur_p, solarize_p, generator)``: ``x`` uint8 [0, 255] or float [0, 1] on any
    device; ``blur_p`` and ``solarize_p`` a float or a [B] tensor of per-image probabilities.
    Returns float32 normalised by ``mean``/``std``. Random parameters are drawn on the CPU (from
    ``generator`` or the global RNG) in a fixed order, so the output does not depend on the device.
    """

    mean: Tensor
    inv_std: Tensor

    def __init__(
        self,
        color_jitter_p: float = 0.8,
        color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        grayscale_p: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel_size: int = 9,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        b, c, s, h = color_jitter
        if min(b, c, s) < 0 or not 0 <= h <= 0.5:
            raise ValueError(
                f"color_jitter needs brightness/contrast/saturation >= 0, hue in [0, 0.5]: {color_jitter}"
            )
        self.color_jitter_p, self.grayscale_p = color_jitter_p, grayscale_p
        self.ranges = ((1 - b, 1 + b), (1 - c, 1 + c), (1 - s, 1 + s), (-h, h))
        self.blur_sigma, self.blur_kernel_size = blur_sigma, blur_kernel_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def draw(
        self, n: int, blur_p: float | Tensor, solarize_p: float | Tensor, generator: torch.Generator | None
    ) -> dict:
        """The random parameters of ``n`` images (CPU tensors), in a fixed draw order."""
        lo = torch.tensor([r[0] for r in self.ranges])
        hi = torch.tensor([r[1] for r in self.ranges])
        return {
            "jitter": _rand(n, generator) < self.color_jitter_p,
            "order": torch.rand(n, 4, generator=generator).argsort(dim=1),  # op at each position
            "factors": lo + (hi - lo) * torch.rand(n, 4, generator=generator),
            "gray": _rand(n, generator) < self.grayscale_p,
            "blur": _rand(n, generator) < torch.as_tensor(blur_p, dtype=torch.float32),
            "sigma": _uniform(n, *self.blur_sigma, generator),
            "solarize": _rand(n, generator) < torch.as_tensor(solarize_p, dtype=torch.float32),
        }

    def _jitter(self, x: Tensor, p: dict) -> Tensor:
        """Each selected image gets the 4 jitter ops in its own random order."""
        apply = p["jitter"].tolist()
        order = p["order"].tolist()
        for pos in range(4):
            for op_id, op in enumerate(_JITTER_OPS):
                sel = [i for i, (a, o) in enumerate(zip(apply, order, strict=True)) if a and o[pos] == op_id]
                if not sel:
                    continue
                f = p["factors"][sel, op_id].to(x.device)
                if len(sel) == x.shape[0]:
                    x = op(x, f)
                else:
                    idx = torch.tensor(sel, device=x.device)
                    x[idx] = op(x[idx], f)
        return x

    @staticmethod
    def _where(x: Tensor, sel: Tensor, fn) -> Tensor:  # noqa: ANN001 - a tensor function
        """``x`` with ``fn`` applied to the images flagged in ``sel`` (whole batch without a copy)."""
        idx = sel.nonzero().flatten()
        if idx.numel() == x.shape[0]:
            return fn(x, idx)
        if idx.numel():
            x[idx.to(x.device)] = fn(x[idx.to(x.device)], idx)
        return x

    def _one_image(self, y: Tensor, p: dict, i: int) -> Tensor:
        """The whole chain on image ``i`` ([1, 3, H, W] view): the CPU path, no gathers or scatters."""
        if p["jitter"][i]:
            for op_id in p["order"][i].tolist():
                y = _JITTER_OPS[op_id](y, p["factors"][i : i + 1, op_id])
        if p["gray"][i]:
            y = _gray(y).expand(-1, 3, -1, -1)
        if p["blur"][i]:
            y = gaussian_blur(y, p["sigma"][i : i + 1], self.blur_kernel_size)
        if p["solarize"][i]:
            y = torch.where(y >= _SOLARIZE_THRESHOLD, 1.0 - y, y)
        return y

    def _batched(self, x: Tensor, p: dict) -> Tensor:
        """The chain on the whole batch, op by op on the selected images: the accelerator path."""
        x = self._jitter(x, p)
        x = self._where(x, p["gray"], lambda t, i: _gray(t).repeat(1, 3, 1, 1))
        x = self._where(x, p["blur"], lambda t, i: gaussian_blur(t, p["sigma"][i], self.blur_kernel_size))
        return self._where(x, p["solarize"], lambda t, i: torch.where(t >= _SOLARIZE_THRESHOLD, 1.0 - t, t))

    def forward(
        self,
        x: Tensor,
        blur_p: float | Tensor = 0.5,
        solarize_p: float | Tensor = 0.0,
        generator: torch.Generator | None = None,
        per_image: bool | None = None,
    ) -> Tensor:
        """``per_image``: loop over images (default on CPU for crops of 72 x 72 px and more) or batch
        each op over the selected images (default otherwise); the same draws give the same result."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a batch [B, 3, H, W], got {tuple(x.shape)}")
        p = self.draw(x.shape[0], blur_p, solarize_p, generator)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float().clone()
        if per_image is None:  # measured on one CPU thread: the loop wins from about 72 x 72 px
            per_image = x.device.type == "cpu" and x.shape[-2] * x.shape[-1] >= 5000
        if per_image:
            for i in range(x.shape[0]):
                y = self._one_image(x[i : i + 1], p, i)
                if y.data_ptr() != x[i].data_ptr():
                    x[i : i + 1] = y
        else:
            x = self._batched(x, p)
        return (x - self.mean) * self.inv_std


class MultiCropAugmentation:
    """``__call__(img, generator=None) -> {"global_crops": [Tensor[3, G, G]] * 2, "local_crops": [...]}``.

    ``img``: a PIL image (any mode) or a uint8 tensor [3 or 1, H, W]. ``blur_p``: probabilities
    (first global, second global, each local), the paper's (1.0, 0.1, 0.5) by default (see the
    module docstring for the reference's inverted ones); ``solarize_p`` applies to the second
    global crop only. Outputs are float32, normalised by ``mean``/``std``; with
    ``photometric_on_device=True`` they are the flipped uint8 crops, and the trainer runs
    :meth:`photometric_batch` on the collated batch once it is on the device.
    """

    n_global = 2

    def __init__(
        self,
        global_crops_scale: tuple[float, float] = (0.32, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.32),
        local_crops_number: int = 8,
        global_crops_size: int = 224,
        local_crops_size: int = 98,
        flip_p: float = 0.5,
        color_jitter_p: float = 0.8,
        color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        grayscale_p: float = 0.2,
        blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
        solarize_p: float = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        photometric_on_device: bool = False,
    ) -> None:
        for name, (lo, hi) in (
            ("global_crops_scale", global_crops_scale),
            ("local_crops_scale", local_crops_scale),
        ):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        if local_crops_number < 0 or global_crops_size < 1 or local_crops_size < 1:
            raise ValueError(
                f"bad crop setup: {local_crops_number} locals, sizes {global_crops_size}/{local_crops_size}"
            )
        self.global_crops_scale = (float(global_crops_scale[0]), float(global_crops_scale[1]))
        self.local_crops_scale = (float(local_crops_scale[0]), float(local_crops_scale[1]))
        self.local_crops_number = local_crops_number
        self.global_crops_size, self.local_crops_size = global_crops_size, local_crops_size
        self.flip_p, self.photometric_on_device = flip_p, photometric_on_device
        self.global_photometric_p = {
            "blur_p": torch.tensor(blur_p[:2]),
            "solarize_p": torch.tensor([0.0, solarize_p]),
        }
        self.local_photometric_p = {"blur_p": blur_p[2], "solarize_p": 0.0}
        self.photometric = BatchedPhotometric(color_jitter_p, color_jitter, grayscale_p, mean=mean, std=std)

    def _crops(
        self, x: Tensor, n: int, scale: tuple[float, float], size: int, generator: torch.Generator | None
    ) -> Tensor:
        """``n`` random resized, randomly flipped uint8 crops [n, 3, size, size] of ``x`` [3, H, W]."""
        out = torch.empty(n, 3, size, size, dtype=torch.uint8)
        flips = (_rand(n, generator) < self.flip_p).tolist()
        for i in range(n):
            top, left, h, w = random_resized_crop_params(x.shape[-2], x.shape[-1], scale, generator=generator)
            crop = TF.resized_crop(
                x, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True
            )
            out[i] = crop.flip(-1) if flips[i] else crop
        return out

    def __call__(
        self, img: Image.Image | Tensor, generator: torch.Generator | None = None
    ) -> dict[str, list[Tensor]]:
        x = to_uint8_chw(img)
        g = self._crops(x, self.n_global, self.global_crops_scale, self.global_crops_size, generator)
        loc = self._crops(
            x, self.local_crops_number, self.local_crops_scale, self.local_crops_size, generator
        )
        if not self.photometric_on_device:
            g = self.photometric(g, generator=generator, **self.global_photometric_p)
            if self.local_crops_number:
                loc = self.photometric(loc, generator=generator, **self.local_photometric_p)
        return {"global_crops": list(g.unbind(0)), "local_crops": list(loc.unbind(0))}

    def photometric_batch(
        self, global_crops: Tensor, local_crops: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """The deferred photometric chain on collated uint8 crops (any device), crop-major as
        :func:`pretrain.collate.collate_data_and_cast` stacks them: ``global_crops`` [2 * B, 3, G, G]
        (every image's first crop, then every second), ``local_crops`` [L * B, 3, l, l]."""
        b = global_crops.shape[0] // self.n_global
        per_crop = {k: v.repeat_interleave(b) for k, v in self.global_photometric_p.items()}
        g = self.photometric(global_crops, generator=generator, **per_crop)
        if local_crops.numel() == 0:
            return g, local_crops.float()
        return g, self.photometric(local_crops, generator=generator, **self.local_photometric_p)
