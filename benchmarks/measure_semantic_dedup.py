"""Semantic dedup, leak removal and pHash confirmation, measured on generated edits and CIFAR-10.

1. **Edits** (raw photos, ``evaluation.copy_detection``'s fixed calibration / held-out split): every
   photo, its 12 planted copies (``EDITS``) and ``--views`` strongly edited SSCD views
   (``pretrain.edits.CopyEditAugmentation``, seeded per photo, saved as JPEG q 90). The dedup threshold
   is the cosine of highest recall at pair precision >= 0.99 on calibration; held-out is scored at it
   (pairs, and the dedup stage itself: ``curation.neardup`` pairs + components + keeper), beside pHash
   at radius 6 and what the embedding finds that pHash misses. The leak threshold is calibrated the
   same way on (copy, original) scores with the originals also embedded mirrored (``curation.leaks``).
2. **pHash confirmation**: pHash links at radius 6 between different files, true (same photo) or
   false, before and after confirmation by the copy descriptor at the dedup threshold, on small images
   (CIFAR-10 train photos, 32 x 32, and their edits) and large ones (the held-out pool above); and on
   all of CIFAR-10 train (images linked, pairs across classes).
3. **CIFAR-10 leaks**: every test image against every train image (test images also mirrored): the
   fraction of test images with a train image at cosine >= the leak threshold, and how often the two
   share a class (Barz & Denzler 2020 found near-duplicates in train for 3.3% of test images).

    nice -n 10 .venv/bin/python -m benchmarks.measure_semantic_dedup [--descriptor PATH] [--photos N] [--cifar-train N]

Default descriptor: ``assets/copy-descriptor`` when shipped, else the bootstrap backbone's class token.
CIFAR images are embedded at ``--cifar-size`` (default 32: their own size). Writes
``benchmarks/results/semantic_dedup.{md,json}``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import machine, write_result
from benchmarks.copy_detection_parts import Pool, evaluate, phash_scores
from benchmarks.measure_phash_radius import shared_data_dir
from benchmarks.semantic_dedup_parts import (
    Verifier,
    knn_pairs,
    leak_rule_lines,
    leak_scores,
    leak_section,
    verify_grid,
)
from curation.binary_index import distinct_near_pairs, hex_to_uint64
from curation.config import IngestConfig, SemanticDedupConfig
from curation.decode import decode_record
from curation.embed import embed_arrays
from curation.neardup import candidate_floor, group_pairs, near_duplicate_pairs
from curation.phash_confirm import candidate_row_pairs, cosine_pairs
from curation.vector_search import Search, search
from data_catalog.image import open_image
from evaluation.copy_detection import (
    PoolItem,
    copy_bytes,
    generated_pool,
    operating_point,
    split_photos,
)
from pretrain.edits import CopyEditAugmentation, to_pil
from pretrain.models.descriptors import Descriptor, load_descriptor

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIRM_AT = (0.5, 0.6, 0.7, 0.8, 0.9)
SMALL_EDITS = ("exact", "jpeg_q50", "brightness_+30", "resize_50", "grayscale", "hflip", "crop_85", "blur")


def default_descriptor() -> Path:
    shipped = REPO / "assets" / "copy-descriptor"
    return shipped if shipped.exists() else REPO / "assets" / "bootstrap-backbone"


def _jpeg(img: Any, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def with_views(items: list[PoolItem], views: int, seed: int = 0) -> list[PoolItem]:
    """``items`` plus ``views`` SSCD-style edited views of every original (edit ``sscd_view``)."""
    aug = CopyEditAugmentation(size=160, views=max(views, 1))
    out = list(items)
    for n, it in enumerate(x for x in items if x.edit == "original"):
        if views < 1:
            break
        g = torch.Generator().manual_seed(seed * 100_003 + n)
        for v, t in enumerate(aug.edit_views(open_image(it.data), g)):
            pil = to_pil((t * 255).round().to(torch.uint8))
            out.append(PoolItem(f"{it.key}#view{v}", it.source, "sscd_view", _jpeg(pil)))
    return out


def embed(desc: Descriptor, imgs: list, mirror: bool = False) -> np.ndarray:
    flip = Image.Transpose.FLIP_LEFT_RIGHT
    return embed_arrays(desc, [im.transpose(flip) if mirror else im for im in imgs], 128, "cpu")


def dedup_stage(pool: Pool, v: np.ndarray, threshold: float) -> dict[str, Any]:
    """The stage's own outcome on a pool: images removed, copies removed, false merges."""
    i, j, _ = near_duplicate_pairs(v, threshold, 16, Search())
    sizes = np.array([open_image(it.data).size for it in pool.items])
    nbytes = np.array([len(it.data) for it in pool.items])
    g = group_pairs(
        v, i, j, sizes[:, 0] * sizes[:, 1], nbytes, np.array([it.key for it in pool.items], dtype=object)
    )
    src = np.array([it.source for it in pool.items])
    dup = g.is_duplicate
    kept_per_source = {s: int((~dup & (src == s)).sum()) for s in set(src)}
    return {
        "images": len(pool.items), "removed": int(dup.sum()),
        "removed_wrongly": int((dup & (src != src[g.keeper])).sum()),
        "sources_fully_deduplicated": float(np.mean([c == 1 for c in kept_per_source.values()])),
        "sources_lost": int(sum(c == 0 for c in kept_per_source.values())),
    }  # fmt: skip


