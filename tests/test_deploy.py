"""The deployment definitions: nightly (cron with timezone, one run at a time) and the stages on demand."""

from __future__ import annotations

import pytest

pytest.importorskip("prefect")

from flows import deploy  # noqa: E402
from flows.config import PipelineConfig  # noqa: E402


def test_nightly_deployment_has_timezone_parameters_and_runs_one_at_a_time() -> None:
    cfg = PipelineConfig(catalog="/data/catalog", source="/data/incoming")
    dep = deploy.nightly_deployment(cfg, cron="30 1 * * *", timezone="Europe/Paris")
    assert dep.name == "nightly"
    assert dep.flow_name == "curate-and-pretrain"
    (schedule,) = dep.schedules
    assert schedule.schedule.cron == "30 1 * * *"
    assert schedule.schedule.timezone == "Europe/Paris"
    assert PipelineConfig.model_validate(dep.parameters["config"]) == cfg
    assert dep.entrypoint == "flows.pipeline.curate_and_pretrain"
    assert dep.concurrency_limit == 1
    assert dep.concurrency_options.collision_strategy.value == "ENQUEUE"  # a late run waits, never dropped


def test_stage_deployments_take_their_defaults_from_the_served_config() -> None:
    cfg = PipelineConfig.model_validate(
        {"catalog": "/c", "source": "/s", "pretrain": {"preset": "demo", "max_steps": 7}}
    )
    deps = {d.flow_name: d for d in deploy.stage_deployments(cfg)}
    assert set(deps) == {"curate", "pretrain", "evaluate"}
    assert {d.name for d in deps.values()} == {"on-demand"}
    assert all(not d.schedules for d in deps.values())
    assert PipelineConfig.model_validate(deps["curate"].parameters["config"]) == cfg
    assert deps["pretrain"].parameters["stage"]["max_steps"] == 7
    assert deps["pretrain"].parameters["catalog"] == "/c" == deps["evaluate"].parameters["catalog"]
    assert deps["pretrain"].entrypoint == "flows.pretrain_stage.pretrain"
    assert "dataset" not in deps["pretrain"].parameters  # given per run: --param dataset=NAME:vN


def test_serve_keeps_schedule_when_the_process_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_serve(*deployments, **kwargs):  # type: ignore[no-untyped-def]
        seen["deployments"] = deployments
        seen.update(kwargs)

    monkeypatch.setattr(deploy, "serve", fake_serve)
    deploy.serve_nightly(PipelineConfig(catalog="/c"))
    assert seen["pause_on_shutdown"] is False
    names = {(d.flow_name, d.name) for d in seen["deployments"]}
    assert names == {
        ("curate-and-pretrain", "nightly"),
        ("curate", "on-demand"),
        ("pretrain", "on-demand"),
        ("evaluate", "on-demand"),
    }
