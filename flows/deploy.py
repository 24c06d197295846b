"""The deployments, served together by one long-running process (``dinoflow serve``).

    prefect server start                       # terminal 1: API + UI + scheduler
    dinoflow serve --config my-pipeline.yaml   # terminal 2: registers the deployments and runs them
    prefect deployment run curate-and-pretrain/nightly

- ``curate-and-pretrain/nightly``: the whole DAG on a cron schedule with an explicit timezone, at
  most one run at a time (deployment concurrency limit 1, ENQUEUE: a run triggered while one is
  going waits in ``AwaitingConcurrencySlot`` and starts when it ends; nothing is cancelled).
- ``curate/on-demand``, ``pretrain/on-demand``, ``evaluate/on-demand``: the stages alone, no
  schedule; the served config gives their defaults (``pretrain`` needs ``--param dataset=NAME:vN``,
  ``evaluate`` needs ``checkpoint`` and ``benchmark``).

GPU work is limited across all of them by the global concurrency limit ``dinoflow-gpu``
(``flows/limits.py``); ``--gpu-slots N`` creates or resizes it on the server.

The served deployments do NOT pause their schedules when this process stops (Prefect's default
would), so a restart of the serving process keeps the nightly runs scheduled.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from flows.config import PipelineConfig
from flows.curate import curate
from flows.evaluate import evaluate
from flows.limits import GPU_LIMIT
from flows.pipeline import curate_and_pretrain
from flows.pretrain_stage import pretrain

DEPLOYMENT_NAME = "nightly"
ON_DEMAND = "on-demand"
DEFAULT_CRON = "0 2 * * *"  # 02:00 every night
DEFAULT_TIMEZONE = "UTC"
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
# Import flows by module path: a file-path entrypoint puts flows/ on sys.path, where
# flows/<stage>.py modules could shadow the top-level packages.
COMMON: dict[str, Any] = {"tags": ["dinoflow"], "entrypoint_type": EntrypointType.MODULE_PATH}


def nightly_deployment(
    config: PipelineConfig, cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE
) -> Any:
    """The runner deployment: the pipeline config becomes the deployment's default parameters."""
    return curate_and_pretrain.to_deployment(
        name=DEPLOYMENT_NAME,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"config": config.model_dump(mode="json")},
        description="Nightly: ingest new images, filter, embed, deduplicate (hashes, copy vectors), remove "
        "eval leaks, cluster, write a balanced dataset version, pretrain, evaluate.",
        concurrency_limit=ONE_AT_A_TIME,
        **{**COMMON, "tags": ["dinoflow", "nightly"]},
    )


def stage_deployments(config: PipelineConfig) -> list[Any]:
    """``curate``, ``pretrain`` and ``evaluate`` on demand, with the served config as defaults."""
    evaluate_defaults = {"config": config.evaluate.model_dump(mode="json"), "catalog": config.catalog}
    pretrain_defaults = {"catalog": config.catalog, "stage": config.pretrain.model_dump(mode="json")}
    return [
        curate.to_deployment(
            name=ON_DEMAND, parameters={"config": config.model_dump(mode="json")},
            description="Curate config.source into the catalog and write a dataset version.", **COMMON,
        ),
        pretrain.to_deployment(
            name=ON_DEMAND, parameters=pretrain_defaults,
            description="Pretrain on a dataset version: --param dataset=NAME:vN.", **COMMON,
        ),
        evaluate.to_deployment(
            name=ON_DEMAND, parameters=evaluate_defaults,
            description="Evaluate a checkpoint (a path or a run id) on a benchmark: "
            "--param checkpoint=... --param benchmark=...", **COMMON,
        ),
    ]  # fmt: skip


def set_gpu_slots(slots: int) -> None:
    """Create the global concurrency limit on GPU work, or set its size (``flows/limits.py``)."""
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, slots)


def serve_nightly(
    config: PipelineConfig,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    gpu_slots: int | None = None,
) -> None:
    """Serve every deployment until interrupted. Needs a Prefect server (``PREFECT_API_URL``)."""
    if gpu_slots is not None:
        set_gpu_slots(gpu_slots)
    deployments = [nightly_deployment(config, cron, timezone), *stage_deployments(config)]
    serve(*deployments, pause_on_shutdown=False)