def edits_section(desc: Descriptor, photos: int | None, views: int, grid: bool = False) -> dict[str, Any]:
    splits = split_photos((shared_data_dir() / "raw-photos" / "images").iterdir())
    out: dict[str, Any] = {}
    for name in ("calibration", "heldout"):
        pool = Pool(with_views(generated_pool(splits[name][:photos]), views), generated=True)
        imgs = [open_image(it.data) for it in pool.items]
        v = embed(desc, imgs)
        vm = embed(
            desc, [im for im, it in zip(imgs, pool.items, strict=True) if it.edit == "original"], mirror=True
        )
        out[name] = {"pool": pool, "v": v, "score": (v @ v.T)[pool.i, pool.j], "leak": leak_scores(pool, v, vm),
                     "phash": phash_scores(pool)}  # fmt: skip
    cal, held = out["calibration"], out["heldout"]
    t = operating_point(cal["score"], cal["pool"].positive, 0.99).threshold
    rows: dict[str, Any] = {"threshold": t}
    for tag in ("calibration", "heldout"):
        p = out[tag]
        sem = p["score"] >= t
        ph = p["phash"] >= 64 - 6
        rows[tag] = {"semantic": evaluate(p["pool"], p["score"], sem), "phash_r6": evaluate(p["pool"], p["phash"], ph),
                     "union": evaluate(p["pool"], np.maximum(p["score"], p["phash"] / 64), sem | ph)}  # fmt: skip
        pos = p["pool"].positive
        # the stage's default: pairs among each image's k nearest from verify_from up are candidates, and
        # those under verify_below count only when they match geometrically
        cfg = SemanticDedupConfig(threshold=t)
        floor = candidate_floor(cfg)
        cand = knn_pairs(p["v"], p["pool"], cfg.k) & (p["score"] >= floor)
        found = np.flatnonzero(cand)
        geo = np.zeros_like(sem)
        p["verifier"] = Verifier(p["pool"])
        geo[found] = p["verifier"].keep(p["pool"].i[found], p["pool"].j[found], p["score"][found])
        p["geo"] = geo
        rows[tag]["semantic_geometric"] = evaluate(p["pool"], p["score"], geo)
        rows[tag]["semantic_geometric"]["verified_per_image"] = float(
            (cand & (p["score"] < cfg.verify_below)).sum() / len(p["pool"].items)
        )
        rows[tag]["semantic_geometric"]["verify_from"] = floor
        if grid:
            rows[tag]["verify_grid"] = verify_grid(p["pool"], p["v"], p["score"], t, cfg.k, p["verifier"])
        rows[tag]["found_by_semantic_missed_by_phash"] = int((sem & ~ph & pos).sum())
        rows[tag]["false_among_those"] = int((sem & ~ph & ~pos).sum())
    rows["heldout"]["dedup_stage"] = dedup_stage(held["pool"], held["v"], t)
    rows["heldout"]["_single_edits"] = [e for e in held["pool"].single_edits if e != "sscd_view"]
    for default in (0.75,):
        rows["heldout"][f"semantic_at_{default}"] = evaluate(
            held["pool"], held["score"], held["score"] >= default
        )
    rows["leak"] = leak_section(out)
    rows["_held"] = held  # for the pHash section (not written)
    return rows


