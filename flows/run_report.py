"""The report of a ``curate-and-pretrain`` run: one page of what every stage did, with its pictures.

Written at the end of the flow into the run directory (``CATALOG/runs/<dataset>-<preset>``; without
pretraining, the curation run's folder) as ``report.md`` (relative links to the stages' PNGs) and
``report.html`` (the PNGs embedded: opens in a browser as one file), and published as a Prefect
markdown artifact (PNGs as data URIs when they are small enough for the API). Sections: images per
status and reason, what a demo pool planted against what was found, the dataset version, cluster
sizes before and after rebalancing, duplicate pairs and leaks, the loss curves (main and
high-resolution phases), each evaluation beside its baselines, and the run ids.

Every number comes from the flow's result, the run's ``metrics.jsonl`` and the evaluations'
``metrics.json``; every picture is a PNG a stage already wrote (none is drawn here).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from curation.demo_data import planted_path
from data_catalog.catalog import Catalog
from data_catalog.images import Reason
from flows.artifacts import image_markdown, publish_markdown, table_markdown

REPORT_MD, REPORT_HTML = "report.md", "report.html"
ARTIFACT_IMAGE_MAX_BYTES = 250_000  # larger PNGs are named, not embedded, in the artifact (Prefect
# refuses events above ~1.5 MB; the misclassified grid alone is ~700 KB)
CURATION_PNGS = {  # file in the curation run's folder -> section title
    "cluster-sizes.png": "Cluster sizes before and after rebalancing",
    "sample-grid.png": "Selected images of a few clusters",
    "semantic-dedup-pairs.png": "Duplicate pairs found by copy vectors (copy, kept)",
    "leak-pairs.png": "Evaluation leaks (pool image, evaluation image)",
}
EVAL_PNG_ORDER = ("baselines", "confusion", "per_class", "projection", "patch_pca", "misclassified")
ImageMd = Callable[[Path, str], str]


LEAK = Reason.EVAL_LEAK.value


def planted_rows(planted: dict[str, int], counts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a demo pool planted next to what the catalog found (they match when the pipeline works)."""

    def found(status: str, *reasons: str) -> int:
        rows = [r for r in counts if r["status"] == status and (not reasons or r["reason"] in reasons)]
        return sum(int(r["count"]) for r in rows)

    return [
        {"kind": "exact copies", "planted": planted["exact_copies"],
         "found": found("duplicate", "exact_duplicate")},
        {"kind": "edited near-duplicates", "planted": planted["near_duplicates"],
         "found": found("duplicate", "near_duplicate_phash", "near_duplicate_embedding")},
        {"kind": "broken / unusable files", "planted": planted["broken"],
         "found": found("rejected") - found("rejected", LEAK)},
    ] + ([{"kind": "copies of evaluation images", "planted": planted["eval_leaks"],
           "found": found("rejected", LEAK)}] if "eval_leaks" in planted else [])  # fmt: skip


def curation_dir(catalog: Catalog, result: dict[str, Any]) -> Path | None:
    """The curation run's folder (``CATALOG/runs/curate-<flow run id>``) holding its PNGs, if known."""
    run_id = (result.get("cluster") or {}).get("clustering_id")
    if run_id is None:
        runs = sorted(Path(catalog.uri("runs")).glob("curate-*"), key=lambda p: p.stat().st_mtime)
        return runs[-1] if runs else None
    return Path(catalog.uri("runs", run_id))


def report_dir(catalog: Catalog, result: dict[str, Any]) -> Path:
    if result.get("run_dir"):
        return Path(result["run_dir"])
    return curation_dir(catalog, result) or Path(catalog.uri("runs"))


def _planted(source: str | None, counts: list[dict[str, Any]]) -> str:
    path = planted_path(Path(source)) if source and "://" not in source else None
    if path is None or not path.is_file():
        return ""
    rows = planted_rows(json.loads(path.read_text()), counts)
    return "## Planted vs found\n\n" + table_markdown(rows)


def curation_md(catalog: Catalog, result: dict[str, Any], img: ImageMd) -> str:
    counts = [{**r, "reason": r["reason"] or "-"} for r in result.get("counts", [])]
    md = ["## Images by status and reason\n", table_markdown(counts)]
    cluster = result.get("cluster")
    if cluster:
        keys = ("pool", "selected", "n_clusters", "largest_cluster_before", "largest_cluster_after")
        md += ["## Rebalancing\n", table_markdown([{k: cluster.get(k) for k in keys}])]
    folder = curation_dir(catalog, result)
    for name, title in CURATION_PNGS.items():
        if folder is not None and (folder / name).is_file():
            md.append(f"## {title}\n\n" + img(folder / name, title))
    return "\n".join(md)


def pretrain_md(result: dict[str, Any], img: ImageMd) -> str:
    from pretrain.metrics import METRICS_FILE, read_metrics

    run_dir = Path(result["run_dir"])
    records = [r for r in read_metrics(run_dir / METRICS_FILE) if "loss" in r]
    phases: dict[str, list[int]] = {}
    for r in records:
        phases.setdefault(str(r.get("phase", "main")), []).append(int(r["step"]))
    rows = [
        {"phase": p, "logged steps": len(s), "first step": s[0], "last step": s[-1]}
        for p, s in phases.items()
    ]
    md = [f"## Pretraining `{run_dir.name}`\n", f"steps: {result.get('steps')}, last loss: {result.get('loss')}\n",
          table_markdown(rows)]  # fmt: skip
    if (run_dir / "loss_curves.png").is_file():
        md.append("### Loss curves\n\n" + img(run_dir / "loss_curves.png", "loss curves"))
    return "\n".join(md)


