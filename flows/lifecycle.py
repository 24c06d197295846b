"""What a ``dinoflow`` command leaves running when it ends: nothing.

A command starts processes that are not ours to configure: Prefect's temporary API server (a
``uvicorn`` child on a random port, stopped by an ``atexit`` hook), the workers of a Dask
``LocalCluster``, torchrun and its ranks. Python's default reaction to ``SIGTERM`` and ``SIGHUP`` is
to die without running ``atexit``, which orphans the server. :func:`run` wraps the CLI so that:

- ``SIGTERM``, ``SIGINT`` and ``SIGHUP`` raise :class:`Stopped` in the main thread: the flow run
  unwinds (Prefect records it as crashed; context managers close the Dask cluster and torchrun),
  then every process this command started that is still alive gets ``SIGTERM``, ``SIGKILL`` after
  :data:`KILL_AFTER_S`, and the command exits with 128 + the signal's number and one line on
  stderr. A second signal, or an unwinding that takes over :data:`GRACE_S`, skips the unwinding.
  (During a flow run Prefect's own ``SIGTERM`` handler reports the run as crashed first, then
  sends the signal again to this one.)
- ``SIGKILL`` (nothing runs): a thread records the command's descendants (pid, start time, command
  line) in a file under :func:`state_dir` while it runs. The next ``dinoflow`` command finds the
  records of commands that are gone, stops the processes they list that still run (the same pid
  *and* start time: never a reused pid), and says so on stderr: the temporary server and the
  LocalCluster's worker processes (measured: both outlive a killed parent). Torchrun ranks die with
  their launcher on their own (``PR_SET_PDEATHSIG``, ``pretrain/launch.py``). A process started in
  the last :data:`RECORD_EVERY_S` before the kill is not in the record.
- On a normal exit, an ``atexit`` hook registered before Prefect's (so it runs after them) stops
  whatever is still running and removes the record.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE_S = 10.0  # unwinding the flow run (Prefect's crash report, closing the cluster) at most this long
KILL_AFTER_S = 3.0  # SIGTERM, then SIGKILL for what is still alive after this
RECORD_EVERY_S = 0.5
STATE_ENV = "DINOFLOW_STATE_DIR"


class Stopped(BaseException):
    """A termination signal, raised in the main thread; a BaseException so no ``except Exception``
    swallows it (Prefect's engines record the run as crashed and re-raise it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def state_dir() -> Path:
    """``$DINOFLOW_STATE_DIR``, else ``dinoflow-processes`` in ``$PREFECT_HOME`` (``~/.prefect``): next
    to the temporary server's database, so a test or user with their own Prefect home has their own."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser()
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / "dinoflow-processes"


def describe(proc: psutil.Process) -> str:
    """``pid command args`` shortened to one readable fragment."""
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        cmd = "?"
    return f"{proc.pid} {cmd[:120]}"


def stop_processes(procs: Iterable[psutil.Process], kill_after_s: float = KILL_AFTER_S) -> list[str]:
    """``SIGTERM`` to each, ``SIGKILL`` to those alive after ``kill_after_s``; returns their
    descriptions (those that were still running)."""
    stopped: list[psutil.Process] = []
    described: list[str] = []
    for proc in procs:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue  # ended already, waiting to be reaped
            text = describe(proc)
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
        stopped.append(proc)
        described.append(text)
    _, alive = psutil.wait_procs(stopped, timeout=kill_after_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=kill_after_s)
    return described


def stop_children() -> list[str]:
    """Stop every process this one started (children and theirs, listed before any is signalled, so
    a rank whose torchrun dies first is still found)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    return stop_processes(children)


class ProcessRecord:
    """This command's descendants, in ``state_dir()/<pid>.json`` while there are any (see module doc)."""

    def __init__(self, directory: Path) -> None:
        me = psutil.Process()
        self.path = directory / f"{me.pid}.json"
        words = [a for a in sys.argv[1:] if not a.startswith("-")][:1]  # the subcommand
        self.owner = {
            "pid": me.pid,
            "create_time": me.create_time(),
            "command": " ".join(["dinoflow", *words]),
        }
        self._seen: set[tuple[int, float]] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dinoflow-process-record", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(RECORD_EVERY_S):
            with contextlib.suppress(Exception):  # a record is best effort; the command goes on
                self.update()

    def update(self) -> None:
        children = []
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                children.append({"pid": proc.pid, "create_time": proc.create_time(), "cmd": describe(proc)})
        seen = {(c["pid"], c["create_time"]) for c in children}
        if seen == self._seen:
            return
        self._seen = seen
        if not children:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.owner, "children": children}))
        tmp.replace(self.path)

    def close(self) -> None:
        self._done.set()
        self.path.unlink(missing_ok=True)


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - create_time) < 0.01 else None
    except psutil.Error:
        return None


def reap_orphans(directory: Path) -> list[str]:
    """Stop the processes recorded by ``dinoflow`` commands that are gone; one line per command."""
    lines = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _same_process(record["pid"], record["create_time"]) is not None:
            continue  # that command still runs (another terminal)
        found = [_same_process(c["pid"], c["create_time"]) for c in record.get("children", [])]
        stopped = stop_processes(p for p in found if p is not None)
        path.unlink(missing_ok=True)
        if stopped:
            command = record.get("command", "dinoflow")
            lines.append(
                f"dinoflow: stopped {len(stopped)} process(es) left running by an earlier `{command}` "
                f"(pid {record['pid']}, killed before it could clean up): " + "; ".join(stopped)
            )
    return lines


_state: dict[str, Any] = {"signum": None, "owner": None}


def _hard_exit(signum: int) -> None:
    """Stop the children now and exit (second signal, or the unwinding took too long)."""
    finish(Stopped(signum))


def _on_signal(signum: int, frame: Any) -> None:
    if os.getpid() != _state["owner"]:  # a forked child inherited this handler: default behaviour
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _state["signum"] is not None:
        _hard_exit(signum)
    _state["signum"] = signum
    timer = threading.Timer(GRACE_S, _hard_exit, args=(signum,))
    timer.daemon = True
    timer.start()
    _state["timer"] = timer
    raise Stopped(signum)


def drain_prefect_logs(timeout_s: float = 2.0) -> None:
    """Send the flow run's queued log lines and events to the API before its server stops (what
    Prefect's own exit hooks do; ``os._exit`` skips them)."""
    if "prefect.logging.handlers" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=timeout_s)


def finish(stop: Stopped) -> None:
    """Stop every child, say so in one line and exit with 128 + the signal's number."""
    drain_prefect_logs()
    stopped = stop_children()
    name = signal.Signals(stop.signum).name
    print(
        f"dinoflow: stopped by {name}, and {len(stopped)} child process(es) with it",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(Exception):
        _state["record"].close()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(stop.exit_code)


def _at_exit(record: ProcessRecord) -> None:
    stop_children()
    record.close()


def install() -> None:
    """Report and stop what earlier killed commands left, install the handlers, start the record."""
    directory = state_dir()
    for line in reap_orphans(directory):
        print(line, file=sys.stderr, flush=True)
    _state["owner"] = os.getpid()
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)
    record = ProcessRecord(directory)
    _state["record"] = record
    atexit.register(_at_exit, record)  # registered before Prefect's hooks: runs after them
    record.start()


def run(app: Callable[[], Any]) -> None:
    """``app()`` with :func:`install`; a signal ends in :func:`finish`."""
    install()
    try:
        app()
    except Stopped as stop:
        if _state.get("timer") is not None:
            _state["timer"].cancel()  # unwound in time: this thread finishes
        finish(stop)
