"""``curation.parallel``: the one Dask dispatch that ingest (``run_tasks``) and the Prefect curate flow
(``dask_session`` + ``run_one``, one task per partition) share: sync mode runs here, address mode on
the given cluster (left running), the default a LocalCluster that is closed afterwards."""

from __future__ import annotations

import os

import pytest

from curation import parallel


@pytest.fixture(scope="module")
def cluster_address():  # type: ignore[no-untyped-def]
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def test_sync_mode_runs_in_this_process_in_order() -> None:
    seen: list[tuple[int, int]] = []
    with parallel.dask_session("sync") as address:
        assert address == "sync" and parallel.run_one(address, os.getpid) == os.getpid()
    out = parallel.run_tasks(
        pow, [(2, i) for i in range(4)], "sync", progress=lambda d, t: seen.append((d, t))
    )
    assert out == [1, 2, 4, 8] and seen == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]


def test_address_mode_runs_on_that_cluster_and_leaves_it_running(cluster_address: str) -> None:
    with parallel.dask_session(cluster_address) as address:
        assert address == cluster_address
        outer = parallel.client_for(address)
        assert parallel.run_one(address, os.getpid) != os.getpid()  # a worker process
        with pytest.raises(ValueError, match="invalid literal"):
            parallel.run_one(address, int, "x")  # a task's exception reaches the caller
        with parallel.dask_session(cluster_address):  # nested: the outer client stays registered
            pass
        assert parallel.client_for(address) is outer
    assert outer.status == "closed" and address not in parallel._CLIENTS
    seen: list[tuple[int, int]] = []
    out = parallel.run_tasks(
        pow, [(2, i) for i in range(6)], cluster_address, progress=lambda d, t: seen.append((d, t))
    )
    assert out == [2**i for i in range(6)] and seen[0] == (0, 6) and seen[-1] == (6, 6) and len(seen) == 7
    with parallel.dask_session(cluster_address) as again:  # the cluster outlived both sessions
        assert parallel.run_one(again, pow, 3, 2) == 9


def test_default_starts_a_local_cluster_and_closes_it() -> None:
    with parallel.dask_session(None, n_workers=1) as address:
        client = parallel.client_for(address)
        cluster = client.cluster
        assert address.startswith("tcp://") and parallel.run_one(address, pow, 2, 10) == 1024
    assert client.status == "closed" and cluster.status.name == "closed"
    with pytest.raises(TypeError, match="client_or_address must be"):
        with parallel.dask_session(42):
            pass