def small_phash(data: bytes) -> str | None:
    """The pipeline's pHash (decode_record, ingest thumbnail) without the quality filters."""
    return decode_record("memory://x.jpg", data, 10**9, IngestConfig().thumbnail_size).phash


def read_cifar(name: str, limit: int | None) -> tuple[list[bytes], list[str]]:
    datas, labels = [], []
    with tarfile.open(shared_data_dir() / f"cifar10-{name}.tar.gz", mode="r|gz") as tar:
        for info in tar:
            if info.isfile() and info.name.endswith(".jpg"):
                member = tar.extractfile(info)
                assert member is not None
                datas.append(member.read())
                labels.append(info.name.split("/")[-2])
                if limit and len(datas) >= limit:
                    break
    return datas, labels


def confirm_rows(hexes: list[str | None], ids: list[str], src: np.ndarray, v: np.ndarray, t: float) -> dict:
    """pHash links at radius 6 between different files: true/false, before and after confirmation."""
    values, valid = hex_to_uint64(hexes)
    uniq = np.unique(values[valid])
    codes = np.full(len(hexes), -1, np.int64)
    codes[valid] = np.searchsorted(uniq, values[valid])
    id_codes = np.unique(np.array(ids), return_inverse=True)[1].astype(np.int64)
    a, b = candidate_row_pairs(id_codes, codes, distinct_near_pairs(uniq, 6))
    true = src[a] == src[b]
    cos = cosine_pairs(v, a, b)
    out: dict[str, Any] = {"links": len(a), "true": int(true.sum()), "false": int((~true).sum())}
    for x in sorted({round(t, 4), *CONFIRM_AT}):
        ok = cos >= x
        out[f"{x:.4f}"] = {"true_kept": int((true & ok).sum()), "false_kept": int((~true & ok).sum())}
    return out


