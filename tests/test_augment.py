"""Multi-crop augmentation on real photos, and its batched photometric ops against torchvision's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from pretrain.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchedPhotometric,
    MultiCropAugmentation,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    random_resized_crop_params,
)

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def photos(raw_photos: Path) -> list[Image.Image]:
    """A few real photos: the first ones, the narrowest, and a grayscale one if present."""
    paths = sorted(raw_photos.glob("*"))
    sizes = {p: Image.open(p).size for p in paths}
    picks = paths[:3] + [min(paths, key=lambda p: sizes[p][0])]
    gray = [p for p in paths[:200] if Image.open(p).mode == "L"][:1]
    imgs = []
    for p in picks + gray:
        with Image.open(p) as im:
            im.load()
            imgs.append(im.copy())
    return imgs


def test_crop_sizes_counts_and_value_range(photos: list[Image.Image]) -> None:
    aug = MultiCropAugmentation(local_crops_number=5, global_crops_size=64, local_crops_size=28)
    for img in photos:
        out = aug(img)
        assert [t.shape for t in out["global_crops"]] == [(3, 64, 64)] * 2
        assert [t.shape for t in out["local_crops"]] == [(3, 28, 28)] * 5
        for t in out["global_crops"] + out["local_crops"]:
            assert t.dtype == torch.float32
            pixels = t * STD + MEAN  # undo the normalisation: back in [0, 1]
            assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
            assert pixels.std() > 0  # not a blank crop
    assert min(img.size[0] for img in photos) < 100  # the narrowest photo is upsampled fine


def test_tensor_input_and_reference_defaults(photos: list[Image.Image]) -> None:
    aug = MultiCropAugmentation()  # DINOv2: 2 x 224, 8 x 98
    x = TF.pil_to_tensor(photos[0].convert("RGB"))
    out = aug(x)
    assert out["global_crops"][0].shape == (3, 224, 224) and len(out["local_crops"]) == 8
    assert out["local_crops"][0].shape == (3, 98, 98)
    assert aug(x[:1])["global_crops"][0].shape == (3, 224, 224)  # 1-channel uint8 tensors too
    with pytest.raises(ValueError, match="uint8"):
        aug(x.float())
    with pytest.raises(ValueError, match="global_crops_scale"):
        MultiCropAugmentation(global_crops_scale=(0.5, 0.2))


def test_determinism_under_a_seed(photos: list[Image.Image]) -> None:
    aug = MultiCropAugmentation(local_crops_number=2, global_crops_size=64, local_crops_size=28)
    img = photos[1]

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        out = aug(img)
        return torch.cat([t.flatten() for t in out["global_crops"] + out["local_crops"]])

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = aug(img, generator=g1), aug(img, generator=g2)
    assert all(torch.equal(u, v) for u, v in zip(a["local_crops"], b["local_crops"], strict=True))


def test_random_resized_crop_respects_scale_and_ratio() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_params(375, 500, (0.05, 0.32), generator=g)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        assert 0.04 <= h * w / (375 * 500) <= 0.33 and 0.7 <= w / h <= 1.4
    assert random_resized_crop_params(10, 1000, (0.9, 1.0), generator=g) == (0, 493, 10, 13)  # fallback


@pytest.mark.parametrize(
    ("ours", "theirs", "factors"),
    [
        (adjust_brightness, TF.adjust_brightness, (0.6, 1.4)),
        (adjust_contrast, TF.adjust_contrast, (0.6, 1.3)),
        (adjust_saturation, TF.adjust_saturation, (0.8, 1.2)),
        (adjust_hue, TF.adjust_hue, (-0.1, 0.07)),
    ],
)
def test_jitter_ops_match_torchvision_per_image(ours, theirs, factors) -> None:  # noqa: ANN001
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    x[1, :, :5] = 0.5  # gray pixels: hue undefined
    got = ours(x.clone(), torch.tensor(factors))
    for i, f in enumerate(factors):
        torch.testing.assert_close(got[i], theirs(x[i], f), atol=2e-6, rtol=1e-5)


def test_blur_matches_torchvision() -> None:
    x = torch.rand(3, 3, 30, 17, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.1, 0.9, 2.0])
    got = gaussian_blur(x, sigma, 9)
    for i, s in enumerate(sigma.tolist()):
        torch.testing.assert_close(got[i], TF.gaussian_blur(x[i], [9, 9], [s, s]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gaussian_blur(x, torch.full((3,), 1e-3)), x)  # the "not blurred" kernel


def reference_photometric(x: torch.Tensor, p: dict, i: int) -> torch.Tensor:
    """One image, torchvision's per-image ops, with the parameters the batched module drew."""
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    y = x.float() / 255
    if p["jitter"][i]:
        for op_id in p["order"][i].tolist():
            y = ops[op_id](y, p["factors"][i, op_id].item())
    if p["gray"][i]:
        y = TF.rgb_to_grayscale(y, num_output_channels=3)
    if p["blur"][i]:
        s = p["sigma"][i].item()
        y = TF.gaussian_blur(y, [9, 9], [s, s])
    if p["solarize"][i]:
        y = TF.solarize(y, 128 / 255)
    return TF.normalize(y, list(IMAGENET_MEAN), list(IMAGENET_STD))


