"""Evaluation leaks: pool images that are copies or edited copies of benchmark images.

``--eval-set NAME=PATH`` names a benchmark by an ImageFolder directory (``ROOT/<class>/<image>``) or a
tar of one (``.tar``, ``.tar.gz``, ``.tgz``; read in place through ``TAR#MEMBER`` uris, never
extracted). :func:`list_eval_set` lists it (image_id = sha256 of the bytes, uri, label = the class
folder); a missing path or one holding no images is a one-line ValueError before any work.

:func:`apply_leak_removal` embeds every benchmark image with the copy descriptor (and its
horizontal mirror, so a mirrored copy matches even where the descriptor is not mirror-invariant),
searches each pool image's ``LeakConfig.k`` nearest benchmark vectors (``curation.vector_search``), and
rejects the pool images that copy one: status ``rejected``, reason ``eval_leak``, ``dup_of`` /
``dup_of_uri`` the benchmark image, ``detail`` ``"<NAME>: <label>/<file>, cosine 0.9123"`` (the
benchmark's name first, then the image). With ``LeakConfig.verify = "none"`` the nearest benchmark image
at cosine >= ``threshold`` is the leak. With ``"geometric"`` (the default) a nearest image at or above
``verify_below`` decides alone; under it, the nearest images from ``verify_from`` up are tried best first
and the first that matches geometrically (``curation.geometric``; detail ``"..., cosine 0.8512, 48
inliers"``) is the leak, so a copy is found behind a nearer photo of a similar scene; pairs that cannot
be verified (an image under ``verify_min_side``, or unreadable now) count at ``threshold``. Pool images
whose shorter side is below ``LeakConfig.small_side`` (CIFAR-sized) are decided instead by the
small-image verifier (``curation.small_copies``: grey-pixel candidates, aligned high-pass
correlation >= ``small_threshold``; detail ``"..., aligned correlation 0.8312"``): at 32 px the
descriptor's cosine cannot tell a copy from another photo of a similar scene.

The pool is every image that reached dedup (accepted, or a duplicate of any kind) with a vector for the
descriptor in the embeddings table, plus earlier ``eval_leak`` rows of the benchmarks checked now: one
that no longer matches (a higher threshold) goes back to ``accepted``, and the next dedup run
re-decides it. Rows of benchmarks not passed this run are left as they are. DINOv2 (Oquab et al.
2023, section 3) removed leaks at cosine > 0.45 on SSCD features; ours is calibrated in
``docs/semantic-dedup.md``.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from curation.neardup import commit_decisions, decided_changed
from curation.vector_search import Search, search
from data_catalog.catalog import Catalog
from data_catalog.embeddings import embedded_ids, read_embeddings
from data_catalog.image import open_image
from data_catalog.images import Reason, Status, read_images
from data_catalog.uris import TAR_SUFFIXES, UriReader

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
LEAK = Reason.EVAL_LEAK.value
EVAL_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("label", pa.string())])
COLUMNS = ["uri", "image_id", "status", "reason", "dup_of", "dup_of_uri", "detail", "width", "height"]
DECIDED = ["uri", "status", "reason", "dup_of", "dup_of_uri", "detail"]


def parse_eval_set(spec: str) -> tuple[str, str]:
    """``"NAME=PATH"`` -> (NAME, PATH); anything else is a one-line ValueError."""
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip() or ":" in name:
        raise ValueError(f"--eval-set {spec!r}: expected NAME=PATH (a name without ':' and a path)")
    return name.strip(), path.strip()


def _is_image(name: str) -> bool:
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _labels(rel: list[str]) -> list[str]:
    """Class folder of each relative path: its first folder below the deepest folder all share."""
    parts = [p.split("/") for p in rel]
    depth = 0
    while all(len(p) > depth + 2 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1
    return [p[depth] if len(p) > depth + 1 else "" for p in parts]


def _list_dir(root: Path) -> list[tuple[str, str, str]]:
    files = []
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [os.path.join(dirpath, n) for n in sorted(names) if _is_image(n)]
    rel = [os.path.relpath(f, root).replace(os.sep, "/") for f in files]
    out = []
    for path, label in zip(files, _labels(rel), strict=True):
        with open(path, "rb") as f:
            out.append((hashlib.sha256(f.read()).hexdigest(), os.path.abspath(path), label))
    return out


def _list_tar(path: Path, spec: str) -> list[tuple[str, str, str]]:
    found: list[tuple[str, str]] = []
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for info in tar:
                if info.isfile() and _is_image(info.name):
                    member = tar.extractfile(info)
                    assert member is not None
                    found.append((info.name, hashlib.sha256(member.read()).hexdigest()))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"--eval-set {spec}: cannot read the tar {path}: {exc}") from None
    labels = _labels([name for name, _ in found])
    return [
        (digest, f"{path.resolve()}#{name}", lab) for (name, digest), lab in zip(found, labels, strict=True)
    ]


def list_eval_set(name: str, path: str) -> pa.Table:
    """(image_id, uri, label) of every image of a benchmark (module docstring), sorted by uri."""
    spec = f"{name}={path}"
    p = Path(os.path.expanduser(path))
    if not p.exists():
        raise ValueError(f"--eval-set {spec}: {p} does not exist")
    if p.is_dir():
        rows = _list_dir(p)
    elif p.name.lower().endswith(TAR_SUFFIXES):
        rows = _list_tar(p, spec)
    else:
        raise ValueError(
            f"--eval-set {spec}: {p} is neither a directory nor a tar ({', '.join(TAR_SUFFIXES)})"
        )
    if not rows:
        raise ValueError(f"--eval-set {spec}: no images under {p} (expected ROOT/<class>/<image>)")
    rows.sort(key=lambda r: r[1])
    ids, uris, labels = zip(*rows, strict=True)
    return pa.table({"image_id": list(ids), "uri": list(uris), "label": list(labels)}, schema=EVAL_SCHEMA)


def list_eval_sets(eval_sets: dict[str, str]) -> dict[str, pa.Table]:
    """Every benchmark listed (the pre-flight check: the first bad one raises)."""
    return {name: list_eval_set(name, path) for name, path in eval_sets.items()}


def embed_uris(
    descriptor: Any, uris: list[str], embed_cfg: Any, mirror: bool, chunk: int = 512,
    sides: list[int] | None = None,
) -> np.ndarray:  # fmt: skip
    """[N, D] unit vectors of the images at ``uris`` (with ``mirror``: [2N, D], row 2i the image,
    2i + 1 its horizontal mirror), read by the one uri reader, opened by the one image opener. With
    ``sides``, each image's shorter side is appended to it."""
    from curation.embed import embed_arrays

    out = []
    with UriReader(wanted=uris) as reader:
        for start in range(0, len(uris), chunk):
            imgs: list[Image.Image] = []
            for uri in uris[start : start + chunk]:
                img = open_image(reader.read(uri))
                if sides is not None:
                    sides.append(min(img.size))
                imgs += [img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)] if mirror else [img]
            out.append(
                embed_arrays(descriptor, imgs, embed_cfg.batch_size, embed_cfg.device, embed_cfg.precision)
            )
    return np.concatenate(out) if out else np.zeros((0, descriptor.dim), np.float32)


