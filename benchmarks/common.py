"""What every benchmark records beside its numbers: the machine it ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """``nproc N, CPU <model>, GPU <name|none>, torch X, python Y``."""
    import torch  # here, not at import: benchmarks that measure memory import this module

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor()
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"nproc {os.cpu_count()}, CPU {cpu}, GPU {gpu}, torch {torch.__version__}, python {platform.python_version()}"


def write_result(out: Path, text: str) -> None:
    """Print a benchmark's markdown and write it to ``out`` atomically (temp file, then rename)."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
