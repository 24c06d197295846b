"""The nightly deployment on a real ``prefect server``: served, run by name, schedule kept on restart.

This is what users run (README "Running it nightly"); the ephemeral API used elsewhere does not
load flows the way a served deployment does (that difference once hid a sys.path shadowing bug).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.prefect, pytest.mark.slow]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_served_nightly_deployment_runs_and_keeps_its_schedule(
    imagededup_testdata: Path, tmp_path: Path
) -> None:
    import httpx

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"catalog: {tmp_path / 'catalog'}\nsource: {imagededup_testdata}\ndataset:\n  enabled: false\n"
    )
    server = _start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "server.log",
    )
    served = None
    try:
        _wait(lambda: _ok(httpx, f"{api}/health"), 180, "the Prefect server")
        serve_cmd = [str(BIN / "dinoflow"), "serve", "--config", str(config), "--timezone", "Europe/Paris"]
        served = _start(serve_cmd, env, tmp_path / "serve.log")
        _wait(lambda: _deployment(httpx, api) is not None, 180, "the deployment to register")
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "curate-and-pretrain/nightly", "--watch"],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "serve.log").read_text()[-3000:]
        assert "Completed" in run.stdout

        _stop(served)  # the serving process restarts: the nightly schedule must stay active
        deployment = _deployment(httpx, api)
        assert deployment is not None and deployment["paused"] is False
        (schedule,) = deployment["schedules"]
        assert schedule["active"] is True
        assert (
            schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "Europe/Paris"
        )
    finally:
        if served is not None:
            _stop(served)
        _stop(server)

    from data_catalog.catalog import Catalog
    from data_catalog.images import read_images

    n_files = sum(1 for p in imagededup_testdata.rglob("*") if p.is_file())
    assert read_images(Catalog(str(tmp_path / "catalog"))).num_rows == n_files


def _ok(httpx, url: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _deployment(httpx, api: str) -> dict | None:  # type: ignore[no-untyped-def,type-arg]
    try:
        resp = httpx.get(f"{api}/deployments/name/curate-and-pretrain/nightly", timeout=5)
    except httpx.HTTPError:
        return None
    return json.loads(resp.text) if resp.status_code == 200 else None