@pytest.mark.parametrize("per_image", [True, False])  # the CPU loop and the batched (GPU) path
def test_batched_photometric_equals_per_image_torchvision(per_image: bool) -> None:
    phot = BatchedPhotometric(color_jitter_p=0.8, grayscale_p=0.3)
    x = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    blur_p, sol_p = torch.linspace(0, 1, 24), 0.5
    params = phot.draw(24, blur_p, sol_p, torch.Generator().manual_seed(4))
    got = phot(x, blur_p, sol_p, generator=torch.Generator().manual_seed(4), per_image=per_image)
    assert 0 < params["gray"].sum() < 24 and 0 < params["solarize"].sum() < 24
    for i in range(24):
        torch.testing.assert_close(got[i], reference_photometric(x[i], params, i), atol=2e-5, rtol=1e-4)


def test_blur_and_solarize_probabilities_are_the_papers() -> None:
    """First global crop always blurred, second 10% (the reference inverts these), locals 50%."""
    aug = MultiCropAugmentation()
    g = torch.Generator().manual_seed(0)
    n = 4000
    p = aug.photometric.draw(n, aug.global_photometric_p["blur_p"].repeat(n // 2), 0.0, g)
    first, second = p["blur"][0::2].float().mean(), p["blur"][1::2].float().mean()
    assert first == 1.0 and abs(second - 0.1) < 0.03
    sol = aug.photometric.draw(n, 0.0, aug.global_photometric_p["solarize_p"].repeat(n // 2), g)["solarize"]
    assert sol[0::2].sum() == 0 and abs(sol[1::2].float().mean() - 0.2) < 0.03
    assert (
        abs(aug.photometric.draw(n, aug.local_photometric_p["blur_p"], 0.0, g)["blur"].float().mean() - 0.5)
        < 0.03
    )


def test_photometric_on_device_mode_defers_the_colour_ops(photos: list[Image.Image]) -> None:
    aug = MultiCropAugmentation(
        local_crops_number=2,
        global_crops_size=32,
        local_crops_size=16,
        color_jitter_p=0.0,
        grayscale_p=0.0,
        blur_p=(1.0, 0.0, 0.0),
        solarize_p=0.0,
        photometric_on_device=True,
    )
    samples = [aug(img) for img in photos[:3]]
    assert samples[0]["global_crops"][0].dtype == torch.uint8
    g = torch.stack([s["global_crops"][c] for c in range(2) for s in samples])  # crop-major, as collate
    loc = torch.stack([s["local_crops"][c] for c in range(2) for s in samples])
    out_g, out_l = aug.photometric_batch(g, loc)
    assert out_g.shape == (6, 3, 32, 32) and out_l.shape == (6, 3, 16, 16)
    plain = (g.float() / 255 - MEAN) / STD
    changed = [not torch.allclose(out_g[i], plain[i], atol=1e-5) for i in range(6)]
    assert changed == [True] * 3 + [False] * 3  # only every image's first global crop is blurred
    torch.testing.assert_close(out_l, (loc.float() / 255 - MEAN) / STD)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_photometric_on_gpu_matches_cpu() -> None:
    phot = BatchedPhotometric()
    x = torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = phot(x, 0.5, 0.2, generator=torch.Generator().manual_seed(1))
    gpu = phot.to("cuda")(x.cuda(), 0.5, 0.2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)
