"""Run independent tasks on Dask: a machine-sized ``LocalCluster`` by default, or an existing cluster.

Worker *processes* (not threads) by default because PIL holds the GIL in parts of decoding and
all of the Python around it. ``client_or_address``:

- ``None``: start a ``distributed.LocalCluster`` (``n_workers`` processes, None = ``os.cpu_count()``),
  dashboard on a free port (several runs on one machine must not fight over 8787), closed afterwards;
- ``"tcp://host:8786"`` (or any scheduler address): connect to that cluster (``--dask-address``);
- a ``distributed.Client``: use it as is (not closed);
- ``"sync"``: run in this process, in order (debugging, tests, tiny inputs).

Two ways in, one implementation: :func:`run_tasks` maps a function over inputs with progress (the
library's ``ingest``); :func:`dask_session` + :func:`run_one` let a caller that schedules the tasks
itself (the Prefect flow: one retried task per partition, running in threads of the flow's process)
send each one to the same cluster by its address, a plain string that can be a task parameter.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

Progress = Callable[[int, int], None]
SYNC = "sync"
# this process's client per scheduler address, for work submitted by address (see run_one)
_CLIENTS: dict[str, Any] = {}


LOG_LEVEL_ENV = "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"  # dask config distributed.logging.distributed


def set_dask_log_level(level: str) -> None:
    """Dask's own loggers (``distributed.*``: scheduler, nannies, comms, workers) at ``level``
    ("warning", "info", ...) in this process, whether distributed is imported yet or not, and in the
    processes it starts (Prefect's flow-run processes under ``serve``, Dask's spawned workers).

    Why: importing distributed sets its logger's level from dask config (``distributed.logging``,
    INFO by default), and when the root logger already has a handler (Prefect's console) it adds
    none of its own, so the scheduler's and nannies' INFO lines reach the console between the
    pipeline's. Dask reads the config, environment included, when it is first imported; a process
    that has imported distributed already gets the logger's level set directly.
    """
    os.environ[LOG_LEVEL_ENV] = level  # children read it when they import dask
    if "dask" in sys.modules:  # its config is loaded: set it there too (no import otherwise)
        import dask

        dask.config.set({"distributed.logging.distributed": level})
    if "distributed" in sys.modules:
        logging.getLogger("distributed").setLevel(level.upper())


@contextmanager
def dask_client(
    client_or_address: Any = None, n_workers: int | None = None, threads_per_worker: int = 1
) -> Iterator[Any]:
    """A ``distributed.Client`` for ``client_or_address`` (see module doc); closes what it started."""
    from distributed import Client, LocalCluster

    if isinstance(client_or_address, Client):
        yield client_or_address
        return
    if isinstance(client_or_address, str):
        with Client(client_or_address) as client:
            yield client
        return
    if client_or_address is not None:
        raise TypeError(
            f"client_or_address must be None, 'sync', an address or a Client, got {client_or_address!r}"
        )
    with (
        LocalCluster(
            n_workers=n_workers or os.cpu_count() or 1,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextmanager
def dask_session(
    client_or_address: Any = None, n_workers: int | None = None, threads_per_worker: int = 1
) -> Iterator[str]:
    """``"sync"``, or the scheduler address of the cluster for ``client_or_address`` (see module doc)
    with this process's client registered for :func:`run_one`; closes what it started."""
    if client_or_address == SYNC:
        yield SYNC
        return
    with dask_client(client_or_address, n_workers, threads_per_worker) as client:
        address = client.scheduler.address
        # a session nested in another on the same scheduler leaves the outer one's client in place
        registered = _CLIENTS.setdefault(address, client) is client
        try:
            yield address
        finally:
            if registered:
                _CLIENTS.pop(address, None)


def client_for(address: str) -> Any:
    """This process's client for ``address``: the session's, else a new one kept for later calls."""
    if address not in _CLIENTS:
        from distributed import Client

        _CLIENTS[address] = Client(address, set_as_default=False)
    return _CLIENTS[address]


def run_one(address: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` here (``address == "sync"``) or on the cluster at ``address``, awaited."""
    if address == SYNC:
        return fn(*args)
    # pure=False: a re-run must run again (its outputs may have been deleted meanwhile)
    return client_for(address).submit(fn, *args, pure=False).result()


def run_tasks(
    fn: Callable[..., Any],
    arg_tuples: Sequence[tuple[Any, ...]],
    client_or_address: Any = None,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    progress: Progress | None = None,
) -> list[Any]:
    """``[fn(*args) for args in arg_tuples]`` on Dask, results in input order.

    ``progress(done, total)`` is called in this process after each task finishes (and once with
    ``(0, total)`` before the first). A task that raises fails the run with its exception.
    """
    total = len(arg_tuples)
    if progress is not None:
        progress(0, total)
    if total == 0:
        return []
    with dask_session(client_or_address, n_workers, threads_per_worker) as address:
        if address == SYNC:
            results = []
            for done, args in enumerate(arg_tuples, start=1):
                results.append(fn(*args))
                if progress is not None:
                    progress(done, total)
            return results
        from distributed import as_completed

        client = client_for(address)
        futures = [client.submit(fn, *args, pure=False) for args in arg_tuples]  # pure=False: as run_one
        index = {future.key: i for i, future in enumerate(futures)}
        results_by_index: dict[int, Any] = {}
        for done, future in enumerate(as_completed(futures), start=1):
            results_by_index[index[future.key]] = future.result()
            if progress is not None:
                progress(done, total)
        return [results_by_index[i] for i in range(total)]
