"""An evaluation as text: the headline table (every protocol beside its baselines), the change
against the previous evaluation, warnings and skipped files, as markdown (the Prefect artifact,
``report.md`` beside the PNGs) and as table rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evaluation.protocols import headline

SUBJECT_ORDER = ("checkpoint", "start_checkpoint", "random_init", "raw_pixels", "copy_descriptor")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def change_rows(written: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table-artifact rows of recorded metrics: value, previous value, delta (points), drop flag."""
    return [
        {
            "subject": r["subject"],
            "protocol": r["protocol"],
            "metric": r["metric"],
            "value": round(100 * r["value"], 2),
            "previous": None if r.get("previous_value") is None else round(100 * r["previous_value"], 2),
            "delta_points": None if r.get("delta") is None else round(100 * r["delta"], 2),
            "dropped": bool(r.get("dropped")),
        }  # fmt: skip
        for r in written
    ]


def metric_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Table-artifact rows straight from a metrics document (no catalog: no previous values)."""
    from evaluation.protocols import flat_metrics

    rows = []
    for subject in SUBJECT_ORDER:
        metrics = doc if subject == "checkpoint" else doc.get(subject)
        if metrics is not None:
            rows += [{"subject": subject, "protocol": p, "metric": m, "value": round(100 * v, 2)}
                     for p, m, v in flat_metrics(metrics)]  # fmt: skip
    return rows


def headline_table(doc: dict[str, Any], drops: set[str] | None = None) -> str:
    """Markdown: one row per protocol, one column per subject; a dropped number marked."""
    subjects = [s for s in SUBJECT_ORDER if s in doc["summary"]]
    lines = ["| protocol | " + " | ".join(subjects) + " |", "|---" * (len(subjects) + 1) + "|"]
    for protocol in ("knn", "linear", "retrieval", "copy_detection"):
        if protocol not in doc["summary"].get("checkpoint", {}):
            continue
        cells = []
        for s in subjects:
            cell = _pct(doc["summary"][s].get(protocol))
            if s == "checkpoint" and drops and protocol in drops:
                cell += " **(drop)**"
            cells.append(cell)
        lines.append(f"| {protocol} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def headline_drops(written: list[dict[str, Any]], doc: dict[str, Any]) -> set[str]:
    """Protocols whose headline metric of the checkpoint dropped against the previous evaluation."""
    heads = headline(doc)
    return {
        r["protocol"] for r in written
        if r["subject"] == "checkpoint" and r.get("dropped") and heads.get(r["protocol"]) == r["value"]
    }  # fmt: skip


def markdown_report(
    doc: dict[str, Any],
    images: dict[str, str],
    image_md: Callable[[str, str], str],
    written: list[dict[str, Any]] | None = None,
) -> str:
    """The whole report: headline table, changes, benchmark facts, then ``image_md(image, alt)`` of
    each picture (a data URI for Prefect, a relative link for ``report.md``)."""
    bench = doc["benchmark"]
    ck = doc["checkpoint"]
    drops = headline_drops(written, doc) if written else set()
    md = [f"# Evaluation of `{ck.get('model_id', ck.get('path'))}` on {bench['name']}\n",
          f"checkpoint `{ck.get('path')}` (sha256 {str(ck.get('sha256'))[:12]}); "
          f"{bench['n_train']:,} train / {bench['n_test']:,} test images, {len(bench['classes'])} classes\n",
          headline_table(doc, drops)]  # fmt: skip
    if "linear" in doc:
        lin = doc["linear"]
        md.append(
            f"\nlinear probe: {lin['features']} features, C = {lin['C']:.3g} (chosen on a train hold-out)\n"
        )
    if written:
        changed = [r for r in written if r["subject"] == "checkpoint" and r.get("previous_value") is not None]
        if changed:
            md.append(
                "\n| change against the previous evaluation | value | previous | delta |\n|---|---|---|---|"
            )
            for r in changed:
                flag = " **drop**" if r["dropped"] else ""
                md.append(f"| {r['protocol']} {r['metric']} | {_pct(r['value'])} | {_pct(r['previous_value'])} | "
                          f"{100 * r['delta']:+.1f} pts{flag} |")  # fmt: skip
            md.append("")
    skipped = bench["skipped"]
    if skipped["train"] or skipped["test"]:
        md.append(
            f"\n**{skipped['train']} train and {skipped['test']} test images could not be decoded** and were skipped.\n"
        )
    for warning in bench["warnings"]:
        md.append(f"\n**warning:** {warning}\n")
    for name, image in images.items():
        md.append(f"\n## {name.replace('_', ' ')}\n\n" + image_md(image, name))
    return "\n".join(md)
