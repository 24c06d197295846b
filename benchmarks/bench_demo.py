"""The demo flow (``dinoflow demo``) per stage: wall time and peak memory, and what Prefect adds.

Run: ``python -m benchmarks.bench_demo [--workdir DIR] [--no-direct-pretrain]``

1. The whole demo flow once (``flows.demo.run_demo``, a fresh workdir, an ephemeral Prefect API on
   a fresh ``PREFECT_HOME``). A sampling thread (0.2 s) records the RSS of this process and its
   descendants (Dask workers, torchrun and its rank and loader processes; the Prefect server
   process excluded, its memory is reported apart). After the run, each sub-flow and task run's
   start and end come from the Prefect API: a stage's wall time is its run's, its peak the largest
   tree RSS sampled inside that window.
2. The same stages as plain library calls on the same pool, in the same process, right after:
   ingest (same Dask LocalCluster size), both embedders, hash dedup with the copy-vector confirmer,
   semantic dedup, leak removal, hierarchical k-means with the balanced sample, the dataset version (webdataset
   shards), into a second catalog; the same torchrun command on the flow's dataset version into a
   second run directory; the evaluation of the flow's exported teacher (same benchmark, baselines,
   figures) with a fresh feature cache. The flow's extra work is orchestration, its artifacts (count
   tables, progress, inline PNGs) and the cluster figures the direct calls do not draw.
3. The artifacts the run left in the API, largest first: what the UI loads for each page.

Prefect's share of a stage = the flow's window minus the direct call's wall time (both on this
machine in this run; on a loaded machine the difference carries the load's noise).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import REPO, machine, write_result
from flows.run_report import artifact_sizes, run_windows

OUT = REPO / "benchmarks" / "results" / "demo.md"
STAGES = ("curate", "ingest", "plan-partitions", "ingest-partition", "commit-ingest", "embed", "hash-dedup", "semantic-dedup",
          "leak-removal", "cluster", "dataset-version", "pretrain", "torchrun", "evaluate", "write-report")  # fmt: skip


class TreeSampler(threading.Thread):
    """RSS (MB) of this process tree every ``period`` s, the Prefect server's processes apart."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period, self.stopped, self.server_peak = period, threading.Event(), 0.0
        self.samples: list[tuple[float, float]] = []

    def run(self) -> None:
        me = psutil.Process()
        while not self.stopped.is_set():
            tree, server = 0.0, 0.0
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss / 2**20
                    is_server = "uvicorn" in " ".join(p.cmdline())
                except psutil.Error:
                    continue
                server += rss if is_server else 0.0
                tree += 0.0 if is_server else rss
            self.samples.append((time.time(), tree))
            self.server_peak = max(self.server_peak, server)
            self.stopped.wait(self.period)

    def peak(self, start: float, end: float) -> float:
        """Largest sample inside the window; for a window shorter than the period, the sample nearest it."""
        inside = [mb for t, mb in self.samples if start <= t <= end]
        if inside or not self.samples:
            return max(inside, default=0.0)
        return min(self.samples, key=lambda s: min(abs(s[0] - start), abs(s[0] - end)))[1]


def stage_of(name: str) -> str | None:
    """A run's stage: flow names as they are, task run names without their ``-abc`` suffix."""
    if name == "curate-and-pretrain":
        return name
    for stage in STAGES:
        if name == stage or name.startswith(stage + "-"):
            return stage
    return None


def flow_stages(sampler: TreeSampler) -> dict[str, dict[str, float]]:
    """Per stage: wall time (first start to last end of its runs; tasks run once, ingest partitions
    in parallel) and the peak tree RSS inside that window."""
    out: dict[str, dict[str, float]] = {}
    for row in run_windows():
        stage = stage_of(row["name"])
        if stage is None:
            continue
        win = out.setdefault(stage, {"start": row["start"], "end": row["end"]})
        win["start"], win["end"] = min(win["start"], row["start"]), max(win["end"], row["end"])
    if "plan-partitions" in out and "commit-ingest" in out:  # ingest = plan -> partitions -> commit
        out["ingest"] = {"start": out["plan-partitions"]["start"], "end": out["commit-ingest"]["end"]}
    for win in out.values():
        win["wall"] = win["end"] - win["start"]
        win["peak_mb"] = sampler.peak(win["start"], win["end"])
    return out


@contextmanager
def timed(name: str, sampler: TreeSampler, out: dict[str, dict[str, float]]) -> Iterator[None]:
    start = time.time()
    yield
    end = time.time()
    out[name] = {"wall": end - start, "peak_mb": sampler.peak(start, end)}


