"""Where the embed stage runs, and its inner loop: this process, one process per GPU, or Dask.

The inner loop (:func:`embed_rows`), the same everywhere: rows (image_id, uri) in chunks of
``cfg.partition_size``; per chunk, ``cfg.decode_workers`` threads read each uri's bytes
(``data_catalog.uris.UriReader``), open them with the one image opener (JPEGs DCT-draft decoded
to at least the descriptor's S x S when ``cfg.jpeg_draft``) and preprocess them, a bounded number
ahead of the forward pass (PIL and torch release the GIL, so decoding overlaps the network);
batches of ``cfg.batch_size`` go through the descriptor (bf16 autocast on CUDA); the chunk's
vectors are committed in one ``write_embeddings`` before the next chunk starts.

Placement (:func:`run_embedding`):

- ``dask_address`` given (a scheduler address, or ``"sync"``): one ``curation.parallel`` task per
  chunk; each worker loads the descriptor once (from its file, or unpickled when it was built in
  memory), embeds and commits its chunk (commit races are retried by the catalog);
- else the devices of :func:`plan_devices`: several CUDA devices -> one spawned process per device,
  chunks dealt round-robin, each process committing its own; one device -> this process.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from data_catalog.catalog import Catalog
from data_catalog.embeddings import write_embeddings
from data_catalog.image import open_image
from data_catalog.uris import UriReader
from pretrain.models.descriptors import Descriptor, load_descriptor

Row = dict[str, str]  # {"image_id", "uri"}
# ("path", file, input_size, model_id) or ("object", descriptor, None, model_id)
Spec = tuple[str, Any, int | None, str]
_LOADED: dict[tuple[str, int | None], Descriptor] = {}  # per worker process: descriptors by file
# descriptor -> (path, input_size) it was loaded from (load_embedder records it)
_SOURCES: weakref.WeakKeyDictionary[Descriptor, tuple[str, int | None]] = weakref.WeakKeyDictionary()


def plan_devices(device: str, num_gpus: int | None, cuda_count: int) -> list[str]:
    """The devices to embed on: ``["cpu"]``, one ``["cuda:N"]``, or ``num_gpus`` (None = all of
    ``cuda_count``) ``cuda:0..`` when ``device`` is ``"auto"`` or ``"cuda"`` and CUDA is there.
    Pure (``cuda_count`` given), so the plan is testable on a machine without GPUs."""
    if device == "cpu" or (device == "auto" and cuda_count == 0):
        return ["cpu"]
    if device.startswith("cuda:"):
        index = int(device[5:]) if device[5:].isdigit() else -1
        if not 0 <= index < cuda_count:
            raise ValueError(f"embed device {device!r}: {cuda_count} CUDA device(s) visible")
        return [device]
    if device not in ("auto", "cuda"):
        raise ValueError(f"embed device {device!r} is not one of 'auto', 'cpu', 'cuda', 'cuda:N'")
    if cuda_count == 0:
        raise ValueError("embed device 'cuda': no CUDA device visible (torch.cuda.is_available() is False)")
    n = cuda_count if num_gpus is None else num_gpus
    if not 1 <= n <= cuda_count:
        raise ValueError(f"embed num_gpus {num_gpus}: {cuda_count} CUDA device(s) visible")
    return [f"cuda:{i}" for i in range(n)]


def cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(spec: str) -> str:
    """One device for this process: ``"auto"`` -> ``"cuda:0"`` when CUDA is there else ``"cpu"``;
    ``"cpu"``, ``"cuda"`` (-> ``"cuda:0"``), ``"cuda:N"`` checked against what is visible."""
    return plan_devices(spec, None, cuda_count())[0]


def use_bf16(device: str, precision: str) -> bool:
    """bf16 autocast: ``"auto"`` on CUDA, ``"bf16"`` anywhere (CPU autocast too), never ``"fp32"``."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"embed precision {precision!r} is not one of 'auto', 'fp32', 'bf16'")
    return precision == "bf16" or (precision == "auto" and device.startswith("cuda"))


@torch.inference_mode()
def forward(descriptor: Descriptor, batch: torch.Tensor, device: str, bf16: bool) -> np.ndarray:
    """[B, D] float32 unit rows of a preprocessed batch [B, 3, S, S] on ``device`` (where the
    descriptor's module must be already), under bf16 autocast when ``bf16``."""
    x = batch.to(device, non_blocking=device.startswith("cuda"))
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
        out = descriptor(x)
    out = torch.nn.functional.normalize(out.float(), dim=1)  # again after bf16 rounding
    return np.ascontiguousarray(out.cpu().numpy(), dtype=np.float32)


def remember_source(descriptor: Descriptor, path: str | Path, input_size: int | None) -> None:
    """Record the file ``descriptor`` was loaded from, so worker processes can load it again."""
    _SOURCES[descriptor] = (str(Path(path).resolve()), input_size)