def _pool_filter() -> pc.Expression:
    """Accepted, any duplicate, or an earlier leak (filtered by benchmark after reading)."""
    status, reason = pc.field("status"), pc.field("reason")
    return (
        (status == Status.ACCEPTED.value)
        | (status == Status.DUPLICATE.value)
        | ((status == Status.REJECTED.value) & (reason == LEAK))
    )


def _benchmark_of(detail: str | None) -> str | None:
    return None if detail is None else detail.split(":", 1)[0]


def _pool(catalog: Catalog, model_id: str, names: list[str]) -> tuple[pa.Table, np.ndarray, int]:
    """Pool rows with a vector (and earlier leaks of ``names``), their vectors, and the rows without one."""
    table = read_images(catalog, columns=COLUMNS, where=_pool_filter())
    reasons, details = table.column("reason").to_pylist(), table.column("detail").to_pylist()
    status = table.column("status").to_pylist()
    mine = np.array([s != Status.REJECTED.value or _benchmark_of(d) in names
                     for s, r, d in zip(status, reasons, details, strict=True)], dtype=bool)  # fmt: skip
    table = table.filter(pa.array(mine))
    have = embedded_ids(catalog, model_id)
    ids = table.column("image_id").to_pylist()
    ok = np.array([i is not None and i in have for i in ids], dtype=bool)
    pool = table.filter(pa.array(ok))
    pool_ids = pool.column("image_id").to_pylist()
    if not pool_ids:
        return pool, np.zeros((0, 1), np.float32), int((~ok).sum())
    _, vectors = read_embeddings(catalog, model_id, pool_ids)
    return pool, vectors, int((~ok).sum())


