"""Prefect artifacts the stages publish: count tables, markdown reports, embedded images."""

from __future__ import annotations

import base64
import io
import re
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


# A markdown artifact the UI opens fast, and under the server's 1.5 MB event limit (a larger artifact
# is stored, but the server refuses the event that announces it: "Refusing to publish event of size").
MAX_PAGE_BYTES = 1_000_000
MIN_IMAGE_SIDE = 160  # never shrunk below this many pixels on the long side
_PNG_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def shrink_png(data: bytes, budget: int) -> bytes:
    """The PNG re-encoded to at most ``budget`` bytes where it can be: first 256 adaptive colours at
    full size (plots have few colours), then smaller by area until it fits or reaches
    ``MIN_IMAGE_SIDE``. Returns ``data`` itself when it already fits or cannot be read."""
    from PIL import Image

    if len(data) <= budget:
        return data
    try:
        opened = Image.open(io.BytesIO(data))
        opened.load()
    except Exception:  # not ours to judge: published as it came
        return data
    img = opened.convert("RGBA" if "A" in opened.getbands() else "RGB")
    best, scale = data, 1.0
    while True:
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        small = img if scale == 1.0 else img.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        small.quantize(256, dither=Image.Dither.NONE).save(buf, format="PNG", compress_level=9)
        if len(buf.getvalue()) < len(best):
            best = buf.getvalue()
        if len(best) <= budget or max(size) <= MIN_IMAGE_SIDE:
            return best
        scale *= max(0.3, min(0.9, 0.9 * (budget / len(buf.getvalue())) ** 0.5))  # bytes ~ area


def fit_page(markdown: str, budget: int = MAX_PAGE_BYTES) -> str:
    """``markdown`` with its inline PNGs shrunk (``shrink_png``) so the page fits ``budget`` bytes: the
    room left by the text is shared among the images, the small ones keep theirs. The files the
    images came from are untouched (reports on disk keep full resolution)."""
    if len(markdown) <= budget:
        return markdown
    images = _PNG_URI.findall(markdown)
    if not images:
        return markdown
    room = max(budget - (len(markdown) - sum(len(b) for b in images)), 0)
    big, share = sorted(images, key=len), 0
    while big:  # water-filling: images under the fair share keep their size
        share = room // len(big)
        if len(big[0]) > share:
            break
        room -= len(big.pop(0))
    limit = share * 3 // 4  # base64 is 4/3 of the bytes

    def replace(match: re.Match[str]) -> str:
        b64 = match.group(1)
        if len(b64) <= share:
            return match.group(0)
        small = shrink_png(base64.b64decode(b64), limit)
        return "data:image/png;base64," + base64.b64encode(small).decode("ascii")

    return _PNG_URI.sub(replace, markdown)


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """A markdown artifact, its inline PNGs fitted to ``MAX_PAGE_BYTES`` (``fit_page``)."""
    create_markdown_artifact(markdown=fit_page(markdown), key=artifact_key(key), description=description)


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
