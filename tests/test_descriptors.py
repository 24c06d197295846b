"""load_descriptor: TorchScript, trained copy descriptor and backbone files, ids, strict errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pretrain.models import build_backbone
from pretrain.models.descriptors import IMAGENET_MEAN, IMAGENET_STD, load_descriptor, weights_digest
from pretrain.models.io import save_backbone
from pretrain.models.io_files import CheckpointError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace/save are deprecated


class TinySSCD(nn.Module):
    """An SSCD-shaped model: conv trunk, global pooling, projection (not normalised: we normalise)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.proj = nn.Linear(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x).relu().mean(dim=(2, 3)))


class FeatureMap(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2]  # [B, 2, H, W]: not a descriptor


def trace(module: nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    traced = torch.jit.trace(module.eval(), torch.randn(2, 3, 32, 32))
    torch.jit.save(traced, str(path))
    return path


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def one_line_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(CheckpointError) as info:
        load_descriptor(path, **kwargs)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_traced_torchscript_loads_as_an_sscd_descriptor(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TinySSCD(16)
    path = trace(model, tmp_path / "tiny_sscd.torchscript.pt")
    desc = load_descriptor(path)
    assert (desc.kind, desc.dim, desc.input_size) == ("sscd-torchscript", 16, 320)
    assert desc.model_id == f"sscd-torchscript/tiny_sscd@{sha12(path)}"
    x = torch.randn(5, 3, 320, 320)
    out = desc(x)
    assert out.shape == (5, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    with torch.no_grad():
        torch.testing.assert_close(out, F.normalize(model(x), dim=1), rtol=1e-5, atol=1e-5)
    small = load_descriptor(path, input_size=64)
    assert small.input_size == 64 and small.model_id == f"sscd-torchscript/tiny_sscd-s64@{sha12(path)}"
    # other weights, other id
    other = trace(TinySSCD(16), tmp_path / "tiny_sscd2.torchscript.pt")
    assert load_descriptor(other).model_id.split("@")[1] != desc.model_id.split("@")[1]


def test_torchscript_whose_output_is_not_b_by_d_is_refused(tmp_path: Path) -> None:
    msg = one_line_error(trace(FeatureMap(), tmp_path / "fmap.pt"), input_size=32)
    assert "returns a tensor of shape [2, 2, 32, 32] for a [2, 3, 32, 32] batch; expected [2, D]" in msg
    torch.jit.save(torch.jit.script(TupleOut()), str(tmp_path / "tuple.pt"))
    assert "returns a tuple" in one_line_error(tmp_path / "tuple.pt", input_size=32)


class TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


def test_missing_and_unknown_files_are_one_line_errors(tmp_path: Path) -> None:
    assert "no such file or directory" in one_line_error(tmp_path / "absent.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not weights\n")
    msg = one_line_error(text)
    assert "expected a copy descriptor (dinoflow descriptor safetensors or a TorchScript file)" in msg
    assert msg.endswith("found a text file")
    jpeg = tmp_path / "photo.torchscript.pt"
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    assert one_line_error(jpeg).endswith("found a JPEG image")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    msg = one_line_error(tmp_path / "other.safetensors")
    assert "without cls_token or blocks.*" in msg and "copy descriptor" in msg


def test_backbone_class_token_descriptor(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = build_backbone("vit_pico", img_size=32, patch_size=8).eval()
    path = save_backbone(model, tmp_path / "bb.safetensors")
    desc = load_descriptor(path)
    assert (desc.kind, desc.dim, desc.input_size) == ("dinoflow-backbone", 128, 32)
    assert desc.model_id == f"dinoflow-backbone/vit_pico-p8-d128@{sha12(path)}"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(desc(x), F.normalize(model(x), dim=1))
    assert (
        load_descriptor(path, input_size=48).model_id
        == f"dinoflow-backbone/vit_pico-p8-d128-s48@{sha12(path)}"
    )
    with pytest.raises(ValueError, match="input_size 30 must be a positive multiple of the patch size 8"):
        load_descriptor(path, input_size=30)


def test_shipped_bootstrap_folder_loads(tmp_path: Path) -> None:
    folder = REPO / "assets" / "bootstrap-backbone"
    if not folder.is_dir():
        pytest.skip("assets/bootstrap-backbone is not in this checkout")
    desc = load_descriptor(folder)
    file = folder / "backbone.safetensors"
    assert desc.model_id == f"dinoflow-backbone/vit_pico-p8-d128@{sha12(file)}"
    assert (desc.input_size, desc.dim) == (64, 128)
    assert weights_digest(file).startswith(sha12(file))


def test_preprocess_resizes_to_a_square_and_normalises(tmp_path: Path) -> None:
    desc = load_descriptor(trace(TinySSCD(), tmp_path / "t.pt"), input_size=40)
    x = desc.preprocess(Image.new("L", (90, 30), 255))
    assert x.shape == (3, 40, 40)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, 7, 23], expected)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]; got \(3, 40, 40\)"):
        desc(x)