def direct_curation(config: Any, catalog_dir: Path, sampler: TreeSampler) -> dict[str, dict[str, float]]:
    """The flow's curation stages as library calls into a second catalog (same pool, same settings)."""
    from curation import hashdedup, ingest, parallel
    from curation.embed import embed_catalog, load_embedder
    from curation.neardup import apply_semantic_dedup, phash_confirmer
    from data_catalog.catalog import Catalog
    from flows.semantic import checkpoint_for

    cfg = config.model_copy(update={"catalog": str(catalog_dir)})
    catalog, cur, run_id = Catalog(str(catalog_dir)), cfg.curate, "direct"
    out: dict[str, dict[str, float]] = {}
    with timed("ingest", sampler, out):
        ing = cur.ingest
        with parallel.dask_session(None, ing.n_workers, ing.threads_per_worker) as address:
            ingest.ingest(catalog, str(cfg.source), cur, run_id, address)
    ids = {}
    with timed("embed", sampler, out):
        for role in ("semantic", "copy"):
            descriptor = load_embedder(checkpoint_for(cfg, role), role)
            embed_catalog(catalog, descriptor, cur.embed, run_id)
            ids[role] = descriptor.model_id
    with timed("hash-dedup", sampler, out):
        sem = cur.semdedup
        confirm = phash_confirmer(
            catalog, ids["copy"], sem.confirm_threshold or sem.threshold, cur.dedup.phash_radius
        )
        hashdedup.apply_hash_dedup(catalog, cur.dedup, run_id, confirm=confirm)
    with timed("semantic-dedup", sampler, out):
        apply_semantic_dedup(catalog, ids["copy"], sem, run_id)
    if cur.leaks.eval_sets:
        from curation.leaks import apply_leak_removal

        with timed("leak-removal", sampler, out):
            descriptor = load_embedder(checkpoint_for(cfg, "copy"), "copy")
            sets, leaks = dict(cur.leaks.eval_sets), cur.leaks
            apply_leak_removal(catalog, descriptor, sets, leaks, run_id, cur.embed, mirror=leaks.mirror)
    out.update(direct_selection(cfg, catalog, ids["semantic"], run_id, sampler))
    return out


def direct_selection(
    cfg: Any, catalog: Any, model_id: str, run_id: str, sampler: TreeSampler
) -> dict[str, Any]:
    """Hierarchical k-means, the balanced sample and its dataset version, as library calls."""
    import pyarrow as pa

    from curation.dataset_version import create_dataset_version
    from curation.kmeans import hierarchical_kmeans
    from data_catalog.clusters import write_clusters
    from flows.clustering import balanced_selection, semantic_pool

    out: dict[str, dict[str, float]] = {}
    with timed("cluster", sampler, out):
        pool, x, _ = semantic_pool(catalog, model_id)
        kcfg = cfg.curate.cluster.fitted(len(x))
        h = hierarchical_kmeans(x, kcfg)
        ids = pool.column("image_id").to_pylist()
        write_clusters(catalog, run_id, model_id, ids, h.levels_matrix(), h.distances, kcfg.model_dump())
        picked = balanced_selection(cfg, pool, h, x)
    stage = cfg.dataset
    with timed("dataset-version", sampler, out):
        create_dataset_version(
            catalog, stage.name, selection=pool.take(pa.array(picked, pa.int64())), seed=stage.seed,
            shard_max_bytes=stage.shard_max_bytes, reencode_max_side=stage.reencode_max_side,
        )  # fmt: skip
    return out


def direct_evaluate(
    config: Any, result: dict[str, Any], workdir: Path, sampler: TreeSampler
) -> dict[str, Any]:
    """The flow's evaluation of its exported teacher (each run benchmark, the same baselines and
    figures) with a fresh feature cache, as library calls."""
    from evaluation.datasets import load_benchmark
    from evaluation.evaluate import evaluate_checkpoint
    from evaluation.reports import write_reports

    cfg = config.evaluate.model_copy(update={"cache_dir": str(workdir / "eval-cache-direct")})
    teacher = str(Path(result["run_dir"]) / "teacher_backbone.safetensors")
    out: dict[str, dict[str, float]] = {}
    with timed("evaluate", sampler, out):
        for name in cfg.run_benchmarks:
            bench = load_benchmark(name, cfg.benchmark(name), cfg.cache_root())
            res = evaluate_checkpoint(teacher, bench, cfg)
            write_reports(res, bench, workdir / "eval-direct" / name, cfg)
    return out