def chunks(rows: pa.Table, size: int) -> list[pa.Table]:
    """``rows`` (image_id, uri) in slices of ``size``, each compacted (``take``), so that pickled for
    another process or a Dask worker it carries its own rows only, not the whole table's buffers."""
    return [
        rows.take(pa.array(np.arange(i, min(i + size, rows.num_rows)))) for i in range(0, rows.num_rows, size)
    ]


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load(reader: UriReader, uri: str, descriptor: Descriptor, draft: bool) -> torch.Tensor:
    """[3, S, S]: the uri's bytes, opened by the one opener, preprocessed by the descriptor."""
    side = descriptor.input_size
    return descriptor.preprocess(open_image(reader.read(uri), draft=(side, side) if draft else None))


def decoded(
    reader: UriReader, rows: list[Row], descriptor: Descriptor, threads: int, draft: bool, ahead: int
) -> Iterator[tuple[Row, torch.Tensor | str]]:
    """(row, preprocessed image or error text) for each row in order, decoded by ``threads`` threads
    at most ``ahead`` rows before the consumer."""

    def result(future: Future[torch.Tensor]) -> torch.Tensor | str:
        try:
            return future.result()
        except Exception as exc:  # any unreadable file is a listed failure, never a crash
            return _error_text(exc)

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="embed-decode")
    pending: deque[tuple[Row, Future[torch.Tensor]]] = deque()
    try:
        for row in rows:
            pending.append((row, pool.submit(_load, reader, row["uri"], descriptor, draft)))
            if len(pending) >= ahead:
                done, future = pending.popleft()
                yield done, result(future)
        while pending:
            done, future = pending.popleft()
            yield done, result(future)
    finally:  # the consumer stopped (an error, an interrupt): drop the decodes not yet started
        pool.shutdown(wait=True, cancel_futures=True)


Failure = dict[str, str]  # {"image_id", "uri", "error"}


def _embed_chunk(
    reader: UriReader,
    descriptor: Descriptor,
    chunk: list[Row],
    cfg: Any,
    device: str,
    tick: Callable[[int], None],
) -> tuple[list[str], np.ndarray, list[Failure]]:
    """(ids, vectors [n, D], failures) of one chunk: decoded ahead in threads, forwarded in batches."""
    bf16, pin = use_bf16(device, cfg.precision), device.startswith("cuda")
    ahead = max(2 * cfg.batch_size, 4 * cfg.decode_workers)
    ids: list[str] = []
    vectors = [np.zeros((0, descriptor.dim), np.float32)]
    failed: list[Failure] = []
    batch: list[torch.Tensor] = []
    draft = bool(cfg.jpeg_draft)
    stream = decoded(reader, chunk, descriptor, cfg.decode_workers, draft, ahead)
    for n, (row, image) in enumerate(stream, start=1):
        if isinstance(image, str):
            failed.append({"image_id": row["image_id"], "uri": row["uri"], "error": image})
            tick(1)
        else:
            batch.append(image)
            ids.append(row["image_id"])
        if batch and (len(batch) == cfg.batch_size or n == len(chunk)):
            x = torch.stack(batch)
            vectors.append(forward(descriptor, x.pin_memory() if pin else x, device, bf16))
            tick(len(batch))
            batch = []
    return ids, np.concatenate(vectors), failed


def embed_rows(
    catalog: Catalog,
    descriptor: Descriptor,
    rows: pa.Table,
    cfg: Any,
    run_id: str,
    device: str,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, list[Failure]]:
    """Embed and commit ``rows`` chunk by chunk on ``device`` (the descriptor already there) ->
    (vectors inserted, failures); ``on_progress(n)`` after each batch and failure with the number of
    rows it finished."""
    inserted, failed = 0, []
    tick = on_progress or (lambda n: None)
    for part in chunks(rows, cfg.partition_size):
        chunk: list[Row] = part.to_pylist()
        with UriReader(wanted=[r["uri"] for r in chunk], storage_options=catalog.storage_options) as reader:
            ids, vectors, fails = _embed_chunk(reader, descriptor, chunk, cfg, device, tick)
        failed += fails
        if ids:
            inserted += write_embeddings(
                catalog, descriptor.model_id, ids, vectors, run_id, cfg.storage_dtype
            )
    return inserted, failed


def spec_of(descriptor: Descriptor) -> Spec:
    """How another process gets the same descriptor: its file when loaded by ``load_embedder``, else
    the object itself (pickled: an in-memory backbone descriptor)."""
    source = _SOURCES.get(descriptor)
    if source is not None:
        return ("path", source[0], source[1], descriptor.model_id)
    return ("object", descriptor, None, descriptor.model_id)


def load_spec(spec: Spec) -> Descriptor:
    """The descriptor of ``spec`` (loaded once per process); a file whose model id changed since the
    parent loaded it (rewritten meanwhile) is an error."""
    kind, what, input_size, model_id = spec
    if kind == "object":
        return what
    key = (str(what), input_size)
    if key not in _LOADED:
        _LOADED[key] = load_descriptor(what, input_size=input_size)
    if _LOADED[key].model_id != model_id:
        raise RuntimeError(f"{what}: now holds {_LOADED[key].model_id}, not {model_id} (file changed)")
    return _LOADED[key]


