"""Shared fixtures: the real image data in ../shared/data (skips with a clear message if absent)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the Prefect flow tests last.

    A flow run leaves process-wide state behind in the pytest process (Prefect's and Dask's
    background threads); a DataLoader worker forked from it afterwards exits with code 1 at
    shutdown. Training itself always runs in its own torchrun process, so only the in-process
    loader tests are exposed: they run before any flow.
    """
    items.sort(key=lambda item: item.get_closest_marker("prefect") is not None)


def shared_data_dir() -> Path:
    """``$DINOFLOW_SHARED_DATA`` or ``../shared/data`` next to the repository."""
    return Path(os.environ.get("DINOFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(
            f"real test images not found at {path}: set DINOFLOW_SHARED_DATA to the shared/data folder "
            "(CI always has it)"
        )
    return path


def _extract(archive: Path, dest: Path) -> Path:
    marker = dest / ".extracted"
    if not marker.exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        marker.touch()
    return dest


@pytest.fixture(scope="session")
def imagenette_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Imagenette subset (2,000 JPEGs, 10 class folders), extracted once per session."""
    root = _extract(shared_data / "imagenette-train-subset.tar.gz", tmp_path_factory.mktemp("imagenette"))
    return root / "imagenette-train-subset"


@pytest.fixture(scope="session")
def cifar10_test_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 test split as ImageFolder (``test/<class>/NNNN.jpg``), extracted once per session."""
    root = _extract(shared_data / "cifar10-test.tar.gz", tmp_path_factory.mktemp("cifar10-test"))
    return root / "test"


@pytest.fixture(scope="session")
def raw_photos(shared_data: Path) -> Path:
    return shared_data / "raw-photos" / "images"


@pytest.fixture(scope="session")
def imagededup_testdata(shared_data: Path) -> Path:
    return shared_data / "imagededup-testdata"


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real Prefect ephemeral API on a temporary database, with results and home in tmp.

    Module-scoped: the server and Prefect's background threads stop when the flow module ends, so
    later tests that fork (DataLoader workers) do not fork a process full of live threads.

    prefect_test_harness isolates the database but not result storage, so that is pointed at a
    temporary folder too. The ephemeral API takes 10-20 s to start on a fresh home.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "results"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
