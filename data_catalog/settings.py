"""One config loader for every layer: strict pydantic models, YAML files, ``--set a.b=value`` overrides.

The pipeline's config (``flows.config.PipelineConfig``), the curation config and the training config
(``pretrain.config.TrainConfig``) all derive from :class:`StrictModel` and are built with
:func:`load_model` (or :func:`validate` for a tree already in memory). A user's mistake, whichever
way it arrives (a YAML file, ``--set``, deployment parameters edited in the Prefect UI, ``python -m
pretrain.train --set``), becomes one :class:`ConfigError` line naming the full dotted key and the
closest valid keys, before any work starts::

    unknown config key 'curate.filter.min_sid' (did you mean 'curate.filter.min_side'?)

It lives in the lowest layer so that flows, curation and pretrain share it; it imports no other layer.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

M = TypeVar("M", bound=BaseModel)

UNKNOWN_KEY = "unknown_key"  # the pydantic error type of a key a model does not have


class ConfigError(ValueError):
    """A user's config mistake, as one line (the CLIs print it without a traceback, exit code 2)."""


def close_keys(key: str, valid: list[str], n: int = 3) -> list[str]:
    """The valid keys closest to a misspelled ``key`` (difflib's ratio >= 0.6), best first."""
    return difflib.get_close_matches(key, valid, n=n, cutoff=0.6)


def _field_names(model: type[BaseModel]) -> list[str]:
    names = list(model.model_fields)
    names += [f.alias for f in model.model_fields.values() if f.alias and f.alias not in names]
    return names


class StrictModel(BaseModel):
    """Unknown keys are errors, with the closest valid keys named: a typo never falls back to a default.

    The check runs before field validation, so an unknown key in a nested section keeps its full
    location (``pretrain.train.optim.base_lrr``), also in Prefect's parameter validation.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        valid = _field_names(cls)
        unknown = [key for key in data if key not in valid]
        if unknown:
            raise ValidationError.from_exception_data(
                cls.__name__, [_unknown_key_error(key, data[key], valid) for key in unknown]
            )
        return data


def key_error(model: type[BaseModel], key: str, message: str, value: Any) -> ValidationError:
    """A validation error at ``key`` of ``model`` (raised inside a validator, it keeps the full path)."""
    error = PydanticCustomError("config_error", "{message}", {"message": message})
    return ValidationError.from_exception_data(
        model.__name__, [InitErrorDetails(type=error, loc=(key,), input=value)]
    )


def _unknown_key_error(key: Any, value: Any, valid: list[str]) -> InitErrorDetails:
    close = close_keys(str(key), valid)
    hint = (
        "did you mean " + " or ".join(repr(k) for k in close) if close else "valid keys: " + ", ".join(valid)
    )
    error = PydanticCustomError(UNKNOWN_KEY, "unknown key ({hint})", {"hint": hint, "close": close})
    return InitErrorDetails(type=error, loc=(key,), input=value)


def _as_model(annotation: Any) -> type[BaseModel] | None:
    """The model class behind ``X``, ``X | None`` or ``Optional[X]`` (None for plain values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for a in typing.get_args(annotation) if (m := _as_model(a)) is not None]
        return models[0] if len(models) == 1 else None
    return None


def leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config tree (``optim.base_lr``, ``curate.filter.min_side``, ...)."""
    keys: list[str] = []
    for name, fld in model.model_fields.items():
        sub = _as_model(fld.annotation)
        keys += leaf_keys(sub, f"{prefix}{name}.") if sub is not None else [f"{prefix}{name}"]
    return keys


def _section(model: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The model class at dotted ``path`` inside ``model`` (None when the path leaves the typed tree)."""
    current: type[BaseModel] | None = model
    for part in path:
        if current is None or part not in current.model_fields:
            return None
        current = _as_model(current.model_fields[part].annotation)
    return current


def check_path(model: type[BaseModel], path: list[str]) -> None:
    """Raise :class:`ConfigError` unless ``path`` names a key of ``model`` (``--set`` before validation)."""
    for depth, part in enumerate(path):
        section = _section(model, path[:depth])
        if section is None:
            dotted = ".".join(path[:depth])
            raise ConfigError(
                f"config key {dotted!r} is a value, not a section: cannot set {'.'.join(path)!r}"
            )
        valid = _field_names(section)
        if part not in valid:
            raise ConfigError(_unknown_message(path[:depth], part, close_keys(part, valid), valid))