def direct_pretrain(config: Any, result: dict[str, Any], sampler: TreeSampler) -> dict[str, dict[str, float]]:
    """The flow's torchrun command on the same dataset version, into a second run directory."""
    from flows.pretrain_stage import train_args, write_train_config
    from pretrain import launch

    run_dir = Path(result["run_dir"]).with_name(Path(result["run_dir"]).name + "-direct")
    write_train_config(config.pretrain, run_dir)
    cmd = launch.torchrun_command(train_args(config.catalog, result["dataset"], config.pretrain, run_dir), 1)
    out: dict[str, dict[str, float]] = {}
    with timed("torchrun", sampler, out):
        code, tail = launch.run_streaming(cmd)
    if code != 0:
        raise RuntimeError("direct torchrun failed:\n" + "\n".join(tail[-20:]))
    return out


def phase_times(run_dir: Path) -> str:
    """Training phases' wall time from the trainer's own ``metrics.jsonl`` clock (first logged step
    to each phase's last): the part of the torchrun task that is training, not start-up."""
    from pretrain.metrics import METRICS_FILE, read_metrics

    records = [r for r in read_metrics(run_dir / METRICS_FILE) if "time" in r and "phase" in r]
    if not records:
        return ""
    last: dict[str, dict[str, Any]] = {}
    for r in records:
        last[str(r["phase"])] = r
    t, parts = records[0]["time"], []
    for phase, r in last.items():
        parts.append(f"{phase} to step {r['step']}: {r['time'] - t:.0f} s")
        t = r["time"]
    return f"training phases (trainer clock, from step {records[0]['step']}): " + ", ".join(parts) + "\n\n"


def table(flow: dict[str, dict[str, float]], direct: dict[str, dict[str, float]]) -> str:
    lines = ["| stage | flow wall (s) | flow peak RSS (MB) | direct wall (s) | direct peak RSS (MB) | Prefect adds (s) |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for stage in ("curate-and-pretrain", *STAGES):
        if stage not in flow:
            continue
        f, d = flow[stage], direct.get(stage)
        extra = (f"{d['wall']:.1f} | {d['peak_mb']:.0f} | {f['wall'] - d['wall']:+.1f}") if d else "– | – | –"
        lines.append(f"| {stage} | {f['wall']:.1f} | {f['peak_mb']:.0f} | {extra} |")
    return "\n".join(lines) + "\n"


def pages_table(pages: list[dict[str, Any]], top: int = 8) -> str:
    """The largest artifacts (what the UI loads per page) and the total."""
    lines = [f"artifacts: {len(pages)}, {sum(p['bytes'] for p in pages) / 1e6:.2f} MB in all; the largest:", "",
             "| artifact | type | size (kB) |", "|---|---|---:|"]  # fmt: skip
    lines += [f"| {p['key']} | {p['type']} | {p['bytes'] / 1e3:.0f} |" for p in pages[:top]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="fresh folder (default: a temp dir)")
    parser.add_argument("--no-direct-pretrain", action="store_true", help="skip repeating torchrun")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-demo-"))
    os.environ.setdefault("PREFECT_HOME", str(workdir / "prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.demo import demo_config, run_demo

    load = os.getloadavg()
    sampler = TreeSampler()
    sampler.start()
    start = time.time()
    result = run_demo(workdir, None, pretrain=True)
    total = time.time() - start
    flow = flow_stages(sampler)
    config = demo_config(workdir.resolve(), True)
    direct = direct_curation(config, workdir / "catalog-direct", sampler)
    if not args.no_direct_pretrain:
        direct.update(direct_pretrain(config, result, sampler))
    if config.evaluate.enabled:
        direct.update(direct_evaluate(config, result, workdir, sampler))
    sampler.stopped.set()
    pages = artifact_sizes()
    text = (f"machine: {machine()}\n\ncommand: `python -m benchmarks.bench_demo`; load average before: "
            f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, after: {os.getloadavg()[0]:.2f}\n\n"
            f"demo (flow + report) wall: {total:.0f} s; Prefect server process peak RSS {sampler.server_peak:.0f} MB "
            "(not in the table)\n\n" + phase_times(Path(result["run_dir"])) + table(flow, direct)
            + "\n" + pages_table(pages))  # fmt: skip
    write_result(args.out, text)


if __name__ == "__main__":
    main()