def _dask_task(catalog: Catalog, spec: Spec, rows: pa.Table, cfg: Any, run_id: str) -> tuple[int, list]:
    """One chunk on a Dask worker ("auto": the worker's GPU when it has one)."""
    device = resolve_device(cfg.device)
    descriptor = load_spec(spec).to(device)
    return embed_rows(catalog, descriptor, rows, cfg, run_id, device)


def _process_main(
    rank: int, device: str, catalog: Catalog, spec: Spec, rows: pa.Table, cfg: Any, run_id: str, out: Any
) -> None:
    """A spawned per-device process: embeds its rows, reporting progress and the result on ``out``."""
    try:
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        descriptor = load_spec(spec).to(device)
        inserted, failed = embed_rows(
            catalog, descriptor, rows, cfg, run_id, device, lambda n: out.put(("progress", rank, n))
        )
        out.put(("done", rank, (inserted, failed)))
    except BaseException as exc:  # reported to the parent, which raises it
        out.put(("error", rank, _error_text(exc)))


def _on_processes(
    devices: list[str],
    catalog: Catalog,
    spec: Spec,
    rows: pa.Table,
    cfg: Any,
    run_id: str,
    progress: Callable[[int], None],
) -> tuple[int, list[Failure]]:
    """One spawned process per device, chunks dealt round-robin; the first failure is raised."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    out = ctx.Queue()
    parts = chunks(rows, cfg.partition_size)
    devices = devices[: len(parts)]  # fewer chunks than devices: the rest stay idle
    procs = []
    for rank, device in enumerate(devices):
        mine = pa.concat_tables(parts[rank :: len(devices)])  # whole chunks: the same commits as here
        args = (rank, device, catalog, spec, mine, cfg, run_id, out)
        procs.append(ctx.Process(target=_process_main, args=args, name=f"embed-{device}", daemon=True))
    for proc in procs:
        proc.start()
    inserted, failed, pending = 0, list[Failure](), set(range(len(procs)))
    try:
        while pending:
            try:
                kind, rank, value = out.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [r for r in pending if not procs[r].is_alive() and out.empty()]
                if dead:
                    code = procs[dead[0]].exitcode
                    raise RuntimeError(
                        f"embed process on {devices[dead[0]]} exited with code {code}"
                    ) from None
                continue
            if kind == "progress":
                progress(value)
            elif kind == "done":
                inserted, failed = inserted + value[0], failed + value[1]
                pending.discard(rank)
            else:
                raise RuntimeError(f"embed process on {devices[rank]} failed: {value}")
    finally:
        for proc in procs:
            if proc.is_alive() and pending:
                proc.terminate()
            proc.join()
    return inserted, failed


def run_embedding(
    catalog: Catalog,
    descriptor: Descriptor,
    rows: pa.Table,
    cfg: Any,
    run_id: str,
    progress: Callable[[int, int], None] | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Embed ``rows`` (an arrow table: image_id, uri) where ``cfg`` and ``dask_address`` say (module docstring) -> ``{"embedded",
    "failed", "device", "bf16", "processes", "chunks"}`` (``processes``: local processes, None on
    Dask; ``chunks``: commits of up to ``cfg.partition_size`` vectors, one Dask task each there);
    ``progress(done, total)`` from ``(0, total)``."""
    total, done = rows.num_rows, [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(min(done[0], total), total)

    if progress is not None:
        progress(0, total)
    if dask_address is not None:
        from curation.parallel import run_tasks

        parts = chunks(rows, cfg.partition_size)
        sizes = [p.num_rows for p in parts]
        spec = spec_of(descriptor)
        results = run_tasks(
            _dask_task,
            [(catalog, spec, part, cfg, run_id) for part in parts],
            client_or_address=dask_address,
            progress=lambda k, _n: progress(sum(sizes[:k]), total) if progress and k else None,
        )
        failed = [f for _, fails in results for f in fails]
        place = f"dask {dask_address}"
        return {"embedded": sum(r[0] for r in results), "failed": failed, "device": place,
                "bf16": None, "processes": None, "chunks": len(parts)}  # fmt: skip
    devices = plan_devices(cfg.device, None, cuda_count())
    if total and len(devices) > 1:
        inserted, failed = _on_processes(devices, catalog, spec_of(descriptor), rows, cfg, run_id, advance)
    else:
        devices = [resolve_device(devices[0])]
        descriptor.to(devices[0])
        inserted, failed = embed_rows(catalog, descriptor, rows, cfg, run_id, devices[0], advance)
    return {"embedded": inserted, "failed": failed, "device": ",".join(devices),
            "bf16": use_bf16(devices[0], cfg.precision), "processes": len(devices),
            "chunks": -(-total // cfg.partition_size)}  # fmt: skip