def _unknown_message(parents: list[Any], key: Any, close: list[str], valid: list[str]) -> str:
    prefix = "".join(f"{p}." for p in parents)
    message = f"unknown config key {prefix + str(key)!r}"
    if close:
        return message + " (did you mean " + " or ".join(repr(prefix + k) for k in close) + "?)"
    if valid:
        return message + f" (valid keys{' under ' + repr(prefix[:-1]) if prefix else ''}: {', '.join(valid)})"
    return message


def format_error(exc: ValidationError, model: type[BaseModel] | None = None, where: str | None = None) -> str:
    """One line for a pydantic ``ValidationError`` of a config: full dotted keys, closest valid keys."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc)
        if err["type"] in (UNKNOWN_KEY, "extra_forbidden"):
            section = _section(model, loc[:-1]) if model is not None else None
            valid = _field_names(section) if section is not None else []
            close = close_keys(loc[-1], valid) if valid else list((err.get("ctx") or {}).get("close", []))
            parts.append(_unknown_message(loc[:-1], loc[-1], close, valid))
        elif err["type"] == "missing":
            parts.append(f"missing config key {dotted!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            shown = f"config key {dotted!r}: " if dotted else ""
            plain = err["type"] == "config_error" or isinstance(err.get("input"), dict)
            got = "" if plain else f" (got {err.get('input')!r})"
            parts.append(f"{shown}{msg}{got}")
    return "; ".join(parts) + (f" [{where}]" if where else "")


def validate(model: type[M], tree: dict[str, Any], where: str | None = None) -> M:
    """``model.model_validate(tree)``, a mistake raised as a one-line :class:`ConfigError`."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_error(exc, model, where)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file; missing file, bad YAML or a non-mapping is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{at}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of keys at the top level "
            f"(e.g. 'catalog: /data/catalog'), not a {type(loaded).__name__}"
        )
    return loaded


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"curate.filter.min_side=96"`` -> (["curate", "filter", "min_side"], 96) (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. curate.filter.min_side=96)")
    key, raw = item.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(
            f"override {item!r}: the value is not valid YAML (quote strings with ':')"
        ) from None
    return path, value


def set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, creating sections (a model found on the way is dumped)."""
    node = tree
    for part in path[:-1]:
        sub = node.get(part)
        if isinstance(sub, BaseModel):
            sub = sub.model_dump()
        node[part] = sub = dict(sub) if isinstance(sub, dict) else {}
        node = sub
    node[path[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, section by section (neither is modified)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (every nested mapping is a section)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(model: type[BaseModel], tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``tree`` with each ``a.b=value`` set in order; a key ``model`` lacks is a ConfigError at once."""
    out = dict(tree)
    for item in overrides:
        path, value = parse_override(item)
        check_path(model, path)
        set_dotted(out, path, value)
    return out


def load_model(
    model: type[M], file: str | Path | None = None, overrides: list[str] | None = None, **base: Any
) -> M:
    """Build ``model`` from keyword defaults, then a YAML ``file``, then ``overrides``; validated once.

    Every mistake (missing file, non-mapping YAML, unknown key, bad value) is one :class:`ConfigError`.
    """
    tree: dict[str, Any] = dict(base)
    if file is not None:
        tree = deep_merge(tree, read_yaml(file))
    tree = apply_overrides(model, tree, list(overrides or []))
    where = f"config {file}" if file is not None else None
    return validate(model, tree, where)


def to_yaml(config: BaseModel) -> str:
    """The config as YAML, keys in field order (what :func:`load_model` reads back to an equal model)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def dump_yaml(config: BaseModel, path: str | Path) -> Path:
    """Save the resolved config beside an output (atomic: temp name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_yaml(config))
    tmp.replace(path)
    return path


def differences(base: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    """The part of ``tree`` that differs from ``base``, as a nested tree (``deep_merge(base, it) == tree``)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            sub = differences(base[key], value)
            if sub:
                out[key] = sub
        elif key not in base or base[key] != value:
            out[key] = value
    return out
