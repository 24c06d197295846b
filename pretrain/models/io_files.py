"""What a checkpoint path holds, told by its content (a file's name says nothing about it).

A user hands over ``model.bin``, ``out`` (no suffix), ``teacher.pt`` that is really safetensors, or a
folder such as ``assets/bootstrap-backbone/`` (one ``backbone.safetensors`` beside a README).
:func:`locate` resolves any of these to ``(kind, path)``:

- ``"safetensors"``: 8-byte little-endian header length N, then N bytes of a JSON object;
- ``"torch"``: ``torch.save``'s zip archive (``PK\\x03\\x04`` with a ``data.pkl`` member) or its
  legacy pickle (``\\x80`` + protocol 2..5);
- ``"hf"``: a directory with ``config.json`` and ``model.safetensors``, a shard index or
  ``pytorch_model.bin``;
- a directory with exactly one file of the first two kinds resolves to that file (hidden files,
  e.g. our temporary names, are ignored; several candidates are an error that lists them).

Anything else is a :class:`CheckpointError` of one line: what was expected and what was found.
The readers here wrap the libraries' own failures (damaged files) the same way.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

EXPECTED = "a safetensors file, a torch checkpoint (.pth) or a Hugging Face Dinov2 directory"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# a safetensors header is a few KB per hundred tensors; 100 MB bounds a corrupt length field
MAX_HEADER = 100 * 2**20
# first bytes of files users mistake for checkpoints, so the error can name what they gave
MAGIC = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"\x1f\x8b": "a gzip archive",
    b"\x7fELF": "an executable",
}


class CheckpointError(ValueError):
    """A path that is not a backbone checkpoint, or one that does not match its model."""


def not_a_checkpoint(path: str | Path, found: str) -> CheckpointError:
    return CheckpointError(f"{path}: expected {EXPECTED}; found {found}")


def _safetensors_header(head: bytes, f: Any, size: int) -> dict[str, Any] | None:
    n = int.from_bytes(head, "little")
    if not 2 <= n <= min(size - 8, MAX_HEADER):
        return None
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def _describe_other(head: bytes) -> str:
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive that is not a torch checkpoint (no data.pkl inside)"
    if b"\x00" not in head and head.decode("utf-8", "replace").count("\ufffd") <= 3:
        return "a text file"
    return f"unrecognised binary data (first bytes {head[:8].hex(' ')})"


def sniff(path: Path) -> tuple[str | None, str]:
    """``(kind, what)`` of a file from its first bytes: kind ``"safetensors"``, ``"torch"`` or None
    (then ``what`` says what it is instead, e.g. ``"a text file"``). Reads the header only."""
    size = path.stat().st_size
    if size == 0:
        return None, "an empty file"
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) == 8 and _safetensors_header(head, f, size) is not None:
            return "safetensors", "a safetensors file"
        f.seek(0)
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                if any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist()):
                    return "torch", "a torch checkpoint"
        except zipfile.BadZipFile:
            return None, "a damaged zip archive"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "torch", "a torch checkpoint (legacy pickle)"
    return None, _describe_other(head)


def _locate_in_dir(path: Path) -> tuple[str, Path]:
    if (path / "config.json").is_file():
        if any((path / w).is_file() for w in HF_WEIGHTS):
            return "hf", path
        raise not_a_checkpoint(path, f"a directory with config.json but none of {', '.join(HF_WEIGHTS)}")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    kinds = [(p, sniff(p)[0]) for p in files]
    found = [(p, k) for p, k in kinds if k is not None]
    if len(found) == 1:
        return found[0][1] or "", found[0][0]  # (the `or` only narrows the type)
    if found:
        names = ", ".join(p.name for p, _ in found)
        raise CheckpointError(
            f"{path}: a directory with {len(found)} checkpoints ({names}); pass one of them"
        )
    if not files:
        raise not_a_checkpoint(path, "an empty directory")
    shown = ", ".join(p.name for p in files[:5]) + (", ..." if len(files) > 5 else "")
    raise not_a_checkpoint(path, f"a directory without a checkpoint ({len(files)} files: {shown})")


def locate(path: str | Path) -> tuple[str, Path]:
    """``(kind, path)``: ``"hf"`` and the directory, or ``"safetensors"``/``"torch"`` and the file
    (inside ``path`` when it is a directory holding one checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        return _locate_in_dir(path)
    kind, what = sniff(path)
    if kind is None:
        raise not_a_checkpoint(path, what)
    return kind, path


TRAINING_CHECKPOINT = (
    "a dinoflow training checkpoint (the run directory's teacher_backbone.safetensors is its backbone; "
    "python -m pretrain.export --run-dir RUN --checkpoint FILE writes it)"
)


def _is_training_checkpoint(path: Path) -> bool:
    """Our trainer's ``step_*.pt`` (a zip whose pickle names ``teacher.backbone.`` tensors)."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
            return b"teacher.backbone." in z.read(pkl)
    except (zipfile.BadZipFile, StopIteration):
        return False


def load_torch(path: Path) -> Any:
    """``torch.load`` of a checked torch file, tensors only (``weights_only``: no code runs); memory-
    mapped when the format allows, so describing a checkpoint reads shapes without loading every tensor."""
    import torch

    try:
        with warnings.catch_warnings():  # "pickle protocol 4 ..." says nothing a user can act on
            warnings.simplefilter("ignore", UserWarning)
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # the legacy (pre-zip) format cannot be mapped
                return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
        if _is_training_checkpoint(path):
            raise CheckpointError(
                f"{path}: expected a backbone checkpoint; found {TRAINING_CHECKPOINT}"
            ) from None
        if isinstance(exc, pickle.UnpicklingError):
            found = "a pickle holding objects other than tensors, which torch.load(weights_only=True) refuses"
        else:
            found = f"a damaged torch file ({type(exc).__name__}: {str(exc).strip()[:120]})"
        raise not_a_checkpoint(path, found) from None


def safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """Tensor names and metadata of a safetensors file, without reading the tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except SafetensorError as exc:
        raise not_a_checkpoint(path, f"a damaged safetensors file ({exc})") from None


def read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as exc:
        raise not_a_checkpoint(path, f"a damaged safetensors file ({exc})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: expected JSON; found text that does not parse ({exc})") from None
