"""The benchmark commands the docs quote keep working (their numbers are in BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.run_all import BENCHMARKS

REPO = Path(__file__).resolve().parents[1]


def test_every_module_make_and_run_all_name_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    modules = set(re.findall(r"python -m ([\w.]+)", makefile)) | {args[0] for args in BENCHMARKS.values()}
    assert "benchmarks.run_all" in modules
    missing = sorted(m for m in modules if m != "pytest" and importlib.util.find_spec(m) is None)
    assert not missing, f"Makefile / run_all name modules that do not exist: {missing}"


def test_every_benchmark_benchmarks_md_quotes_is_in_run_all() -> None:
    quoted = set(re.findall(r"python -m (benchmarks\.\w+)", (REPO / "BENCHMARKS.md").read_text()))
    quoted.discard("benchmarks.run_all")  # the runner itself
    assert quoted, "BENCHMARKS.md quotes no command"
    assert quoted <= {args[0] for args in BENCHMARKS.values()}, quoted - {a[0] for a in BENCHMARKS.values()}


def test_catalog_benchmark_measures_every_size_and_layout(tmp_path: Path) -> None:
    out = tmp_path / "catalog.md"
    cmd = [sys.executable, "-m", "benchmarks.bench_catalog", "--sizes", "3000", "6000", "--new", "300"]
    subprocess.run([*cmd, "--updated", "30", "--out", str(out)], cwd=REPO, check=True, capture_output=True)
    text = out.read_text()
    row = r"^\| (spread|dated) \| ([\d,]+) \| (\d+) MB \| (\d+) MB \| (\d+) MB, [\d.]+ s \| (\d+) MB, [\d.]+ s \| (\d+) MB, [\d.]+ s \|$"
    rows = re.findall(row, text, re.M)
    assert [r[:2] for r in rows] == [
        ("spread", "3,000"),
        ("spread", "6,000"),
        ("dated", "3,000"),
        ("dated", "6,000"),
    ]
    assert all(int(peak) > 0 for r in rows for peak in r[3:])
    assert "Growth per catalog row from 3,000 to 6,000 rows, `spread`" in text
    assert "Growth per catalog row from 3,000 to 6,000 rows, `dated`" in text
