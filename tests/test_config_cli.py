"""Config mistakes from every entry point stop before any work with one line (no traceback, exit 2);
``--set pretrain.train...`` reaches the trainer through the file the flow writes; a run directory
trained with other settings is not resumed silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from data_catalog.settings import ConfigError
from flows.cli import app
from pretrain.config import load_config, save_config

REPO = Path(__file__).resolve().parents[1]


def _invoke(args: list[str]):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, args)
    return result, result.output  # stdout and stderr together


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--catalog", "{tmp}/c", "--set", "sorce=/x"], "'sorce' (did you mean 'source'?)"),
        (
            ["curate", "--catalog", "{tmp}/c", "--source", "{tmp}", "--set", "curate.filter.min_sid=10"],
            "'curate.filter.min_sid' (did you mean 'curate.filter.min_side'",
        ),
        (
            ["run", "--config", "{tmp}/p.yaml", "--set", "pretrain.train.optim.base_lrr=1e-3"],
            "'pretrain.train.optim.base_lrr' (did you mean 'pretrain.train.optim.base_lr'?)",
        ),
        (["serve", "--config", "{tmp}/typo.yaml"], "'pretrain.presett' (did you mean 'pretrain.preset'?)"),
        (["run", "--config", "{tmp}/missing.yaml"], "missing.yaml' not found"),
        (["run"], "no catalog: pass --catalog"),
        (
            ["bootstrap-backbone", "--workdir", "{tmp}/c", "--set", "optim.base_lrr=1"],
            "'optim.base_lrr' (did you mean 'optim.base_lr'?)",
        ),
    ],
)
def test_cli_config_mistakes_are_one_line_without_traceback(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    (tmp_path / "p.yaml").write_text(f"catalog: {tmp_path}/c\n")
    (tmp_path / "typo.yaml").write_text(f"catalog: {tmp_path}/c\npretrain:\n  presett: vits14\n")
    result, output = _invoke([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 2, output
    assert expected in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1 and output.startswith("error: ")
    assert not (tmp_path / "c").exists()  # nothing started


def test_config_file_gives_catalog_and_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.curate
    import flows.pipeline
    import flows.report

    seen: dict[str, Any] = {}
    monkeypatch.setattr(flows.curate, "curate", lambda cfg: seen.setdefault("curate", cfg) and {})
    monkeypatch.setattr(flows.pipeline, "curate_and_pretrain", lambda cfg: seen.setdefault("run", cfg) and {})
    monkeypatch.setattr(flows.report, "print_summary", lambda *a, **k: None)
    path = tmp_path / "p.yaml"
    path.write_text("catalog: /data/cat\nsource: /data/in\ndask_address: sync\n")
    result, output = _invoke(["curate", "--config", str(path)])
    assert result.exit_code == 0, output
    assert seen["curate"].catalog == "/data/cat" and seen["curate"].source == "/data/in"
    result, output = _invoke(["run", "--config", str(path), "--source", "/flag", "--set", "dataset.seed=4"])
    assert result.exit_code == 0, output
    assert (
        seen["run"].catalog == "/data/cat" and seen["run"].source == "/flag" and seen["run"].dataset.seed == 4
    )


def test_serve_set_reaches_the_deployments_training_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("prefect")
    from flows import deploy
    from flows.config import PipelineConfig

    seen: dict[str, Any] = {}
    monkeypatch.setattr(deploy, "serve", lambda *deps, **kw: seen.setdefault("deployments", deps))
    path = tmp_path / "p.yaml"
    path.write_text("catalog: /data/cat\nsource: /data/in\npretrain:\n  enabled: true\n  preset: vits14\n")
    result, output = _invoke(["serve", "--config", str(path), "--set", "pretrain.train.optim.base_lr=1e-3"])
    assert result.exit_code == 0, output
    params = seen["deployments"][0].parameters["config"]
    cfg = PipelineConfig.model_validate(params)  # what a flow run of the deployment validates
    assert cfg.pretrain.train.optim.base_lr == 1e-3 and cfg.pretrain.train.model.arch == "vit_small"


def test_flow_dict_parameter_with_unknown_key_is_refused_naming_it() -> None:
    """Deployment parameters edited in the UI reach the flow as a dict: Prefect validates them
    (``Flow.validate_parameters``, before the run starts) and the message names the full path."""
    pytest.importorskip("prefect")
    from prefect.exceptions import ParameterTypeError

    from flows.pipeline import curate_and_pretrain

    params = {"catalog": "/c", "pretrain": {"enabled": True, "train": {"optim": {"base_lrr": 1e-3}}}}
    with pytest.raises(ParameterTypeError) as err:
        curate_and_pretrain.validate_parameters({"config": params})
    message = str(err.value)
    assert "config.pretrain.train.optim.base_lrr: unknown key (did you mean 'base_lr')" in message
    ok = curate_and_pretrain.validate_parameters(
        {"config": {"catalog": "/c", "pretrain": {"train": {"optim": {"base_lr": 1e-3}}}}}
    )
    assert ok["config"].pretrain.train.optim.base_lr == 1e-3


def test_the_flow_writes_the_training_config_the_trainer_reads(tmp_path: Path) -> None:
    from flows.pretrain_stage import run_dir_for, train_args, write_train_config
    from flows.settings import pipeline_config
    from pretrain.train import parse_args, resolve_config

    cfg = pipeline_config(
        None, ["pretrain.train.optim.base_lr=1e-3", "pretrain.max_steps=5"], catalog=str(tmp_path)
    )
    run_dir = run_dir_for(cfg.catalog, "web:v1", cfg.pretrain)
    written = write_train_config(cfg.pretrain, run_dir)
    assert written.parent == run_dir
    args = parse_args(train_args(cfg.catalog, "web:v1", cfg.pretrain, run_dir))
    assert args.config == str(written) and args.max_steps == 5
    assert resolve_config(args) == cfg.pretrain.train  # exactly what was validated
    assert resolve_config(args).optim.base_lr == 1e-3


def _fake_run_dir(run_dir: Path, overrides: list[str]) -> None:
    """A run directory as the trainer leaves it: its config.yaml and a finished checkpoint's name."""
    (run_dir / "checkpoints").mkdir(parents=True)
    save_config(load_config("demo", overrides), run_dir / "config.yaml")
    (run_dir / "checkpoints" / "step_00000002.pt").write_bytes(b"")


