"""A ``dinoflow`` command stopped by a signal leaves no process of its own running.

Real commands in their own session (like ``kill PID`` from another terminal: only the CLI gets the
signal, not its children), real children: Prefect's temporary API server (uvicorn), the Dask
``LocalCluster`` worker processes of the ingest, torchrun and its rank. Every descendant seen
before the signal must be gone once the command has exited (exit code 128 + the signal's number,
one line saying so). After ``kill -9`` of the CLI nothing can run in it: the temporary server is
orphaned, and the next ``dinoflow`` command stops it and says so (``flows/lifecycle.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("dinoflow")  # the console script a user runs
DINOFLOW = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-c", "from flows.cli import main; main()"]
SERVER = "prefect.server.api.server:create_app"  # the uvicorn command line of the temporary server
DASK_WORKER = "multiprocessing.spawn"  # LocalCluster's worker processes
RANK = "-m pretrain.train"  # a torchrun rank (torchrun itself: torch.distributed.run)

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Prefect home for the module: the temporary server's database is migrated once."""
    return tmp_path_factory.mktemp("prefect-home")


class Command:
    """A ``dinoflow`` command in its own session, with every descendant it has had recorded."""

    def __init__(self, args: list[str], home: Path, state: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DASK_"))}
        env.update(PREFECT_HOME=str(home), DINOFLOW_STATE_DIR=str(state), DO_NOT_TRACK="1")
        self.log = log
        self.proc = subprocess.Popen(
            [*DINOFLOW, *args], cwd=REPO, env=env, start_new_session=True,
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.seen: dict[int, tuple[psutil.Process, str]] = {}

    def output(self) -> str:
        return self.log.read_text()

    def _look(self) -> None:
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if child.pid not in self.seen:
                try:
                    self.seen[child.pid] = (child, " ".join(child.cmdline()))
                except psutil.Error:
                    pass

    def wait_for(self, *fragments: str, timeout: float = 240) -> None:
        """Until a descendant's command line contains each fragment (the command still running)."""
        deadline = time.monotonic() + timeout
        while not all(any(f in cmd for _, cmd in self.seen.values()) for f in fragments):
            assert self.proc.poll() is None, f"ended before {fragments} ran:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"no {fragments} after {timeout} s:\n{self.output()[-3000:]}"
            try:
                self._look()
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.1)
        self._look()

    def alive(self, match: Callable[[str], bool] = lambda cmd: True) -> list[str]:
        out = []
        for proc, cmd in self.seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and match(cmd):
                    out.append(f"{proc.pid} {cmd[:150]}")
            except psutil.NoSuchProcess:
                pass
        return out

    def stop_leftovers(self) -> None:
        """Test hygiene only, after the assertions: nothing of a failed test outlives it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for proc, _ in self.seen.values():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def _signal_and_check(command: Command, signum: int) -> None:
    assert command.alive(lambda cmd: SERVER in cmd), "the temporary server runs before the signal"
    os.kill(command.proc.pid, signum)
    try:
        code = command.proc.wait(timeout=60)  # a bound against hanging, not a timing claim
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 60 s after {signal.Signals(signum).name}:\n{command.output()[-3000:]}")
    output = command.output()
    assert code == 128 + signum, output[-3000:]
    assert f"dinoflow: stopped by {signal.Signals(signum).name}" in output.splitlines()[-1], output[-2000:]
    assert not command.alive(), f"left running: {command.alive()}"


@pytest.fixture
def command(prefect_home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[Command] = []

    def start(*args: str) -> Command:
        cmd = Command(list(args), prefect_home, tmp_path / "state", tmp_path / f"log{len(started)}.txt")
        started.append(cmd)
        return cmd

    yield start
    for cmd in started:
        cmd.stop_leftovers()


def _curate(start, raw_photos: Path, tmp_path: Path) -> Command:  # type: ignore[no-untyped-def]
    """``dinoflow curate`` of 500 real photos: ingest on a LocalCluster takes a while on 2 cores."""
    return start("curate", "--source", str(raw_photos), "--catalog", str(tmp_path / "catalog"))


def test_sighup_while_the_temporary_server_starts(command, raw_photos: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli = _curate(command, raw_photos, tmp_path)
    cli.wait_for(SERVER)
    _signal_and_check(cli, signal.SIGHUP)


def test_sigint_mid_ingest_stops_the_dask_workers_and_the_server(
    command, raw_photos: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cli = _curate(command, raw_photos, tmp_path)
    cli.wait_for(SERVER, DASK_WORKER)
    _signal_and_check(cli, signal.SIGINT)
    assert "Crashed" in cli.output()  # the flow run unwound and was recorded as such


def test_sigterm_during_pretraining_stops_every_rank(command, raw_photos: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pool = tmp_path / "pool"
    pool.mkdir()
    for photo in sorted(raw_photos.iterdir())[:16]:
        shutil.copy(photo, pool / photo.name)
    settings = {
        "dask_address": "sync",
        "curate.embed.enabled": "false",
        "pretrain.enabled": "true",
        "pretrain.max_steps": "10000",  # stopped long before
        "pretrain.nproc_per_node": "1",
        "pretrain.train.train.batch_size_per_device": "8",
        "pretrain.train.train.num_workers": "0",
        "evaluate.enabled": "false",
    }
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    cli = command("run", "--source", str(pool), "--catalog", str(tmp_path / "catalog"), *sets)
    cli.wait_for(SERVER, RANK)
    _signal_and_check(cli, signal.SIGTERM)


def test_after_kill_9_the_next_command_stops_the_orphaned_server(
    command, raw_photos: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cli = _curate(command, raw_photos, tmp_path)
    cli.wait_for(SERVER, DASK_WORKER)
    time.sleep(1.0)  # the command records its children twice a second
    os.kill(cli.proc.pid, signal.SIGKILL)
    cli.proc.wait()
    orphans = cli.alive(lambda cmd: SERVER in cmd)
    assert orphans, "Prefect's server outlives a SIGKILLed parent (what the next command is for)"

    catalog = tmp_path / "catalog"
    catalog.mkdir(exist_ok=True)
    after = command("catalog", "stats", "--catalog", str(catalog), "--json")
    after.proc.wait(timeout=120)
    output = after.output()
    assert "left running by an earlier `dinoflow curate`" in output, output[-2000:]
    assert str(cli.proc.pid) in output and orphans[0].split()[0] in output
    # the rest (the Dask worker processes, which outlive a killed parent too) was in the record as well;
    # multiprocessing's resource tracker ends when its pipe closes
    psutil.wait_procs([p for p, _ in cli.seen.values()], timeout=10)
    assert not cli.alive(), f"left running: {cli.alive()}"