def phash_section(desc: Descriptor, small: Descriptor, held: dict, t: float, n_small: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pool = held["pool"]
    out["large (raw photos, held-out)"] = confirm_rows(
        [small_phash(it.data) for it in pool.items], [_sha(it.data) for it in pool.items],
        np.array([it.source for it in pool.items]), held["v"], t)  # fmt: skip
    datas, _ = read_cifar("train", n_small)
    items: list[tuple[str, bytes]] = []
    for n, d in enumerate(datas):
        img = open_image(d)
        items += [(f"c{n}", d)] + [(f"c{n}", copy_bytes(d, img, e)) for e in SMALL_EDITS]
    vs = embed(small, [open_image(d) for _, d in items])
    out["small (CIFAR-10 train photos + edits)"] = confirm_rows(
        [small_phash(d) for _, d in items], [_sha(d) for _, d in items], np.array([s for s, _ in items]), vs, t)  # fmt: skip
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cifar_section(
    small: Descriptor, t_dedup: float, t_leak: float, limit: int | None, test_limit: int | None = None
) -> dict[str, Any]:
    start = time.perf_counter()
    train, train_lab = read_cifar("train", limit)
    test, test_lab = read_cifar("test", test_limit)
    vtr = embed(small, [open_image(d) for d in train])
    test_imgs = [open_image(d) for d in test]
    vte, vtm = embed(small, test_imgs), embed(small, test_imgs, mirror=True)
    s1, i1 = search(vtr, vte, 1, Search())
    s2, i2 = search(vtr, vtm, 1, Search())
    best = np.where(s2[:, 0] > s1[:, 0], i2[:, 0], i1[:, 0])
    sim = np.maximum(s1[:, 0], s2[:, 0])
    same = np.array(train_lab)[best] == np.array(test_lab)
    at = {f"{x:.2f}": {"test_fraction": float((sim >= x).mean()), "same_class": float(same[sim >= x].mean()) if (sim >= x).any() else None}
          for x in sorted({t_leak, 0.9, 0.95, 0.97, 0.98, 0.99})}  # fmt: skip
    # pHash over train: links at radius 6, and after confirmation
    hexes = [small_phash(d) for d in train]
    ids = [_sha(d) for d in train]
    lab = np.array(train_lab)
    values, valid = hex_to_uint64(hexes)
    uniq = np.unique(values[valid])
    codes = np.full(len(hexes), -1, np.int64)
    codes[valid] = np.searchsorted(uniq, values[valid])
    a, b = candidate_row_pairs(
        np.unique(np.array(ids), return_inverse=True)[1].astype(np.int64), codes, distinct_near_pairs(uniq, 6)
    )
    cos = cosine_pairs(vtr, a, b)
    phash: dict[str, Any] = {"pairs": len(a), "images_linked": len(set(a.tolist()) | set(b.tolist())),
                             "cross_class": int((lab[a] != lab[b]).sum())}  # fmt: skip
    for x in sorted({round(t_dedup, 4), *CONFIRM_AT}):
        ok = cos >= x
        phash[f"{x:.4f}"] = {"pairs": int(ok.sum()), "images_linked": len(set(a[ok].tolist()) | set(b[ok].tolist())),
                             "cross_class": int((lab[a[ok]] != lab[b[ok]]).sum())}  # fmt: skip
    phash["_cos"], phash["_same"] = cos, lab[a] == lab[b]
    return {"train": len(train), "test": len(test), "leaks": at, "phash_train": phash,
            "seconds": round(time.perf_counter() - start, 1), "sims": sim, "same": same}  # fmt: skip


def _pr(r: dict) -> str:
    return f"{r['precision']:.4f} | {r['recall']:.3f}"


def grid_lines(cal: dict[str, Any], held: dict[str, Any]) -> list[str]:
    """The report's verification-grid table (empty without ``--grid``)."""
    if "verify_grid" not in cal:
        return []
    lines = ["", "Geometric verification grid (choose on calibration; held-out never tuned on): pairs among the "
          f"{SemanticDedupConfig().k} nearest from the floor up, those under 0.99 linked when they match:", "",
          "| floor | min inliers | min spread | verified per image | calibration P | calibration R | held-out P | "
          "held-out R | held-out easy | held-out hard |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for c, h in zip(cal["verify_grid"], held["verify_grid"], strict=True):
        lines.append(f"| {c['floor']:.4g} | {c['min_inliers']} | {c['min_spread']} | {c['verified_per_image']:.1f} | "
                 f"{c['precision']:.4f} | {c['recall']:.3f} | {h['precision']:.4f} | {h['recall']:.3f} | "
                 f"{h['groups'].get('easy', 0):.3f} | {h['groups'].get('hard', 0):.3f} |")  # fmt: skip
    return lines


def dedup_rows(cal: dict[str, Any], held: dict[str, Any], names: list[str]) -> list[str]:
    """The report's near-duplicate rows: each detector on both pools, recall per edit, the grid."""
    lines: list[str] = []
    for tag, r in (("calibration", cal), ("held-out", held)):
        lines.append(
            f"| {tag} | semantic | {_pr(r['semantic'])} | {r['found_by_semantic_missed_by_phash']} ({r['false_among_those']}) |"
        )
        lines.append(
            f"| {tag} | the stage's default: the {SemanticDedupConfig().k} nearest from cosine {r['semantic_geometric']['verify_from']:.2f}, "
            f"verified geometrically under 0.99 ({r['semantic_geometric']['verified_per_image']:.1f} pairs verified per image) | {_pr(r['semantic_geometric'])} | |"
        )
        lines.append(f"| {tag} | pHash radius 6 | {_pr(r['phash_r6'])} | |")
        lines.append(f"| {tag} | semantic or pHash | {_pr(r['union'])} | |")
    d = held["semantic_at_0.75"]
    lines += [f"| held-out | semantic at cosine 0.75 (the config default before calibration) | {_pr(d)} | |", "",
              "Recall per edit (held-out, a copy against its original):", "",
              "| detector | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]  # fmt: skip
    for label, key in (
        ("semantic", "semantic"),
        ("semantic + geometric", "semantic_geometric"),
        ("pHash r6", "phash_r6"),
        ("semantic or pHash", "union"),
    ):
        lines.append(f"| {label} | " + " | ".join(f"{held[key]['edits'][n]:.3f}" for n in names) + " |")
    lines += grid_lines(cal, held)
    return lines


def report(
    desc_label: str, ed: dict, ph: dict, cf: dict | None, args: argparse.Namespace, secs: float
) -> str:
    held, cal = ed["heldout"], ed["calibration"]
    names = [*held["_single_edits"], *(["sscd_view"] if "sscd_view" in held["semantic"]["edits"] else [])]
    lines = [
        "# Semantic dedup, leak removal and pHash confirmation", "",
        f"Descriptor: {desc_label}. Machine: {machine()}; {secs / 60:.1f} min.",
        "Command: `nice -n 10 .venv/bin/python -m benchmarks.measure_semantic_dedup" + "".join(f" {a}" for a in args.argv) + "`",
        "",
        f"## Near-duplicate threshold (pairs, P >= 0.99 on calibration): cosine {ed['threshold']:.4f}", "",
        "| pool | detector | precision | recall (all positive pairs) | found by it, missed by pHash (false) |", "|---|---|---:|---:|---:|",
    ]  # fmt: skip
    lines += dedup_rows(cal, held, names)
    st = held["dedup_stage"]
    lines += ["", f"The dedup stage on the held-out pool ({st['images']} images, `near_duplicate_pairs` k = 16 + components + "
              f"keeper): {st['removed']} removed, {st['removed_wrongly']} of them grouped with another photo; "
              f"{st['sources_fully_deduplicated']:.3f} of the photos end with exactly one kept image, {st['sources_lost']} lose every image.", ""]  # fmt: skip
    lk = ed["leak"]
    lines += [f"## Leak threshold (copy vs benchmark image, P >= 0.99 on calibration): cosine {lk['threshold']:.4f}", "",
              "| pool | benchmark images | precision | recall | " + " | ".join(lk["heldout_mirror"]["edits"]) + " |",
              "|---|---|---:|---:|" + "---:|" * len(lk["heldout_mirror"]["edits"])]  # fmt: skip
    for key in (
        "calibration_mirror",
        "heldout_mirror",
        "heldout_no_mirror",
        "calibration_mirror_geometric",
        "heldout_mirror_geometric",
    ):
        r = lk[key]
        r["edits"] = {e: x for e, x in r["edits"].items() if e in lk["heldout_mirror"]["edits"]}
        how = (
            "as they are"
            if "no_mirror" in key
            else "with mirrors"
            + (", geometric verification under 0.99 (default)" if "geometric" in key else "")
        )
        lines.append(f"| {key.split('_')[0]} | {how} | {r['precision']:.4f} | {r['recall']:.3f} | "
                     + " | ".join(f"{x:.3f}" for x in r["edits"].values()) + " |")  # fmt: skip
    lines += leak_rule_lines(lk)
    lines += ["", "## pHash links (radius 6) between different files, confirmed by the copy descriptor", "",
              "| images | links | true | false | cosine >= | true kept | false kept |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in ph.items():
        for x, k in ((x, k) for x, k in r.items() if isinstance(k, dict)):
            lines.append(
                f"| {name} | {r['links']} | {r['true']} | {r['false']} | {x} | {k['true_kept']} | {k['false_kept']} |"
            )
    if cf is not None:
        p = cf["phash_train"]
        lines += ["", f"CIFAR-10 train ({cf['train']:,} images): pHash radius 6 links {p['images_linked']} images in {p['pairs']} pairs, "
                  f"{p['cross_class']} across classes. Confirmed by the descriptor:", "",
                  "| cosine >= | pairs | images linked | pairs across classes |", "|---:|---:|---:|---:|"]  # fmt: skip
        lines += [
            f"| {x} | {r['pairs']} | {r['images_linked']} | {r['cross_class']} |"
            for x, r in p.items()
            if isinstance(r, dict)
        ]
        lines += ["",
                  f"## CIFAR-10 test images with a copy in train ({cf['test']:,} test, {cf['train']:,} train; Barz & Denzler 2020: 3.3%)", "",
                  "| cosine >= | test images | fraction | same class as the match |", "|---:|---:|---:|---:|"]  # fmt: skip
        for x, r in cf["leaks"].items():
            same = "" if r["same_class"] is None else f"{r['same_class']:.3f}"
            lines.append(
                f"| {x} | {round(r['test_fraction'] * cf['test'])} | {r['test_fraction']:.4f} | {same} |"
            )
    return "\n".join(lines) + "\n"


def _strip(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if not k.startswith("_") and k not in ("sims", "same")}
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--descriptor", default=str(default_descriptor()))
    p.add_argument("--photos", type=int, default=None, help="photos per split (default: all)")
    p.add_argument("--views", type=int, default=1, help="SSCD-style views per photo")
    p.add_argument("--small", type=int, default=500, help="CIFAR train photos edited for the pHash section")
    p.add_argument("--cifar-train", type=int, default=None, help="CIFAR train images (default: all 50,000)")
    p.add_argument("--cifar-test", type=int, default=None, help="CIFAR test images (default: all 10,000)")
    p.add_argument("--cifar-size", type=int, default=32, help="descriptor input size for CIFAR images")
    p.add_argument("--no-cifar", action="store_true")
    p.add_argument(
        "--grid", action="store_true", help="also the verification grid (floors x inliers x spread)"
    )
    p.add_argument("--out", default="semantic_dedup")
    args = p.parse_args()
    import sys

    args.argv = sys.argv[1:]
    start = time.perf_counter()
    desc = load_descriptor(args.descriptor)
    small = (
        load_descriptor(args.descriptor, input_size=args.cifar_size) if desc.kind != "dinoflow-sscd" else desc
    )
    label = f"`{desc.model_id}`" + (
        " (the bootstrap backbone's class token: no copy descriptor shipped yet)"
        if desc.kind == "dinoflow-backbone"
        else ""
    )
    ed = edits_section(desc, args.photos, args.views, args.grid)
    print(json.dumps(_strip(ed), default=float)[:2000], flush=True)
    ph = phash_section(desc, small, ed["_held"], ed["threshold"], args.small)
    print(json.dumps(ph), flush=True)
    cf = (
        None
        if args.no_cifar
        else cifar_section(small, ed["threshold"], ed["leak"]["threshold"], args.cifar_train, args.cifar_test)
    )
    doc = {"descriptor": desc.model_id, "cifar_descriptor": small.model_id, "edits": _strip(ed), "phash": ph,
           "cifar": _strip(cf) if cf else None, "machine": machine()}  # fmt: skip
    (RESULTS / f"{args.out}.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    write_result(RESULTS / f"{args.out}.md", report(label, ed, ph, cf, args, time.perf_counter() - start))


if __name__ == "__main__":
    main()
