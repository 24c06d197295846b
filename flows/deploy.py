"""The ``curate-and-pretrain/nightly`` deployment, served by a long-running process.

    prefect server start                       # terminal 1: API + UI + scheduler
    dinoflow serve --config my-pipeline.yaml   # terminal 2: registers the deployment and runs it
    prefect deployment run curate-and-pretrain/nightly

The schedule has an explicit timezone, and the served deployment does NOT pause its schedule when
this process stops (Prefect's default would), so a restart of the serving process keeps the nightly
runs scheduled.
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from flows.config import PipelineConfig
from flows.pipeline import curate_and_pretrain

DEPLOYMENT_NAME = "nightly"
DEFAULT_CRON = "0 2 * * *"  # 02:00 every night
DEFAULT_TIMEZONE = "UTC"


def nightly_deployment(
    config: PipelineConfig, cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE
) -> Any:
    """The runner deployment: the pipeline config becomes the deployment's default parameters."""
    return curate_and_pretrain.to_deployment(
        name=DEPLOYMENT_NAME,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"config": config.model_dump(mode="json")},
        description="Nightly: ingest new images, filter, embed, deduplicate (hashes, copy vectors), remove "
        "eval leaks, cluster, write a balanced dataset version, pretrain.",
        tags=["dinoflow", "nightly"],
        # Import the flow by module path: a file-path entrypoint puts flows/ on sys.path, where
        # flows/<stage>.py modules could shadow the top-level packages.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def serve_nightly(config: PipelineConfig, cron: str = DEFAULT_CRON, timezone: str = DEFAULT_TIMEZONE) -> None:
    """Serve until interrupted. Needs a Prefect server (``PREFECT_API_URL``) for schedules to fire."""
    serve(nightly_deployment(config, cron, timezone), pause_on_shutdown=False)
