"""Loading a pydantic config from YAML plus ``--set key=value`` overrides (dotted keys)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"curate.filter.min_side=96"`` -> (["curate", "filter", "min_side"], 96) (value parsed as YAML)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value (e.g. curate.filter.min_side=96)")
    key, raw = item.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ValueError(f"override {item!r} has an empty key")
    return path, yaml.safe_load(raw) if raw.strip() else None


def _set(tree: dict[str, Any], path: list[str], value: Any, model: type[BaseModel]) -> None:
    fields = model.model_fields
    head = path[0]
    if head not in fields:
        raise ValueError(f"unknown config key {head!r} in {model.__name__}; valid keys: {', '.join(fields)}")
    if len(path) == 1:
        tree[head] = value
        return
    annotation = fields[head].annotation
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        raise ValueError(f"config key {head!r} is a value, not a section: cannot set {'.'.join(path)}")
    sub = tree.setdefault(head, {})
    if isinstance(sub, BaseModel):
        sub = tree[head] = sub.model_dump()
    _set(sub, path[1:], value, annotation)


def load_model(
    model: type[M], file: str | Path | None = None, overrides: list[str] | None = None, **base: Any
) -> M:
    """Build ``model`` from keyword defaults, then a YAML ``file``, then ``overrides``; validated once."""
    tree: dict[str, Any] = dict(base)
    if file is not None:
        loaded = yaml.safe_load(Path(file).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {file} must hold a mapping at the top level")
        tree = _deep_merge(tree, loaded)
    for item in overrides or []:
        path, value = parse_override(item)
        _set(tree, path, value, model)
    return model.model_validate(tree)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def dump_yaml(config: BaseModel, path: Path) -> None:
    """Save the resolved config beside an output (atomic)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    tmp.replace(path)
