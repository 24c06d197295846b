"""Curation on an existing Dask cluster (``--dask-address``): a real ``dask scheduler`` and two
``dask worker`` processes on 127.0.0.1 run the ingest partitions and the embedding chunks of the
curate flow, and the catalog is the same as an in-process run's: the same rows, statuses, reasons,
duplicate links and vectors. A worker SIGKILLed while it holds ingest partitions, and another while
it holds embedding chunks, changes nothing: the scheduler hands their tasks to the other worker (the
nanny restarts the killed one), staged partitions are written atomically, and the catalog is the
in-process run's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from data_catalog.catalog import Catalog
from data_catalog.embeddings import model_counts, read_embeddings
from data_catalog.images import read_images

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

DASK = str(Path(sys.executable).with_name("dask"))
COLUMNS = ["image_id", "uri", "status", "reason", "dup_of"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(procs: list[subprocess.Popen[bytes]]) -> list[psutil.Process]:
    """SIGTERM each (workers before the scheduler), wait; returns what is still alive afterwards
    among them and the processes they had started (nannies' worker processes)."""
    tree = []
    for proc in procs:
        try:
            tree += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _, alive = psutil.wait_procs(tree, timeout=10)
    return alive


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dask scheduler`` + two ``dask worker`` (one thread each), stopped afterwards with nothing left."""
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning"}
    workdir = tmp_path_factory.mktemp("dask")
    port = address.rsplit(":", 1)[1]
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"], env=env, cwd=workdir
        )
    ]
    for i in range(2):
        worker = [DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"]
        procs.append(subprocess.Popen([*worker, "--local-directory", str(workdir / f"w{i}")], env=env))
    try:
        with Client(address, timeout=120) as client:
            client.wait_for_workers(2, timeout=180)
        yield address
    finally:
        leftovers = stop(procs[::-1])
    assert not leftovers, f"processes left after stopping the cluster: {leftovers}"


@pytest.fixture(scope="module")
def in_process(
    prefect_harness: None, imagededup_testdata: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """The reference: the same curation without a cluster (its catalog and the flow's result)."""
    catalog = tmp_path_factory.mktemp("in-process") / "catalog"
    return catalog, curate_on("sync", imagededup_testdata, catalog)


def curate_on(address: str, source: Path, catalog: Path) -> dict[str, Any]:
    from flows.config import PipelineConfig
    from flows.curate import curate

    cfg = PipelineConfig.model_validate(
        {
            "catalog": str(catalog),
            "source": str(source),
            "dask_address": address,
            # several partitions and embedding chunks: work for both workers
            "curate": {"ingest": {"partition_size": 8}, "embed": {"partition_size": 8}},
            "dataset": {"enabled": False},
        }
    )
    return curate(cfg)


def images(catalog: Path) -> list[tuple[Any, ...]]:
    table = read_images(Catalog(str(catalog))).select(COLUMNS)
    return sorted(zip(*(table.column(c).to_pylist() for c in COLUMNS), strict=True))


def scheduler_task_prefixes(address: str) -> set[str]:
    from distributed import Client

    with Client(address, timeout=60) as client:
        return set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))


def same_catalogs(remote: dict[str, Any], on_cluster: Path, reference: tuple[Path, dict[str, Any]]) -> None:
    in_process, local = reference
    rows = images(on_cluster)
    assert rows == images(in_process)
    assert remote["counts"] == local["counts"]
    on, off = Catalog(str(on_cluster)), Catalog(str(in_process))
    assert model_counts(on) == model_counts(off)
    for model_id in model_counts(on):
        ids_on, vectors_on = read_embeddings(on, model_id)
        ids_off, vectors_off = read_embeddings(off, model_id)
        assert list(ids_on) == list(ids_off)
        np.testing.assert_allclose(vectors_on, vectors_off, atol=2e-3)  # float16 storage


def test_curate_on_a_dask_cluster_gives_the_local_catalog(
    prefect_harness: None,
    dask_cluster: str,
    in_process: tuple[Path, dict[str, Any]],
    imagededup_testdata: Path,
    tmp_path: Path,
) -> None:
    remote = curate_on(dask_cluster, imagededup_testdata, tmp_path / "on-cluster")
    local = in_process[1]

    # the work ran on the cluster: its scheduler saw the ingest and embedding tasks
    prefixes = scheduler_task_prefixes(dask_cluster)
    assert {"stage_partition", "dask_task"} <= prefixes, prefixes  # key prefixes: no leading _
    assert remote["new_partitions"] == local["new_partitions"] >= 4
    for role in ("semantic", "copy"):
        assert remote["embed"][role]["device"] == f"dask {dask_cluster}"

    same_catalogs(remote, tmp_path / "on-cluster", in_process)
    rows = images(in_process[0])
    assert len(rows) == sum(1 for p in imagededup_testdata.rglob("*") if p.is_file())
    assert {r[2] for r in rows} >= {"accepted", "duplicate", "rejected"}  # the pool exercises all three


class WorkerKiller(threading.Thread):
    """SIGKILLs the worker process that holds a task of each prefix in turn (``kill -9`` of a Dask
    worker mid-task), waiting for the nanny's replacement to join before the next."""

    def __init__(self, address: str, prefixes: list[str]) -> None:
        super().__init__(daemon=True)
        self.address, self.prefixes = address, prefixes
        self.killed: list[tuple[str, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        from dask.utils import key_split
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            for prefix in self.prefixes:
                while not self.done.is_set():
                    busy = [
                        w
                        for w, keys in client.processing().items()
                        if any(key_split(k) == prefix for k in keys)
                    ]
                    if busy:
                        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append((prefix, pid))
                        deadline = time.monotonic() + 120
                        while len(client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
                            time.sleep(0.2)  # the nanny restarts it
                        break
                    time.sleep(0.05)


def test_a_dask_worker_killed_mid_ingest_and_mid_embedding_changes_nothing(
    prefect_harness: None,
    dask_cluster: str,
    in_process: tuple[Path, dict[str, Any]],
    imagededup_testdata: Path,
    tmp_path: Path,
) -> None:
    killer = WorkerKiller(dask_cluster, ["stage_partition", "dask_task"])
    killer.start()
    try:
        remote = curate_on(dask_cluster, imagededup_testdata, tmp_path / "on-cluster")
    finally:
        killer.done.set()
        killer.join(timeout=60)
    assert [prefix for prefix, _ in killer.killed] == ["stage_partition", "dask_task"], killer.killed
    for _, pid in killer.killed:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    same_catalogs(remote, tmp_path / "on-cluster", in_process)