def _eval_png_key(path: Path) -> tuple[int, str]:
    order = EVAL_PNG_ORDER.index(path.stem) if path.stem in EVAL_PNG_ORDER else len(EVAL_PNG_ORDER)
    return order, path.name


def evaluation_md(evaluation: dict[str, Any], img: ImageMd) -> str:
    from evaluation.summary import headline_table

    folder = Path(evaluation["report_dir"])
    doc = json.loads((folder / "metrics.json").read_text())
    bench = doc["benchmark"]
    md = [f"## Evaluation on {bench['name']} (`{evaluation['eval_id']}`)\n",
          f"{bench['n_train']:,} train / {bench['n_test']:,} test images, {len(bench['classes'])} classes; "
          "the checkpoint beside its baselines (the same numbers measured in the same run)\n",
          headline_table(doc)]  # fmt: skip
    pngs = sorted(folder.glob("*.png"), key=_eval_png_key)
    md += [f"### {p.stem.replace('_', ' ')}\n\n" + img(p, p.stem) for p in pngs]
    return "\n".join(md)


def report_markdown(catalog: Catalog, source: str | None, result: dict[str, Any], img: ImageMd) -> str:
    """The whole report; ``img(path, alt)`` renders one picture (a relative link or a data URI)."""
    ids = {"flow run": flow_run.get_id(), "dataset version": result.get("dataset"),
           "images table version": result.get("images_version"),
           "pretraining run": Path(result["run_dir"]).name if result.get("run_dir") else None,
           "evaluations": ", ".join(e["eval_id"] for e in result.get("evaluations", [])) or None}  # fmt: skip
    md = ["# curate-and-pretrain report\n", f"catalog `{catalog.root}`\n",
          table_markdown([{"id": k, "value": v} for k, v in ids.items() if v is not None]),
          _planted(source, result.get("counts", [])), curation_md(catalog, result, img)]  # fmt: skip
    if result.get("run_dir"):
        md.append(pretrain_md(result, img))
    md += [evaluation_md(e, img) for e in result.get("evaluations", [])]
    return "\n".join(part for part in md if part)


def markdown_to_html(md: str, title: str) -> str:
    """The report's markdown (headings, tables, images, paragraphs) as one self-contained page."""
    import markdown

    body = markdown.markdown(md, extensions=["tables"], output_format="html")
    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
    style += "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body>{body}</body></html>\n"  # fmt: skip


def write_report(catalog: Catalog, source: str | None, result: dict[str, Any]) -> tuple[Path, str]:
    """``report.md`` and ``report.html`` in the run's folder; returns the HTML's path and the
    artifact's markdown (pictures up to ``ARTIFACT_IMAGE_MAX_BYTES`` embedded)."""
    out = report_dir(catalog, result)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_MD).write_text(
        report_markdown(catalog, source, result, lambda p, alt: f"![{alt}]({os.path.relpath(p, out)})\n")
    )
    page = report_markdown(catalog, source, result, image_markdown)
    (out / REPORT_HTML).write_text(markdown_to_html(page, f"dinoflow report {out.name}"))
    return out / REPORT_HTML, report_markdown(catalog, source, result, _artifact_image)


def _artifact_image(path: Path, alt: str) -> str:
    if path.stat().st_size <= ARTIFACT_IMAGE_MAX_BYTES:
        return image_markdown(path, alt)
    return f"{alt}: `{path}` (too large to embed here; embedded in report.html)\n"


@task(name="write-report", cache_policy=NO_CACHE)
def report_task(catalog: str, source: str | None, result: dict[str, Any]) -> str | None:
    """The run's report (local catalogs), published as a markdown artifact; returns the HTML's path."""
    cat = Catalog(catalog)
    if not cat.is_local:
        get_run_logger().info("no report file for a remote catalog (%s)", catalog)
        return None
    path, artifact = write_report(cat, source, result)
    publish_markdown(f"report-{path.parent.name}", artifact, f"curate-and-pretrain report ({path})")
    return str(path)


def run_windows(limit: int = 200) -> list[dict[str, Any]]:
    """Flow and task runs of the current Prefect API, oldest first: name (a flow run's is its flow's),
    start and end (epoch seconds); runs without both are left out. For benchmarks of a whole run."""
    from prefect.client.orchestration import get_client

    rows = []
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows(limit=limit)}
        runs: list[Any] = [*client.read_flow_runs(limit=limit), *client.read_task_runs(limit=limit)]
    for run in runs:
        if run.start_time is not None and run.end_time is not None:
            name = run.name if hasattr(run, "task_key") else flows.get(run.flow_id, run.name)
            rows.append({"name": name, "start": run.start_time.timestamp(), "end": run.end_time.timestamp()})
    return sorted(rows, key=lambda r: r["start"])


def artifact_sizes(limit: int = 200) -> list[dict[str, Any]]:
    """Artifacts of the current Prefect API, largest first: key, type and the bytes of their data (what
    the UI loads to show one). For benchmarks of a whole run."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(limit=limit)
    rows = [{"key": a.key or str(a.id), "type": a.type, "bytes": len(str(a.data or ""))} for a in artifacts]
    return sorted(rows, key=lambda r: -r["bytes"])
