"""The whole nightly DAG on a real ``prefect server`` (SQLite, own PREFECT_HOME, 127.0.0.1), served by
``dinoflow serve`` and started with ``prefect deployment run``, as the README tells users to.

One server and one serving process for the module (CI time): a demo-sized night (curate with tiny
embedders, a few pretraining steps with the high-resolution phase, evaluation on a tiny benchmark),
a second night triggered while the first runs (it must wait: deployment concurrency limit 1), which
fails in a stage (a missing source); then the artifacts in headless Chromium, and shutdown in the
order that leaves nothing behind (the serving process first: a runner without its API hangs).

The ephemeral API used elsewhere does not load flows the way a served deployment does (that
difference once hid a sys.path shadowing bug), hence a real server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chromium import Browser, find_chromium
from tests.test_cli_curate import tiny_curation
from tests.test_eval_data import make_image_folder

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning")]
BIN = Path(sys.executable).parent
NIGHTLY = "curate-and-pretrain/nightly"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Stack:
    api: str
    env: dict[str, str]
    tmp: Path
    config: dict[str, Any]
    server: subprocess.Popen[bytes]
    served: subprocess.Popen[bytes]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ui(self) -> str:
        return self.api.removesuffix("/api")

    def get(self, path: str) -> Any:
        import httpx

        return httpx.get(f"{self.api}{path}", timeout=10).json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        import httpx

        return httpx.post(f"{self.api}{path}", json=body, timeout=10).json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], Any], timeout: float, what: str, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _healthy(api: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _deployment(stack: Stack, name: str = NIGHTLY) -> dict[str, Any] | None:
    import httpx

    try:
        resp = httpx.get(f"{stack.api}/deployments/name/{name}", timeout=5)
    except httpx.HTTPError:
        return None
    return json.loads(resp.text) if resp.status_code == 200 else None


def pipeline_config(tmp: Path, source: Path) -> dict[str, Any]:
    """Demo-sized: every curation stage with tiny embedders, 3 + 2 (high-res) steps of the demo
    preset, evaluation on a 3-class benchmark of 24 + 12 images."""
    bench = {"train": str(make_image_folder(tmp / "bench" / "train", 3, 8)),
             "test": str(make_image_folder(tmp / "bench" / "test", 3, 4, seed=1)),
             "transform": {"policy": "squash", "resize": 32, "crop": None}}  # fmt: skip
    return {
        **tiny_curation(tmp, source, "night", [4, 2]),
        "pretrain": {
            "enabled": True,
            "preset": "demo",
            "nproc_per_node": 1,
            "train": {
                "train": {
                    "epochs": 1,
                    "iterations_per_epoch": 3,
                    "batch_size_per_device": 8,
                    "num_workers": 0,
                    "log_every": 1,
                },  # fmt: skip
                "highres": {"enabled": True, "size": 96, "steps": 2},
            },
        },
        "evaluate": {
            "enabled": True,
            "run_benchmarks": ["tiny"],
            "benchmarks": {"tiny": bench},
            "cache_dir": str(tmp / "eval-cache"),
            "knn": {"ks": [1, 5]},
            "linear": {"c_min_power": -2, "c_max_power": 2, "c_steps": 5, "max_iter": 200},
            "copy_detection": {"enabled": False},
            "report": {"projection": "pca"},
            "batch_size": 16,
        },
    }


@pytest.fixture(scope="module")
def stack(imagededup_testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("nightly-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    (tmp / "home").mkdir()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "home"),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,  # a server on another port than 4200: the UI needs it (README)
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",  # the runner looks for runs every 2 s, not 10
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2",  # an enqueued run retries every 2 s
    }
    config = pipeline_config(tmp, imagededup_testdata)
    (tmp / "pipeline.yaml").write_text(json.dumps(config))  # JSON is YAML
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = _start(cmd, env, tmp / "server.log")
    served = None
    try:
        _wait(lambda: _healthy(api), 180, "the Prefect server", tmp / "server.log")
        serve = [str(BIN / "dinoflow"), "serve", "--config", str(tmp / "pipeline.yaml"),
                 "--timezone", "Europe/Paris", "--gpu-slots", "1"]  # fmt: skip
        served = _start(serve, env, tmp / "serve.log")
        s = Stack(api, env, tmp, config, server, served)
        _wait(lambda: _deployment(s, "evaluate/on-demand"), 180, "the deployments", tmp / "serve.log")
        yield s
    finally:  # the order that leaves nothing hanging: the runner, then its API
        if served is not None:
            _stop(served)
        _stop(server)


def _trigger(stack: Stack, name: str, params: dict[str, Any] | None = None) -> str:
    cmd = [str(BIN / "prefect"), "deployment", "run", NIGHTLY, "--flow-run-name", name]
    if params is not None:
        cmd += ["--params", json.dumps(params)]
    out = subprocess.run(cmd, env=stack.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    found = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout)
    assert found, out.stdout
    return found.group(1)


@pytest.fixture(scope="module")
def runs(stack: Stack) -> dict[str, dict[str, Any]]:
    """Night 1 (demo-sized), and night 2 triggered while it runs: its source is missing."""
    first = _trigger(stack, "night-1")
    _wait(lambda: stack.get(f"/flow_runs/{first}")["state_type"] == "RUNNING", 120, "night 1 to start",
          stack.tmp / "serve.log")  # fmt: skip
    second = _trigger(stack, "night-2", {"config": {**stack.config, "source": str(stack.tmp / "missing")}})

    def finished(run_id: str) -> dict[str, Any] | None:
        run = stack.get(f"/flow_runs/{run_id}")
        return run if run["state_type"] in TERMINAL else None

    stack.runs["first"] = _wait(lambda: finished(first), 420, "night 1", stack.tmp / "serve.log")
    stack.runs["second"] = _wait(lambda: finished(second), 120, "night 2", stack.tmp / "serve.log")
    return stack.runs


def test_a_night_fills_the_catalog(stack: Stack, runs: dict[str, dict[str, Any]]) -> None:
    from data_catalog.catalog import Catalog
    from data_catalog.datasets import read_datasets
    from data_catalog.evaluations import read_evaluations
    from data_catalog.images import read_images
    from data_catalog.runs import read_runs

    first = runs["first"]
    assert first["state_type"] == "COMPLETED", (stack.tmp / "serve.log").read_text()[-4000:]
    catalog = Catalog(stack.config["catalog"])
    images = read_images(catalog)
    n_files = sum(1 for p in Path(stack.config["source"]).rglob("*") if p.is_file())
    assert images.num_rows == n_files  # every input accounted for, each once
    assert len(set(images.column("uri").to_pylist())) == n_files
    assert set(images.column("status").to_pylist()) >= {"accepted", "rejected", "duplicate"}
    assert read_datasets(catalog).column("name").to_pylist() == ["night"]
    run_rows = read_runs(catalog).to_pylist()
    assert [r["status"] for r in run_rows] == ["completed"]
    assert run_rows[0]["dataset"].startswith("night")
    metrics = [json.loads(x) for x in Path(run_rows[0]["metrics_uri"]).read_text().splitlines()]
    assert max(int(m["step"]) for m in metrics) >= 4, metrics  # 3 main steps + the high-res phase
    evaluations = read_evaluations(catalog).to_pylist()
    assert evaluations and {r["benchmark"] for r in evaluations} == {"tiny"}
    assert {r["run_id"] for r in evaluations if r["run_id"]} == {Path(run_rows[0]["output_dir"]).name}


def test_training_held_the_gpu_limit_and_released_it(stack: Stack, runs: dict[str, dict[str, Any]]) -> None:
    limits = {x["name"]: x for x in stack.post("/v2/concurrency_limits/filter", {})}
    gpu = limits["dinoflow-gpu"]  # created by dinoflow serve --gpu-slots 1
    assert gpu["limit"] == 1 and gpu["active_slots"] == 0
    assert "holding 1 slot(s) of 'dinoflow-gpu'" in (stack.tmp / "serve.log").read_text()


def test_an_overlapping_night_waits_then_fails_in_its_stage(
    stack: Stack, runs: dict[str, dict[str, Any]]
) -> None:
    first, second = runs["first"], runs["second"]
    states = stack.get(f"/flow_run_states/?flow_run_id={second['id']}")
    assert "AwaitingConcurrencySlot" in {s["name"] for s in states}  # deployment limit 1, ENQUEUE
    assert second["start_time"] >= first["end_time"]  # the nights never overlapped
    assert second["state_type"] == "FAILED"
    assert "does not exist" in second["state"]["message"], second["state"]
    failed = stack.post("/task_runs/filter", {"task_runs": {"state": {"type": {"any_": ["FAILED"]}}}})
    by_name = {t["name"].rsplit("-", 1)[0]: t for t in failed}
    assert set(by_name) == {"curate", "plan-partitions"}  # the failing stage (sub-flow) and its task
    assert str(stack.tmp / "missing") in by_name["plan-partitions"]["state"]["message"]


def test_the_ui_shows_the_plots_and_the_failure(stack: Stack, runs: dict[str, dict[str, Any]]) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("headless Chromium not found: apt-get install chromium (CI installs it)")
    from PIL import Image

    markdown = [a for a in stack.post("/artifacts/filter", {"artifacts": {"type": {"any_": ["markdown"]}}})
                if "data:image/png;base64," in a["data"]]  # fmt: skip
    keys = {a["key"] for a in markdown}
    assert any(k.startswith("eval-tiny") for k in keys) and any(k.endswith("-report") for k in keys), keys
    loaded = "[...document.images].filter(i => i.src.startsWith('data:image/png'))"
    with Browser(chromium, stack.tmp / "chromium") as browser:
        for artifact in markdown:
            expected = artifact["data"].count("data:image/png;base64,")
            browser.open(f"{stack.ui}/artifacts/artifact/{artifact['id']}",
                         f"{loaded}.length >= {expected} && {loaded}.every(i => i.complete)")  # fmt: skip
            sizes = browser.evaluate(f"{loaded}.map(i => [i.naturalWidth, i.naturalHeight])")
            assert all(w > 0 and h > 0 for w, h in sizes), (artifact["key"], sizes)
            shot = browser.screenshot(stack.tmp / f"artifact-{artifact['key']}.png")
            with Image.open(shot) as img:
                assert img.format == "PNG" and img.width > 0
                assert len(set(img.convert("L").getextrema())) == 2  # not a blank page
        failed = runs["second"]["id"]
        browser.open(
            f"{stack.ui}/runs/flow-run/{failed}", "document.body.innerText.includes('does not exist')"
        )
        text = browser.evaluate("document.body.innerText")
        assert "Failed" in text and "Can't connect to Server API" not in text
        browser.screenshot(stack.tmp / "failed-run.png")


def test_stopping_leaves_no_process_and_keeps_the_schedule(
    stack: Stack, runs: dict[str, dict[str, Any]]
) -> None:
    import psutil

    procs = [psutil.Process(p.pid) for p in (stack.served, stack.server)]
    procs += [c for p in procs for c in p.children(recursive=True)]
    _stop(stack.served)  # the serving process restarts: the nightly schedule must stay active
    deployment = _deployment(stack)
    assert deployment is not None and deployment["paused"] is False
    (schedule,) = deployment["schedules"]
    assert schedule["active"] is True
    assert schedule["schedule"] == {**schedule["schedule"], "cron": "0 2 * * *", "timezone": "Europe/Paris"}
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    _stop(stack.server)
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"
