"""The torchrun launcher: streamed lines, parsed metrics, and no process left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

from pretrain import launch


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): read its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_stream_forwards_lines_and_metrics() -> None:
    script = 'import json\nprint("hello")\nfor s in range(3): print("DINOFLOW_METRICS " + json.dumps({"step": s, "loss": 1.0 / (s + 1)}))'
    lines: list[str] = []
    metrics: list[dict[str, float]] = []
    code, tail = launch.run_streaming(
        [sys.executable, "-c", script], on_line=lines.append, on_metrics=metrics.append
    )
    assert code == 0
    assert lines[0] == "hello"
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert tail == lines


def test_parse_metrics_ignores_other_lines() -> None:
    assert launch.parse_metrics('[rank0] DINOFLOW_METRICS {"step": 3}') == {"step": 3}
    assert launch.parse_metrics("loss went down") is None
    assert launch.parse_metrics("DINOFLOW_METRICS {broken") is None


def test_terminate_kills_the_whole_group() -> None:
    # a child that starts a grandchild (like torchrun starting ranks) and reports its pid
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(g.pid, flush=True)
        time.sleep(600)
        """
    )
    run = launch.start([sys.executable, "-c", script])
    assert run.process.stdout is not None
    grandchild = int(run.process.stdout.readline())
    assert _alive(grandchild)
    run.terminate(grace_s=5)
    assert run.process.poll() is not None
    assert _wait_dead(grandchild), "grandchild survived the group kill"


def test_child_dies_when_launcher_is_killed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # the launcher itself is SIGKILLed (no cleanup code runs): the kernel's death signal ends the child
    launcher = textwrap.dedent(
        """
        import sys, time
        from pretrain import launch
        run = launch.start([sys.executable, "-c", "import time; time.sleep(600)"])
        print(run.process.pid, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    assert _alive(child)
    proc.kill()
    proc.wait()
    assert _wait_dead(child), "the child outlived its killed launcher"


def test_torchrun_command_standalone_and_multinode() -> None:
    cmd = launch.torchrun_command(["--max-steps", "2"], nproc_per_node=2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--standalone" in cmd
    assert cmd[-4:] == ["-m", "pretrain.train", "--max-steps", "2"]
    multi = launch.torchrun_command([], 8, nnodes="2", rdzv_endpoint="head:29400")
    assert "--rdzv_endpoint=head:29400" in multi and "--standalone" not in multi


def test_format_metrics_is_readable() -> None:
    line = launch.format_metrics(
        {"step": 5, "total_steps": 200, "phase": "main", "loss": 12.5, "dino": 8.3, "images_per_s": 15.2}
    )
    assert line == "step 5/200 [main] loss 12.5000 (dino 8.3000) 15.2 img/s"
