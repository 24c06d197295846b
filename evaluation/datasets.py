"""Labelled benchmarks on disk: ImageFolder directories or tars of them, split, fingerprinted, checked.

A split is a list of ``(path, label)`` over the train split's sorted class folders, with a
fingerprint over every file's relative path, label and content (BLAKE2b of its bytes): the feature
cache keys on it, so a changed image never reuses stale features. Bad input is an error that names
it (an empty split, a test class the train split lacks); a test split that overlaps the train split
(same folder, nested folders, or byte-identical files) is a warning.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.config import BenchmarkConfig, expand_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
CLASS_NAMES_FILE = "classes.tsv"  # optional: "<folder>\t<display name>" per line (Imagenette's)


@dataclass(frozen=True)
class Split:
    """One split: ``files[i] = (path, label)``, labels indexing ``classes`` (the train split's)."""

    root: Path
    classes: list[str]
    files: list[tuple[str, int]]
    digests: list[str]
    fingerprint: str
    ignored: int = 0  # files in class folders without an image extension

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.files]


@dataclass(frozen=True)
class Benchmark:
    name: str
    config: BenchmarkConfig
    train: Split
    test: Split
    class_names: list[str]  # display names, one per class index
    warnings: list[str] = field(default_factory=list)


def is_tar(path: Path) -> bool:
    return path.is_file() and path.name.endswith(TAR_SUFFIXES)


def _image_folder_root(path: Path) -> Path:
    """The ImageFolder root inside an extracted tar: down through folders holding one folder only."""
    while True:
        subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if len(subdirs) != 1:
            return path
        path = subdirs[0]


def resolve_source(spec: str, cache_root: Path) -> Path:
    """An ImageFolder root from a directory or a tar (extracted once under ``cache_root/sources``,
    keyed by the tar's absolute path, size and modification time; atomic: temp folder, then rename)."""
    path = Path(expand_path(spec))
    if path.is_dir():
        return path
    if not path.exists():
        raise ValueError(f"benchmark images {spec!r}: {path} does not exist")
    if not is_tar(path):
        raise ValueError(
            f"benchmark images {spec!r}: {path} is neither a directory nor a tar ({TAR_SUFFIXES})"
        )
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = cache_root / "sources" / f"{path.name.split('.')[0]}-{key}"
    if not dest.is_dir():
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(path) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ValueError(f"benchmark images {spec!r}: cannot extract {path}: {exc}") from None
        try:
            tmp.rename(dest)
        except OSError:  # another process extracted it first
            if not dest.is_dir():
                raise
    return _image_folder_root(dest)


