"""Training batches from a dataset version's webdataset shards, in an order that is a function of the step.

Exactness by construction (no reader state to save): the batch of global step ``s`` on rank ``r``
depends only on ``(seed, phase, s, r)`` and the run's constants (batch size, steps per epoch,
number of data-loader workers ``W``, shard list):

- Steps are dealt to ``W`` streams: step ``s`` belongs to slot ``s % W``. In epoch ``e = s // I``
  (``I`` steps per epoch) slot ``k`` of rank ``r`` reads one *stream*: shards drawn with replacement
  (webdataset's "resampled" mode for multi-node training) by ``Random(seed, phase, e, r, k)``, from
  this stream's own part of the shard list when there are at least as many shards as streams
  (split by rank and worker) or from all shards otherwise, expanded into samples by webdataset's
  tar reader and shuffled by a seeded buffer. The n-th step of the slot in the epoch takes the
  stream's samples ``[n B, (n + 1) B)``.
- A data-loader worker serves one slot, so a run resumed at step ``s0`` restarts each stream at its
  epoch's beginning and skips the raw (undecoded) samples that the slot's earlier steps of that
  epoch used: at most one epoch of reading, no decoding.
- Each sample's augmentation is seeded with ``(seed, phase, s, r, i)`` and the step's masks with
  ``(seed, phase, s, r)``, so the crops are reproducible too.

An epoch has a fixed number of samples (``I x B x world size``), independent of the dataset size.
Changing ``W`` or the world size on resume changes the order from then on (still deterministic).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_catalog.image import open_image
from data_catalog.shard_index import ShardEntry, read_index

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "gif")
PHASE_IDS = {"main": 0, "highres": 1}


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy SeedSequence: well mixed, platform independent)."""
    words = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2)
    return int((int(words[0]) << 31) ^ int(words[1])) & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's and python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _open_shards(urls: Iterator[str]) -> Iterator[dict[str, Any]]:
    """``{"url", "stream"}`` per shard for webdataset's tar expander; each stream closed after use."""
    import fsspec

    for url in urls:
        with fsspec.open(url, "rb") as stream:
            yield {"url": url, "stream": stream}


def raw_sample_stream(
    shards: list[ShardEntry], seed: int, stream_id: int, n_streams: int, bufsize: int
) -> Iterator[dict]:
    """An infinite, shuffled stream of undecoded samples (``{"__key__", "jpg", "json", ...}``)."""
    from webdataset.filters import _shuffle
    from webdataset.tariterators import group_by_keys, tar_file_expander

    pool = [s.url for s in shards]
    if len(pool) >= n_streams:
        pool = pool[stream_id::n_streams]
    shard_rng = random.Random(derive_seed(seed, 1))

    def urls() -> Iterator[str]:
        while True:
            yield shard_rng.choice(pool)

    samples = group_by_keys(tar_file_expander(_open_shards(urls())))
    return _shuffle(samples, bufsize=bufsize, initial=bufsize, rng=random.Random(derive_seed(seed, 2)))


def decode_image(sample: dict[str, Any]) -> Image.Image:
    """THE image of a raw sample (``data_catalog.image.open_image``: upright RGB, transparency on
    white), so shards written before normalisation existed train on the same pixels; a clear error
    naming the sample when it holds no image or one that cannot be decoded."""
    for key in IMAGE_KEYS:
        if key in sample:
            try:
                return open_image(sample[key])
            except Exception as err:
                raise ValueError(
                    f"sample {sample.get('__key__')!r} of {sample.get('__url__')!r}: cannot decode its "
                    f"{key!r} image ({type(err).__name__}: {err})"
                ) from err
    raise ValueError(
        f"sample {sample.get('__key__')!r} of {sample.get('__url__')!r} holds no image "
        f"(keys {sorted(k for k in sample if not k.startswith('__'))}; expected one of {IMAGE_KEYS})"
    )