def test_resume_with_other_settings_is_refused_listing_the_keys(tmp_path: Path) -> None:
    from pretrain.train import parse_args, resolve_config

    run_dir = tmp_path / "run"
    _fake_run_dir(run_dir, ["optim.base_lr=0.002"])
    base = ["--config", "demo", "--dataset", "x", "--output-dir", str(run_dir)]
    with pytest.raises(ConfigError) as err:
        resolve_config(parse_args([*base, "--set", "optim.base_lr=0.001", "--set", "train.epochs=3"]))
    assert "optim.base_lr: 0.002 -> 0.001" in str(err.value) and "train.epochs:" in str(err.value)
    assert "--resume-anyway" in str(err.value)
    assert resolve_config(parse_args([*base, "--set", "optim.base_lr=0.001", "--resume-anyway"]))
    # bookkeeping keys and the stop step may change on resume
    same = [*base, "--set", "optim.base_lr=0.002", "--checkpoint-every", "7", "--max-steps", "99"]
    assert resolve_config(parse_args([*same, "--set", "train.log_every=3"])).train.checkpoint_every == 7
    # no checkpoint yet: nothing would be resumed, so new settings are fine
    (run_dir / "checkpoints" / "step_00000002.pt").unlink()
    assert resolve_config(parse_args([*base, "--set", "optim.base_lr=0.001"]))


def test_pipeline_stage_refuses_a_run_dir_with_other_settings(tmp_path: Path) -> None:
    from flows.pretrain_stage import run_dir_for, write_train_config
    from flows.settings import pipeline_config

    cfg = pipeline_config(None, ["pretrain.train.optim.base_lr=1e-3"], catalog=str(tmp_path))
    run_dir = run_dir_for(cfg.catalog, "web:v1", cfg.pretrain)
    _fake_run_dir(run_dir, [])
    with pytest.raises(ConfigError, match="optim.base_lr: 0.002 -> 0.001.*pretrain.resume_anyway=true"):
        write_train_config(cfg.pretrain, run_dir)
    anyway = pipeline_config(
        None, ["pretrain.train.optim.base_lr=1e-3", "pretrain.resume_anyway=true"], catalog=str(tmp_path)
    )
    assert write_train_config(anyway.pretrain, run_dir).exists()


def _train_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pretrain.train", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_train_cli_config_mistakes_are_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["--dataset", "x", "--output-dir", str(out)]
    cases = {
        "'optim.base_lrr' (did you mean 'optim.base_lr'?)": ["--config", "demo", "--set", "optim.base_lrr=1"],
        "unknown preset 'vits15' (did you mean 'vits14'": ["--config", "vits15"],
        "not found": ["--config", str(tmp_path / "none.yaml")],
    }
    for expected, args in cases.items():
        done = _train_cli([*args, *common])
        assert done.returncode == 2, done.stderr
        assert expected in done.stderr and "Traceback" not in done.stderr + done.stdout
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: ")
        assert not out.exists()  # stopped before any work
    _fake_run_dir(out, [])
    done = _train_cli(["--config", "demo", "--set", "optim.base_lr=0.1", *common])
    assert done.returncode == 2 and "optim.base_lr: 0.002 -> 0.1" in done.stderr
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["base_lr"] == 0.002  # untouched


def test_resume_anyway_continues_a_real_run_with_new_settings(imagenette_dir: Path, tmp_path: Path) -> None:
    import json

    import pyarrow as pa

    from curation.dataset_version import create_dataset_version
    from data_catalog.catalog import Catalog

    files = sorted(imagenette_dir.glob("*/*.JPEG"))[::20][:40]
    catalog = Catalog(str(tmp_path / "catalog"))
    selection = pa.table({"image_id": [f.stem for f in files], "uri": [str(f) for f in files]})
    record = create_dataset_version(catalog, "tiny", selection=selection, workers=2)
    out = tmp_path / "run"
    tiny = ["train.batch_size_per_device=4", "crops.local_number=2", "train.num_workers=0"]
    tiny += ["heads.dino.prototypes=256", "train.log_every=1"]
    args = ["--config", "demo", "--dataset", record.ref, "--catalog", catalog.root, "--output-dir", str(out)]
    sets = [x for item in tiny for x in ("--set", item)]
    first = _train_cli([*args, *sets, "--max-steps", "2"])
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    changed = [*sets, "--set", "optim.base_lr=0.004", "--max-steps", "3"]
    refused = _train_cli([*args, *changed])
    assert refused.returncode == 2 and "optim.base_lr: 0.002 -> 0.004" in refused.stderr
    assert "Traceback" not in refused.stderr
    resumed = _train_cli([*args, *changed, "--resume-anyway"])
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    printed = [ln for ln in resumed.stdout.splitlines() if ln.startswith("DINOFLOW_METRICS ")]
    assert [json.loads(ln.split(" ", 1)[1])["step"] for ln in printed] == [3]  # resumed at step 2
    assert "warning: resuming" in resumed.stdout and "optim.base_lr: 0.002 -> 0.004" in resumed.stdout
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["base_lr"] == 0.004
