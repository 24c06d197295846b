"""What benchmarks share: the machine they ran on, writing results, measuring in a fresh process."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def peak_mb() -> float:
    """This process's peak RSS (VmHWM) in MB. Not ``ru_maxrss``: Linux keeps that across fork +
    exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: best effort


def run_child(module: str, *args: str) -> dict:
    """``python -m module --child *args`` in a fresh process (so its peak RSS is its own); the
    JSON object on its last line of output."""
    cmd = [sys.executable, "-m", module, "--child", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_file_shards(files: list[Path], out: Path, n_shards: int = 2, name: str = "t") -> Path:
    """The files' bytes as ``n_shards`` webdataset tars (keys: the file stems, round robin) and a
    shard index JSON beside them (``pretrain.train --dataset out/index.json``); returns its path."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in range(n_shards):
        shard, part = f"shard-{s:06d}.tar", files[s::n_shards]
        with wds.TarWriter(str(out / shard)) as w:
            for f in part:
                w.write({"__key__": f.stem, "jpg": f.read_bytes()})
        entries.append(
            {"url": shard, "num_samples": len(part), "bytes": (out / shard).stat().st_size, "md5": ""}
        )
    index = out / "index.json"
    index.write_text(json.dumps({"name": name, "version": 1, "num_samples": len(files), "shards": entries}))
    return index
