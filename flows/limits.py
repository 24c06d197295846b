"""The global concurrency limit on training: ``dinoflow-gpu``, one slot per torchrun rank.

Pretraining holds ``nproc`` slots of this Prefect global concurrency limit while torchrun runs, on
GPUs or not: on a GPU machine a rank is a GPU, so a limit of 8 on an 8-GPU node lets one 8-rank
run or two 4-rank runs in at once, and the rest wait (nightly, on-demand ``pretrain`` runs and
``dinoflow run`` alike). Without the limit on the server (the default, and Prefect's ephemeral
API) nothing waits (one log line says so). Create it with
``dinoflow serve --gpu-slots N`` or ``prefect gcl create dinoflow-gpu --limit N``.

The slots are leased (renewed while training runs): a flow process killed with SIGKILL frees them
when its lease runs out, after ``LEASE_SECONDS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from data_catalog.settings import ConfigError

GPU_LIMIT = "dinoflow-gpu"
LEASE_SECONDS = 300.0


def gpu_limit_exists() -> bool:
    """Whether the server (or the ephemeral API) holds :data:`GPU_LIMIT`."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            return False
    return True


@contextmanager
def gpu_slots(ranks: int) -> Iterator[None]:
    """Hold ``ranks`` slots of :data:`GPU_LIMIT` (waiting for them) for the duration of the block;
    without the limit, run at once (logged). A limit smaller than ``ranks`` can never be met: a
    one-line :class:`ConfigError` instead of a wait."""
    logger = get_run_logger()
    if not gpu_limit_exists():
        logger.info("no global concurrency limit %r on the server: training is not limited", GPU_LIMIT)
        yield
        return
    logger.info("waiting for %d slot(s) of the global concurrency limit %r", ranks, GPU_LIMIT)
    try:
        with concurrency(GPU_LIMIT, occupy=ranks, lease_duration=LEASE_SECONDS):
            logger.info("holding %d slot(s) of %r", ranks, GPU_LIMIT)
            yield
    except ConcurrencySlotAcquisitionError as exc:
        raise ConfigError(
            f"{exc} (pretraining holds one slot of {GPU_LIMIT!r} per rank: {ranks}; raise the limit with "
            f"`prefect gcl update {GPU_LIMIT} --limit {ranks}` or lower pretrain.nproc_per_node)"
        ) from None