class StepBatches(IterableDataset):
    """Yields ``collate(samples, step)`` for global steps ``start_step .. end_step - 1`` of one rank.

    ``transform(image)`` makes one sample's crops (seeded per sample before the call);
    ``collate(list_of_transformed, step)`` makes the batch (seeded per step). Each batch also
    carries ``"step"`` and ``"keys"`` (the sample keys, for checks and tests).
    """

    def __init__(
        self,
        shards: list[ShardEntry],
        *,
        seed: int,
        phase: str,
        rank: int,
        world_size: int,
        num_workers: int,
        batch_size: int,
        iterations_per_epoch: int,
        start_step: int,
        end_step: int,
        transform: Callable[[Image.Image], Any],
        collate: Callable[[list[Any]], dict[str, Any]],
        shuffle_buffer: int = 1000,
    ) -> None:
        super().__init__()
        self.shards, self.seed, self.phase = shards, seed, PHASE_IDS[phase]
        self.rank, self.world_size, self.n_slots = rank, world_size, max(num_workers, 1)
        self.batch_size, self.iters = batch_size, iterations_per_epoch
        self.start_step, self.end_step = start_step, end_step
        self.transform, self.collate, self.shuffle_buffer = transform, collate, shuffle_buffer

    def _stream(self, epoch: int, slot: int) -> Iterator[dict]:
        seed = derive_seed(self.seed, self.phase, epoch, self.rank, slot)
        stream_id = self.rank * self.n_slots + slot
        return raw_sample_stream(
            self.shards, seed, stream_id, self.world_size * self.n_slots, self.shuffle_buffer
        )

    def _index_in_epoch(self, step: int, slot: int) -> int:
        """How many earlier steps of ``slot`` the epoch of ``step`` holds."""
        epoch_start = (step // self.iters) * self.iters
        first = epoch_start + (slot - epoch_start) % self.n_slots
        return (step - first) // self.n_slots

    def _batch(self, step: int, raw: list[dict]) -> dict[str, Any]:
        out = []
        for i, sample in enumerate(raw):
            seed_everything(derive_seed(self.seed, self.phase, step, self.rank, i, 7))
            out.append(self.transform(decode_image(sample)))
        seed_everything(derive_seed(self.seed, self.phase, step, self.rank, 11))
        batch = self.collate(out)
        batch["step"] = step
        batch["keys"] = [s["__key__"] for s in raw]
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if n_workers not in (1, self.n_slots) or (info is None and self.n_slots != 1):
            raise ValueError(f"StepBatches built for {self.n_slots} workers, runs with {n_workers}")
        stream, stream_epoch = None, -1
        for step in range(self.start_step + worker, self.end_step, n_workers):
            epoch, slot = step // self.iters, step % self.n_slots
            if epoch != stream_epoch:
                stream, stream_epoch = self._stream(epoch, slot), epoch
                for _ in range(self._index_in_epoch(step, slot) * self.batch_size):
                    next(stream)  # resume: skip what earlier steps of this epoch used, undecoded
            assert stream is not None
            yield self._batch(step, [next(stream) for _ in range(self.batch_size)])


def make_loader(dataset: StepBatches, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding the dataset's batches in step order (workers are dealt steps in turn)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),  # keeps the global RNG untouched
    )


def open_dataset(catalog: str | None, dataset: str) -> tuple[list[ShardEntry], dict[str, Any]]:
    """The shards of ``dataset`` (``NAME[:VERSION]`` in ``catalog``, or an index JSON path), with
    absolute urls, and its identity."""
    if dataset.endswith(".json"):
        index = read_index(dataset)
        meta = {"name": index.name or dataset, "version": index.version, "index_uri": dataset}
        return index.absolute_shards(), meta
    if catalog is None:
        raise ValueError(
            f"--dataset {dataset!r} names a catalog dataset: pass --catalog (or an index .json path)"
        )
    from data_catalog.catalog import Catalog
    from data_catalog.datasets import get_dataset, parse_dataset_ref

    name, version = parse_dataset_ref(dataset)
    record = get_dataset(Catalog(catalog), name, version)
    meta = {"name": record.name, "version": record.version, "index_uri": record.index_uri}
    return read_index(record.index_uri).absolute_shards(record.shards_uri), meta


def phase_crops(config: Any, phase: str) -> tuple[int, int, int]:
    """(global size, local size, batch size per device) of a phase."""
    hr = config.highres
    if phase == "highres":
        return (
            hr.size,
            hr.local_size or config.crops.local_size,
            hr.batch_size_per_device or config.train.batch_size_per_device,
        )
    return config.crops.global_size, config.crops.local_size, config.train.batch_size_per_device


def build_transform_and_collate(config: Any, phase: str) -> tuple[Callable, Callable]:
    """The augmentation and collate of ``config``'s objective for ``phase`` (``pretrain.objectives``)."""
    from pretrain.objectives import get_objective

    return get_objective(config.objective).build_data(config, phase)


def build_multicrop_data(config: Any, phase: str) -> tuple[Callable, Callable]:
    """DINOv2's multi-crop augmentation and the masking collate of ``config`` for ``phase``."""
    from functools import partial

    from pretrain.augment import MultiCropAugmentation
    from pretrain.collate import collate_data_and_cast
    from pretrain.masking import MaskingGenerator

    c = config.crops
    global_size, local_size, _ = phase_crops(config, phase)
    transform = MultiCropAugmentation(
        global_crops_scale=tuple(c.global_scale),
        local_crops_scale=tuple(c.local_scale),
        local_crops_number=c.local_number,
        global_crops_size=global_size,
        local_crops_size=local_size,
        blur_p=(c.global1_blur, c.global2_blur, c.local_blur),
        solarize_p=c.global2_solarize,
    )
    grid = global_size // config.model.patch_size
    collate = partial(
        collate_data_and_cast,
        mask_ratio_tuple=(config.masking.ratio_min, config.masking.ratio_max),
        mask_probability=config.masking.probability,
        n_tokens=grid * grid,
        mask_generator=MaskingGenerator(input_size=(grid, grid), max_num_patches=int(0.5 * grid * grid)),
        dtype=torch.float32,
    )
    return transform, collate


def build_loader(
    config: Any,
    phase: str,
    shards: list[ShardEntry],
    rank: int,
    world_size: int,
    start_step: int,
    end_step: int,
    pin_memory: bool = False,
) -> DataLoader:
    """The step-ordered loader of one rank for global steps ``start_step .. end_step - 1``."""
    transform, collate = build_transform_and_collate(config, phase)
    t = config.train
    dataset = StepBatches(
        shards,
        seed=t.seed,
        phase=phase,
        rank=rank,
        world_size=world_size,
        num_workers=t.num_workers,
        batch_size=phase_crops(config, phase)[2],
        iterations_per_epoch=t.iterations_per_epoch,
        start_step=start_step,
        end_step=end_step,
        transform=transform,
        collate=collate,
        shuffle_buffer=t.shuffle_buffer,
    )
    return make_loader(dataset, t.num_workers, pin_memory)
