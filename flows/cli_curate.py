"""``dinoflow curate`` / ``dinoflow run``: the curation flags and their pre-flight checks.

    dinoflow curate --source DIR --catalog CAT [--embed-checkpoint PATH] [--copy-checkpoint PATH]
                    [--eval-set NAME=PATH ...]

The flags map onto the pipeline config (``curate.embed.semantic_checkpoint``,
``curate.embed.copy_checkpoint``, ``curate.leaks.eval_sets``; a config file's eval sets are kept and
the flags' added). Before any work (and before Prefect is imported) every path the enabled stages
need is checked: an ``--eval-set`` without ``NAME=``, an eval set that does not exist or holds no
image, a checkpoint that is missing or of the wrong kind (the semantic embedder must be a backbone,
the copy embedder a copy descriptor), a retrieval seed set that is not there. Each is a one-line
``ConfigError`` (the CLI prints it, exit code 2). Cheap checks (paths, image files) run first
without importing torch; the checkpoints are then loaded strictly (``curation.embed.load_embedder``),
so a mismatched file is named here and not after ingest. A target size larger than the pool is
known only once the pool is: the flow checks it before writing anything.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import Any

from data_catalog.settings import ConfigError
from evaluation.datasets import IMAGE_EXTENSIONS, is_tar
from flows.config import PipelineConfig

EVAL_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
EVAL_SET_EXAMPLE = "cifar10-test=../shared/data/cifar10-test.tar.gz"


def parse_eval_sets(values: list[str] | None) -> dict[str, str]:
    """``["NAME=PATH", ...]`` -> ``{NAME: absolute PATH}``; a value without ``NAME=``, a bad name or a
    name given twice is a one-line ConfigError."""
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(f"--eval-set {value!r}: expected NAME=PATH, e.g. --eval-set {EVAL_SET_EXAMPLE}")
        if not EVAL_SET_NAME.match(name):
            raise ConfigError(
                f"--eval-set {value!r}: the name {name!r} may hold only letters, digits, '.', '_' and '-'"
            )
        if name in out:
            raise ConfigError(f"--eval-set {name!r} is given twice")
        out[name] = str(Path(path).expanduser().absolute())
    return out


def curate_flags(
    embed_checkpoint: str | None, copy_checkpoint: str | None, eval_sets: list[str] | None
) -> dict[str, Any]:
    """The flags as a config tree to merge over the file's (``{}`` when none was given)."""
    embed = {
        key: str(Path(value).expanduser().absolute())
        for key, value in (("semantic_checkpoint", embed_checkpoint), ("copy_checkpoint", copy_checkpoint))
        if value is not None
    }
    curate: dict[str, Any] = {}
    if embed:
        curate["embed"] = embed
    sets = parse_eval_sets(eval_sets)
    if sets:
        curate["leaks"] = {"eval_sets": sets}
    return {"curate": curate} if curate else {}


def _first_image_in_dir(root: Path) -> str | None:
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in names:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                return os.path.join(dirpath, name)
    return None


def _first_image_in_tar(path: Path) -> str | None:
    with tarfile.open(path) as tar:  # streams members: stops at the first image
        for member in tar:
            base = os.path.basename(member.name)
            if member.isfile() and not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS):
                return member.name
    return None


def check_image_set(what: str, spec: str) -> None:
    """``spec`` is a directory or a tar holding at least one image file (by extension)."""
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"{what}: {spec} does not exist")
    if path.is_dir():
        found = _first_image_in_dir(path)
    elif is_tar(path):
        try:
            found = _first_image_in_tar(path)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ConfigError(f"{what}: cannot read the tar {spec} ({exc})") from None
    else:
        raise ConfigError(f"{what}: {spec} is neither a directory nor a tar of one")
    if found is None:
        kinds = ", ".join(IMAGE_EXTENSIONS)
        raise ConfigError(f"{what}: {spec} holds no image files ({kinds})")


def uses_vectors(config: PipelineConfig) -> dict[str, bool]:
    """Which embedders the enabled stages need: ``{"semantic": ..., "copy": ...}``."""
    cur = config.curate
    if not cur.embed.enabled:
        return {"semantic": False, "copy": False}
    semantic = cur.cluster.enabled or cur.sample.mode == "retrieval"
    copy = cur.semdedup.enabled or bool(cur.leaks.eval_sets) or cur.semdedup.confirm_phash
    return {"semantic": semantic, "copy": copy}


def check_paths(config: PipelineConfig) -> None:
    """The cheap checks, no torch: eval sets, given checkpoint paths, the retrieval seed set."""
    cur = config.curate
    for name, spec in cur.leaks.eval_sets.items():
        check_image_set(f"--eval-set {name}", spec)
    flags = {"semantic": ("--embed-checkpoint", cur.embed.semantic_checkpoint),
             "copy": ("--copy-checkpoint", cur.embed.copy_checkpoint)}  # fmt: skip
    for role, needed in uses_vectors(config).items():
        flag, path = flags[role]
        if needed and path is not None and not Path(path).exists():
            raise ConfigError(f"{flag}: {path} does not exist")
    seeds = cur.sample.retrieval_seed_set
    if cur.sample.mode == "retrieval":
        if seeds is None:
            raise ConfigError("curate.sample.mode=retrieval needs curate.sample.retrieval_seed_set")
        if not _is_dataset_ref(seeds):
            check_image_set("curate.sample.retrieval_seed_set", seeds)
    target, cap = cur.sample.target_size, config.dataset.max_samples
    if target is not None and cap is not None and target != cap:
        raise ConfigError(
            f"curate.sample.target_size={target} and dataset.max_samples={cap} disagree: set one of them"
        )


def _is_dataset_ref(spec: str) -> bool:
    """``NAME:vN`` (a dataset version) rather than a path: no such path and the form parses."""
    if Path(spec).exists() or ":" not in spec:
        return False
    from data_catalog.datasets import parse_dataset_ref

    try:
        return parse_dataset_ref(spec)[1] is not None
    except ValueError:
        return False


def resolve_checkpoints(config: PipelineConfig) -> dict[str, str]:
    """``{role: path}`` of each embedder the enabled stages need (the flag's, else the default),
    loaded once strictly so a wrong kind or a mismatched file is one line here. Imports torch."""
    from curation.embed import configured_checkpoint, load_embedder
    from data_catalog.catalog import Catalog

    cur, out = config.curate.embed, {}
    flags = {"semantic": "--embed-checkpoint", "copy": "--copy-checkpoint"}
    for role, needed in uses_vectors(config).items():
        if not needed:
            continue
        given = cur.semantic_checkpoint if role == "semantic" else cur.copy_checkpoint
        try:
            path = configured_checkpoint(Catalog(config.catalog), cur, role, config.dataset.name)
            load_embedder(path, role)
        except ValueError as exc:  # CheckpointError is a ValueError
            where = flags[role] if given is not None else f"the default {role} embedder"
            raise ConfigError(f"{where}: {exc}") from None
        out[role] = path
    return out


def preflight(config: PipelineConfig) -> dict[str, str]:
    """Every check of the module docstring; returns the embedders' paths (``{role: path}``)."""
    check_paths(config)
    return resolve_checkpoints(config)