def list_image_folder(root: Path) -> tuple[list[str], list[tuple[str, str]], int]:
    """``(classes, [(path, class)], ignored)`` of ``root/<class>/**/<image>`` (sorted, recursive in a
    class folder; hidden files skipped, non-image extensions counted as ignored)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[str, str]] = []
    ignored = 0
    for cls in classes:
        for dirpath, dirnames, names in os.walk(root / cls):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append((os.path.join(dirpath, name), cls))
                else:
                    ignored += 1
    return classes, files, ignored


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.blake2b(f.read(), digest_size=16).hexdigest()


def _per_class(files: list[tuple[str, str]], limit: int | None) -> list[tuple[str, str]]:
    if limit is None:
        return files
    seen: dict[str, int] = {}
    out = []
    for path, cls in files:
        if seen.get(cls, 0) < limit:
            seen[cls] = seen.get(cls, 0) + 1
            out.append((path, cls))
    return out


def _holdout(files: list[tuple[str, str]], fraction: float) -> tuple[list, list]:
    """A fixed part of each class: the files whose name hashes lowest (round(fraction * n), >= 1)."""
    by_class: dict[str, list[tuple[str, str]]] = {}
    for item in files:
        by_class.setdefault(item[1], []).append(item)
    train, test = [], []
    for cls in sorted(by_class):
        items = by_class[cls]
        rank = sorted(items, key=lambda it: hashlib.sha256(os.path.basename(it[0]).encode()).hexdigest())
        n_test = max(1, round(fraction * len(items))) if len(items) > 1 else 0
        chosen = {p for p, _ in rank[:n_test]}
        train += [it for it in items if it[0] not in chosen]
        test += [it for it in items if it[0] in chosen]
    return train, test


def make_split(
    root: Path, classes: list[str], files: list[tuple[str, str]], ignored: int, what: str
) -> Split:
    """A :class:`Split` labelled by ``classes`` (the train split's); errors name what is wrong."""
    if not files:
        raise ValueError(
            f"{what} split at {root} is empty: no images in ImageFolder layout (ROOT/<class>/<image>)"
        )
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({cls for _, cls in files if cls not in index})
    if unknown:
        raise ValueError(
            f"{what} split at {root} has classes the train split lacks: {unknown} (train classes: {classes})"
        )
    digests = [file_digest(p) for p, _ in files]
    h = hashlib.sha256()
    for (path, cls), digest in zip(files, digests, strict=True):
        h.update(f"{os.path.relpath(path, root)}\t{cls}\t{digest}\n".encode())
    labelled = [(p, index[c]) for p, c in files]
    return Split(root, list(classes), labelled, digests, h.hexdigest(), ignored)


def _class_names(root: Path, classes: list[str]) -> list[str]:
    names: dict[str, str] = {}
    tsv = root / CLASS_NAMES_FILE
    if tsv.is_file():
        for line in tsv.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                names[parts[0].strip()] = parts[1].strip()
    return [names.get(c, c) for c in classes]


def overlap_warnings(train: Split, test: Split) -> list[str]:
    """A test split that is, or lies in, or holds the train folder, or shares files' bytes with it."""
    out = []
    a, b = train.root.resolve(), test.root.resolve()
    if a == b or a in b.parents or b in a.parents:
        out.append(f"the test folder {test.root} overlaps the train folder {train.root}")
    shared = len(set(train.digests) & set(test.digests))
    if shared:
        out.append(f"{shared} test image(s) are byte-identical to train images (test overlaps train)")
    return out


@dataclass(frozen=True)
class Listing:
    """A benchmark's files before fingerprinting (what :func:`list_benchmark` checked)."""

    train_root: Path
    test_root: Path
    classes: list[str]
    train_files: list[tuple[str, str]]
    test_files: list[tuple[str, str]]
    ignored: tuple[int, int]


def list_benchmark(name: str, config: BenchmarkConfig, cache_root: Path) -> Listing:
    """The benchmark's files per split (tars extracted), checked: 2+ train classes, no test class
    missing from train, no empty split. Reads no image (a quick check before any work)."""
    train_root = resolve_source(config.train, cache_root)
    classes, train_files, ignored = list_image_folder(train_root)
    if config.test is not None:
        test_root = resolve_source(config.test, cache_root)
        test_classes, test_files, test_ignored = list_image_folder(test_root)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise ValueError(
                f"benchmark {name!r}: test classes {unknown} are not among the train classes {classes}"
            )
    else:
        test_root, test_ignored = train_root, 0
        train_files, test_files = _holdout(train_files, float(config.holdout_fraction or 0.0))
    if len(classes) < 2:
        raise ValueError(
            f"benchmark {name!r}: the train split at {train_root} has {len(classes)} class folder(s); need 2 or more"
        )
    train_files = _per_class(train_files, config.train_per_class)
    test_files = _per_class(test_files, config.test_per_class)
    for what, root, files in (("train", train_root, train_files), ("test", test_root, test_files)):
        if not files:
            raise ValueError(
                f"{what} split at {root} is empty: no images in ImageFolder layout (ROOT/<class>/<image>)"
            )
    return Listing(train_root, test_root, classes, train_files, test_files, (ignored, test_ignored))


def load_benchmark(name: str, config: BenchmarkConfig, cache_root: Path) -> Benchmark:
    """List, check, split and fingerprint a benchmark (ValueError on an empty split or unknown class)."""
    ls = list_benchmark(name, config, cache_root)
    train = make_split(ls.train_root, ls.classes, ls.train_files, ls.ignored[0], "train")
    test = make_split(ls.test_root, ls.classes, ls.test_files, ls.ignored[1], "test")
    if config.test is not None:
        warnings = overlap_warnings(train, test)
    else:  # a held-out split shares the folder by construction; only bytes matter
        shared = len(set(train.digests) & set(test.digests))
        warnings = [f"{shared} held-out test image(s) are byte-identical to train images"] if shared else []
    return Benchmark(name, config, train, test, _class_names(ls.train_root, ls.classes), warnings)
