"""Prefect artifacts the stages publish: count tables, markdown reports, embedded images."""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path
from typing import IO, Any, cast
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(text: str) -> str:
    """Artifact keys may hold only lowercase letters, numbers and dashes."""
    key = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    return "-".join(part for part in key.split("-") if part)[:100] or "artifact"


def publish_counts(stage: str, rows: list[dict[str, Any]], description: str) -> None:
    """A table artifact with counts per status and reason (one per stage)."""
    table = [{"status": r["status"], "reason": r["reason"] or "", "count": r["count"]} for r in rows]
    table.append({"status": "total", "reason": "", "count": sum(int(r["count"]) for r in rows)})
    create_table_artifact(table=table, key=artifact_key(f"{stage}-counts"), description=description)


def image_markdown(path: Path, alt: str) -> str:
    """Markdown that shows a PNG inline (data URI, so the UI needs no file server) and names its path."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})\n\n`{path}`\n"


def publish_markdown(key: str, markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)


def start_progress(key: str, description: str) -> UUID:
    """A progress artifact at 0 % (shown on the run page); returns its id for ``set_progress``."""
    return cast(UUID, create_progress_artifact(0.0, key=artifact_key(key), description=description))


def set_progress(progress: UUID, percent: float) -> None:
    update_progress_artifact(progress, min(100.0, max(0.0, percent)))


class StageProgress:
    """A stage's progress, shown where the user looks: the Prefect progress artifact (updated when the
    whole percentage changes, at most once per ``MIN_INTERVAL`` seconds, and at the end: each update
    is an API call, and the demo's embed stage took 11 s more under Prefect than without it) and, when
    ``stream`` (stderr) is a
    terminal, a progress bar (done / total, rate, time left). Call it as ``progress(done, total)``;
    ``close()`` (or reaching ``total``) ends the bar."""

    MIN_INTERVAL = 2.0

    def __init__(self, key: str, description: str, unit: str = "", stream: IO[str] | None = None) -> None:
        self.artifact = start_progress(key, description)
        self.percent = -1
        self.updated = -float("inf")
        self.bar: Any = None
        stream = stream if stream is not None else sys.stderr
        if stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = Console(file=stream, force_terminal=True)
            self.bar = Progress(TextColumn(f"{description} {unit}".strip()), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=console, transient=False)  # fmt: skip
            self.task = self.bar.add_task(description, total=None)
            self.bar.start()

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        now = time.monotonic()
        if percent > self.percent and (percent == 100 or now - self.updated >= self.MIN_INTERVAL):
            self.percent, self.updated = percent, now
            set_progress(self.artifact, float(percent))
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)
            if total and done >= total:
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def png_markdown(data: bytes, alt: str, where: str | None = None) -> str:
    """Markdown that shows PNG bytes inline (data URI) and, when given, names where the file is."""
    uri = base64.b64encode(data).decode("ascii")
    return f"![{alt}](data:image/png;base64,{uri})\n\n" + (f"`{where}`\n" if where else "")


def table_markdown(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A markdown table of ``rows`` (``columns`` in order; every key of the first row by default)."""
    if not rows:
        return "_none_\n"
    cols = columns or list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")).replace("|", "\\|") for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
