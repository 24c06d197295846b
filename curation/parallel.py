"""Run independent tasks on Dask: a machine-sized ``LocalCluster`` by default, or an existing cluster.

Worker *processes* (not threads) by default because PIL holds the GIL in parts of decoding and
all of the Python around it. ``client_or_address``:

- ``None``: start a ``distributed.LocalCluster`` (``n_workers`` processes, None = ``os.cpu_count()``),
  dashboard on a free port (several runs on one machine must not fight over 8787), closed afterwards;
- ``"tcp://host:8786"`` (or any scheduler address): connect to that cluster (``--dask-address``);
- a ``distributed.Client``: use it as is (not closed);
- ``"sync"``: run in this process, in order (debugging, tests, tiny inputs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

Progress = Callable[[int, int], None]


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
    if client_or_address == "sync":
        results = []
        for done, args in enumerate(arg_tuples, start=1):
            results.append(fn(*args))
            if progress is not None:
                progress(done, total)
        return results
    from distributed import as_completed

    with dask_client(client_or_address, n_workers, threads_per_worker) as client:
        # pure=False: a re-run must run again (its outputs may have been deleted meanwhile)
        futures = [client.submit(fn, *args, pure=False) for args in arg_tuples]
        index = {future.key: i for i, future in enumerate(futures)}
        results_by_index: dict[int, Any] = {}
        for done, future in enumerate(as_completed(futures), start=1):
            results_by_index[index[future.key]] = future.result()
            if progress is not None:
                progress(done, total)
        return [results_by_index[i] for i in range(total)]
