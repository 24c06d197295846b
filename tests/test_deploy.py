"""The nightly deployment definition: a cron schedule with an explicit timezone, parameters = config."""

from __future__ import annotations

import pytest

pytest.importorskip("prefect")

from flows import deploy  # noqa: E402
from flows.config import PipelineConfig  # noqa: E402


def test_nightly_deployment_has_timezone_and_parameters() -> None:
    cfg = PipelineConfig(catalog="/data/catalog", source="/data/incoming")
    dep = deploy.nightly_deployment(cfg, cron="30 1 * * *", timezone="Europe/Paris")
    assert dep.name == "nightly"
    assert dep.flow_name == "curate-and-pretrain"
    (schedule,) = dep.schedules
    assert schedule.schedule.cron == "30 1 * * *"
    assert schedule.schedule.timezone == "Europe/Paris"
    assert PipelineConfig.model_validate(dep.parameters["config"]) == cfg
    assert dep.entrypoint == "flows.pipeline.curate_and_pretrain"


def test_serve_keeps_schedule_when_the_process_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_serve(*deployments, **kwargs):  # type: ignore[no-untyped-def]
        seen["deployments"] = deployments
        seen.update(kwargs)

    monkeypatch.setattr(deploy, "serve", fake_serve)
    deploy.serve_nightly(PipelineConfig(catalog="/c"))
    assert seen["pause_on_shutdown"] is False
    assert seen["deployments"][0].name == "nightly"
