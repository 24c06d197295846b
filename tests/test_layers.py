"""The layer rules of DESIGN.md, checked over the import graph (every import statement, at any depth).

data_catalog imports no other layer; pretrain never imports curation; curation and evaluation take
only pretrain's models (evaluation also reads run metrics through ``pretrain.metrics``); nothing
imports flows; only flows imports prefect.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("data_catalog", "curation", "pretrain", "evaluation", "flows")

# module prefixes each layer may import from the other layers (its own package is always allowed)
ALLOWED: dict[str, tuple[str, ...]] = {
    "data_catalog": (),
    "pretrain": ("data_catalog",),
    "curation": ("data_catalog", "pretrain.models"),
    "evaluation": ("data_catalog", "pretrain.models", "pretrain.metrics"),
    "flows": ("data_catalog", "curation", "pretrain", "evaluation"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, nested ones included."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if top == "prefect" and layer != "flows":
                bad.append(where + " (only flows/ imports prefect)")
            elif top in LAYERS and top != layer:
                if not any(module == p or module.startswith(p + ".") for p in ALLOWED[layer]):
                    bad.append(where + f" (allowed: {', '.join(ALLOWED[layer]) or 'no other layer'})")
    return bad


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_follow_design(layer: str) -> None:
    assert violations(layer) == []


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The walker finds imports inside functions, so a lazy import cannot hide a broken rule."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from curation.decode import decode_record\n    import prefect\n")
    assert [m for _, m in imported_modules(f)] == ["curation.decode", "prefect"]