def _small_rows(pool: pa.Table, small_side: int) -> np.ndarray:
    """Pool rows whose shorter side is below ``small_side`` (decided by the small-image verifier)."""
    if small_side <= 0 or pool.num_rows == 0:
        return np.zeros(pool.num_rows, dtype=bool)
    w = pool.column("width").to_numpy(zero_copy_only=False)
    h = pool.column("height").to_numpy(zero_copy_only=False)
    side = np.fmin(w.astype(np.float64), h.astype(np.float64))  # null (undecodable) -> nan -> not small
    return np.nan_to_num(side, nan=np.inf) < small_side


def _grey_of(uris: list[str]) -> np.ndarray:
    """[N, 32, 32] grey versions of the images at ``uris``, through the one uri reader and opener."""
    from curation.small_copies import grey32

    with UriReader(wanted=uris) as reader:
        return grey32(open_image(reader.read(u)) for u in uris)


def small_image_matches(
    pool: pa.Table, meta: pa.Table, cfg: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(small [P] bool, best eval row [P], aligned score [P])`` of the pool's small images
    (``curation.small_copies``); rows that are not small have best -1 and score -inf."""
    from curation.small_copies import match_small

    small = _small_rows(pool, cfg.small_side)
    best = np.full(pool.num_rows, -1, np.int64)
    score = np.full(pool.num_rows, -np.inf, np.float32)
    if small.any():
        pool_uris = pool.column("uri").take(pa.array(np.flatnonzero(small))).to_pylist()
        b, s = match_small(_grey_of(meta.column("uri").to_pylist()), _grey_of(pool_uris), k=cfg.small_k)
        best[small], score[small] = b, s
    return small, best, score


def nearest_distinct(s: np.ndarray, i: np.ndarray, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [P, k], cosines [P, k])``: each pool row's nearest benchmark images from a search over
    the benchmark's vectors (with ``mirror``: row 2b the image b, 2b + 1 its mirror), best first, each
    image once at the better of its two cosines; -1 / -inf pad the rows with fewer distinct images."""
    rows = np.where(i >= 0, i // (2 if mirror else 1), -1)
    drop = rows < 0
    for j in range(1, rows.shape[1]):
        drop[:, j] |= (rows[:, j : j + 1] == rows[:, :j]).any(axis=1)
    order = np.argsort(drop, axis=1, kind="stable")  # kept entries first, still best first
    rows, sims = np.where(drop, -1, rows), np.where(drop, -np.inf, s).astype(np.float32)
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(sims, order, axis=1)


def leak_floor(cfg: Any) -> float:
    """The cosine from which a pool image's nearest benchmark images are candidates: ``cfg.threshold``,
    or the lower ``verify_from`` when candidates are verified geometrically."""
    if cfg.verify != "geometric" or cfg.verify_from is None:
        return float(cfg.threshold)
    return float(min(cfg.threshold, cfg.verify_from))


def verified_matches(
    pool: pa.Table, cand: np.ndarray, csim: np.ndarray, meta: pa.Table, eval_sides: np.ndarray,
    small: np.ndarray, cfg: Any, catalog: Catalog | None = None, run_id: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str], dict[str, int]]:  # fmt: skip
    """``(leak [P] bool, best [P], cosine [P], notes {row: ", N inliers"}, {"checked", "vetoed"})`` of the
    pool rows that are not ``small``, from their nearest benchmark images ``cand`` / ``csim``
    (:func:`nearest_distinct`).

    Without geometric verification a row leaks when its nearest benchmark image is at ``cfg.threshold``.
    With ``cfg.verify == "geometric"``: a nearest image at or above ``verify_below`` decides alone; under
    it, the candidates from :func:`leak_floor` up are tried best first, and the first that matches
    geometrically (``curation.geometric.verify_uri_pairs``, the benchmark image also mirrored) is the
    leak. A candidate that cannot be verified (either image's shorter side under ``verify_min_side``,
    ``eval_sides`` [B] giving the benchmark's, or an image that cannot be read now) counts at
    ``cfg.threshold``. With a ``catalog``, matches are stored and reused there."""
    from curation.geometric import verify_uri_pairs

    n, k = cand.shape
    best, sim = np.full(n, -1, np.int64), np.full(n, -np.inf, np.float32)
    notes, counts = dict[int, str](), {"checked": 0, "vetoed": 0}
    if k == 0:
        return np.zeros(n, dtype=bool), best, sim, notes, counts
    best[:], sim[:] = cand[:, 0], csim[:, 0]
    leak = ~small & (best >= 0) & (sim >= cfg.threshold)
    if cfg.verify != "geometric":
        return leak, best, sim, notes, counts
    sure = ~small & (best >= 0) & (sim >= cfg.verify_below)
    leak = sure.copy()
    open_rows = ~small & ~sure
    pool_big = ~_small_rows(pool, cfg.verify_min_side)
    floor = leak_floor(cfg)
    pool_uris, pool_ids = pool.column("uri").to_pylist(), pool.column("image_id").to_pylist()
    eval_uris, eval_ids = meta.column("uri").to_pylist(), meta.column("image_id").to_pylist()
    for j in range(k):  # round j: the j-th nearest image of every row not decided yet
        c, s = cand[:, j], csim[:, j]
        live = open_rows & (c >= 0) & (s >= floor)
        if not live.any():
            break
        big = pool_big & (eval_sides[np.maximum(c, 0)] >= cfg.verify_min_side)
        by_cosine = np.flatnonzero(live & ~big & (s >= cfg.threshold))
        rows = np.flatnonzero(live & big)
        ok = np.zeros(rows.size, dtype=bool)
        if rows.size:
            ids = [(pool_ids[r], eval_ids[c[r]]) for r in rows]
            ok, matches = verify_uri_pairs(
                [(pool_uris[r], eval_uris[c[r]]) for r in rows], cfg.min_inliers, cfg.min_spread,
                ids=ids if all(a and b for a, b in ids) else None, catalog=catalog, run_id=run_id,
            )  # fmt: skip
            unreadable = np.array([m is None for m in matches], dtype=bool)
            counts["checked"] += int((~unreadable).sum())
            counts["vetoed"] += int((~ok & ~unreadable).sum())
            ok |= unreadable & (s[rows] >= cfg.threshold)  # an unreadable image: the cosine decides
            for r, match, good in zip(rows, matches, ok, strict=True):
                if good and match is not None:
                    notes[int(r)] = f", {match.inliers} inliers" + (" (mirrored)" if match.mirrored else "")
        found = np.concatenate([by_cosine, rows[ok]]).astype(np.int64)
        leak[found], best[found], sim[found] = True, c[found], s[found]
        open_rows[found] = False
    return leak, best, sim, notes, counts


def _decide(
    pool: pa.Table, leak: np.ndarray, best: np.ndarray, sim: np.ndarray, meta: pa.Table, small: np.ndarray,
    notes: dict[int, str] | None = None,
) -> pa.Table:  # fmt: skip
    """New decided columns of the pool rows: ``leak`` rows rejected against benchmark row ``best`` at
    ``sim`` (an aligned correlation for ``small`` rows, else a cosine), stale leaks back to accepted;
    ``notes`` end the detail of geometrically verified rows."""
    notes = notes or {}
    out: dict[str, list] = {n: [] for n in DECIDED}
    names, uris, ids, labels = (meta.column(c).to_pylist() for c in ("name", "uri", "image_id", "label"))
    for r, row in enumerate(pool.select(DECIDED).to_pylist()):
        if leak[r]:
            b = int(best[r])
            short = f"{labels[b]}/{os.path.basename(uris[b].split('#')[-1])}" if labels[b] else uris[b]
            measure = "aligned correlation" if small[r] else "cosine"
            row = {"uri": row["uri"], "status": Status.REJECTED.value, "reason": LEAK, "dup_of": ids[b],
                   "dup_of_uri": uris[b], "detail": f"{names[b]}: {short}, {measure} {sim[r]:.4f}{notes.get(r, '')}"}  # fmt: skip
        elif row["reason"] == LEAK:
            row = {"uri": row["uri"], "status": Status.ACCEPTED.value, "reason": None, "dup_of": None,
                   "dup_of_uri": None, "detail": None}  # fmt: skip
        for n in DECIDED:
            out[n].append(row[n])
    return pa.table({n: pa.array(v, pa.string()) for n, v in out.items()})


def apply_leak_removal(
    catalog: Catalog, descriptor: Any, eval_sets: dict[str, str], cfg: Any, run_id: str, embed_cfg: Any,
    mirror: bool = True, max_examples: int = 48,
) -> dict[str, Any]:  # fmt: skip
    """Reject pool images that copy benchmark images (module docstring); write only changed rows.

    ``cfg``: ``LeakConfig`` (threshold, k); ``embed_cfg``: ``EmbedConfig`` (batch size, device,
    precision). Returns counts per benchmark (``eval_images``, ``leaks``), the pool size, rows without
    a vector, changed rows, the images version, seconds and up to ``max_examples`` example pairs."""
    start = time.perf_counter()
    listed = list_eval_sets(eval_sets)  # every path checked before any work
    if catalog.version("images") is None or not listed:
        return {"benchmarks": {}, "changed": 0, "images_version": catalog.version("images")}
    meta = pa.concat_tables(
        [t.append_column("name", pa.array([n] * t.num_rows, pa.string())) for n, t in listed.items()]
    )
    sides: list[int] = []
    base = embed_uris(descriptor, meta.column("uri").to_pylist(), embed_cfg, mirror, sides=sides)
    pool, vectors, missing = _pool(catalog, descriptor.model_id, list(listed))
    cand = np.full((pool.num_rows, 0), -1, np.int64)
    csim = np.full((pool.num_rows, 0), -np.inf, np.float32)
    if pool.num_rows:
        s, i = search(base, vectors, cfg.k, Search(exact_max=max(200_000, len(base))))
        cand, csim = nearest_distinct(s, i, mirror)
    small, small_best, small_score = small_image_matches(pool, meta, cfg)
    leak, best, sim, notes, checked = verified_matches(
        pool, cand, csim, meta, np.array(sides, np.int64), small, cfg, catalog, run_id
    )
    leak |= small & (small_best >= 0) & (small_score >= cfg.small_threshold)
    best, sim = np.where(small, small_best, best), np.where(small, small_score, sim)
    new = _decide(pool, leak, best, sim, meta, small, notes)
    changed = decided_changed(pool.select(DECIDED), new)
    version = catalog.version("images")
    if changed.any():
        version = commit_decisions(catalog, new.filter(pa.array(changed)), run_id)
    is_leak = np.asarray(pc.equal(new.column("reason"), LEAK).fill_null(False))
    leak_names = meta.column("name").take(pa.array(best[is_leak])).to_pylist() if is_leak.any() else []
    per = {n: {"eval_images": t.num_rows, "leaks": leak_names.count(n)} for n, t in listed.items()}
    return {
        "benchmarks": per, "threshold": cfg.threshold, "model_id": descriptor.model_id, "mirror": mirror,
        "small_images": int(small.sum()), "small_threshold": cfg.small_threshold,
        "verify": cfg.verify, "verify_from": leak_floor(cfg), "geometric_checked": checked["checked"], "geometric_vetoed": checked["vetoed"],
        "pool": pool.num_rows, "missing_vectors": missing, "leaks": int(is_leak.sum()),
        "changed": int(changed.sum()), "images_version": version,
        "seconds": round(time.perf_counter() - start, 3),
        "examples": _examples(pool, new, sim, is_leak, max_examples),
    }  # fmt: skip


def _examples(pool: pa.Table, new: pa.Table, sim: np.ndarray, is_leak: np.ndarray, limit: int) -> list[dict]:
    """Up to ``limit`` leaks (pool uri, eval uri, detail, cosine), spread evenly over the cosines."""
    rows = np.flatnonzero(is_leak)
    if rows.size == 0 or limit <= 0:
        return []
    rows = rows[np.argsort(sim[rows], kind="stable")]
    rows = rows[np.unique(np.linspace(0, len(rows) - 1, min(limit, len(rows))).round().astype(int))]
    return [{"uri": new.column("uri")[int(r)].as_py(), "eval_uri": new.column("dup_of_uri")[int(r)].as_py(),
             "detail": new.column("detail")[int(r)].as_py(), "cosine": round(float(sim[r]), 4)} for r in rows]  # fmt: skip
