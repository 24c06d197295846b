"""The CLI's console tells the pipeline's story: Dask's own logs (``distributed.*``: scheduler,
nannies, comms) stay at WARNING unless ``dinoflow --verbose``. Before, a small ``dinoflow curate``
printed 33 INFO lines of theirs between the stages' own (Prefect's console handler on the root
logger received them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DASK_INFO = re.compile(r"INFO\s.*\bdistributed\.|distributed\.\S+ - INFO")

LEVELS = textwrap.dedent(
    """
    import logging, sys
    from curation.parallel import set_dask_log_level
    set_dask_log_level(sys.argv[1])          # before distributed is imported: through dask config
    import distributed
    first = logging.getLogger("distributed.scheduler").getEffectiveLevel()
    set_dask_log_level(sys.argv[2])          # after: on the logger itself
    print(first, logging.getLogger("distributed.nanny").getEffectiveLevel())
    """
)


def test_set_dask_log_level_before_and_after_distributed_is_imported() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    for before, after, expected in (("warning", "info", "30 20"), ("info", "warning", "20 30")):
        done = subprocess.run(
            [sys.executable, "-c", LEVELS, before, after], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == expected.split()


def _curate(tmp_path: Path, photos: Path, *flags: str) -> str:
    source = tmp_path / "photos"
    source.mkdir()
    for photo in sorted(photos.iterdir())[:6]:
        shutil.copy(photo, source / photo.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
    )
    args = [*flags, "curate", "--source", str(source), "--catalog", str(tmp_path / "catalog")]
    done = subprocess.run(
        [sys.executable, "-c", "from flows.cli import main; main()", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Task run 'ingest-partition" in output and "accepted" in output  # the pipeline's own story
    return output


@pytest.mark.prefect
def test_curate_console_has_no_dask_info_lines_by_default(tmp_path: Path, raw_photos: Path) -> None:
    output = _curate(tmp_path, raw_photos)
    assert not [line for line in output.splitlines() if DASK_INFO.search(line)], output


@pytest.mark.prefect
@pytest.mark.slow
def test_verbose_shows_dask_info_lines(tmp_path: Path, raw_photos: Path) -> None:
    output = _curate(tmp_path, raw_photos, "--verbose")
    assert any("distributed.scheduler" in line and "INFO" in line for line in output.splitlines()), output
