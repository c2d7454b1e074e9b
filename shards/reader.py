"""The one shard reader used by every training stage: a `webdataset.DataPipeline` of small stages.

Batches are dicts {"pixels": FloatTensor[B, 3, H, W] in [-1, 1], "caption": list[str],
"meta": list[dict]} where meta is each sample's json.

    pipe = make_pipeline(shard_urls("data/faces"), batch_size=32, splits=["base"])
    for batch in pipe: ...

For several processes (DeepSpeed ranks and/or DataLoader workers) use `resampled=True`: every
rank/worker draws shards with replacement from its own seed, so no rank runs dry before another.
Every random choice of a stream (shards, shuffle, pairing, augmentation) is seeded from
(seed, rank, worker), so that no two readers repeat each other, and a stream read in-process is
a function of its seed alone: `skip` resumes it exactly where `pipe.position` said it was.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from shards.images import resize_center_crop
from shards.splits import check_splits
from shards.writer import IMAGE_EXTS, read_manifest

logger = logging.getLogger(__name__)


class CountingHandler:
    """WebDataset error handler that counts bad samples and keeps going.

    Logs the first `log_first` errors and keeps their messages in `.errors`; never sleeps or
    warns per sample. With DataLoader workers each worker holds its own copy of the counter.
    """

    def __init__(self, log_first: int = 3) -> None:
        self.log_first = log_first
        self.count = 0
        self.errors: list[str] = []
        # set while a resumed stream passes over samples it read before: their errors are counted already
        self.replaying = False

    def __call__(self, exn: BaseException) -> bool:
        if self.replaying:
            return True
        self.count += 1
        if len(self.errors) < self.log_first:
            self.errors.append(describe_error(exn))
            logger.warning("skipping bad sample (%d so far): %s", self.count, self.errors[-1])
        return True


def describe_error(exn: BaseException) -> str:
    """One line for a bad sample; webdataset's DecodingError says nothing itself, its cause and fields do."""
    if isinstance(exn, wds.autodecode.DecodingError):
        cause = exn.__cause__
        reason = f"{type(cause).__name__}: {cause}" if cause is not None else "undecodable"
        return f"sample {exn.key!r} ({exn.k}) of {exn.url}: {reason}"
    return f"{type(exn).__name__}: {exn}"


def shard_urls(directory: str | Path) -> list[str]:
    """Paths of the shards listed in `directory/manifest.json`, in manifest order."""
    manifest = read_manifest(directory)
    urls = [str(Path(directory) / s["file"]) for s in manifest["shards"]]
    if not urls:
        raise ValueError(f"the shard set in {directory} has no shards (num_samples={manifest['num_samples']}).")
    return urls


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else info.id


def stream_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (seed, rank, worker, purpose...): distinct tuples, unrelated streams.

    Sums like `seed + rank` collide (seed 1 rank 0 is seed 0 rank 1); a hash does not.
    """
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


class _Position:
    """Samples (those past the split filter) that entered the decode stage of an in-process stream."""

    def __init__(self) -> None:
        self.samples = 0


def _skip(count: int, position: _Position, handler: Callable[[BaseException], bool]):
    """Pass over the first `count` samples without decoding their images; number the rest (`__index__`).

    The stages before this one are replayed exactly (same seeds), so after the skip the stream
    goes on as it did; errors met while replaying are not counted twice (see CountingHandler).
    """

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        it = iter(src)
        counting = isinstance(handler, CountingHandler)
        if counting:
            handler.replaying = count > 0
        try:
            for _ in range(count):
                next(it)
                position.samples += 1
        except StopIteration:
            return
        finally:
            if counting:
                handler.replaying = False
        for sample in it:
            index = position.samples
            position.samples += 1
            yield {**sample, "__index__": index}

    return stage


class _Shuffle:
    """A shuffle buffer seeded per (seed, rank, worker) when iterated, and anew every epoch.

    wds.detshuffle is seeded when the pipeline is built, before DataLoader workers exist, so
    all workers of a rank would shuffle alike.
    """

    def __init__(self, bufsize: int, initial: int, seed: int, rank: int) -> None:
        self.bufsize, self.initial, self.seed, self.rank = bufsize, initial, seed, rank
        self.epoch = -1

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        self.epoch += 1
        rng = random.Random(stream_seed(self.seed, self.rank, _worker_id(), self.epoch, "shuffle"))
        return wds.shuffle(self.bufsize, self.initial, rng=rng)(src)


def _batched(batch_size: int, partial: bool):
    """Batches that leave the stream exactly after their last sample (wds.batched reads one sample ahead)."""

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        batch: list[dict] = []
        for example in src:
            batch.append(example)
            if len(batch) == batch_size:
                yield collate(batch)
                batch = []
        if batch and partial:
            yield collate(batch)

    return stage


def _split_by_rank(rank: int, world_size: int) -> Callable[[Iterable], Iterator]:
    def stage(src: Iterable) -> Iterator:
        yield from islice(src, rank, None, world_size)

    return stage


def _augment(arr: np.ndarray, rng: random.Random) -> np.ndarray:
    """Small translation (edge-padded) and color jitter; no flips: faces carry one-sided marks."""
    size = arr.shape[0]
    pad = max(1, size // 16)
    dx, dy = rng.randint(-pad, pad), rng.randint(-pad, pad)
    padded = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    arr = padded[pad + dy : pad + dy + size, pad + dx : pad + dx + size]
    gray = arr.mean(axis=2, keepdims=True)
    arr = gray + (arr - gray) * rng.uniform(0.9, 1.1)  # saturation
    arr = (arr - arr.mean()) * rng.uniform(0.9, 1.1) + arr.mean()  # contrast
    return np.clip(arr * rng.uniform(0.9, 1.1), 0.0, 1.0)  # brightness


def _identity_of(sample: dict) -> str | None:
    meta = sample.get("json")
    return meta.get("identity") if isinstance(meta, dict) else None


def _pair_views(seed: int, rank: int) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """Pair each sample with another view of its identity: it gains `target.<ext>` and `json["target"]`.

    Shards hold an identity's views next to each other (`e4t shards synth` writes them so), so
    grouping consecutive samples finds them without an index. Identities with one view are dropped.
    """

    def pair(group: list[dict], rng: random.Random) -> Iterator[dict]:
        for i, sample in enumerate(group):
            other = group[rng.choice([j for j in range(len(group)) if j != i])]
            ext = next((e for e in IMAGE_EXTS if e in other), None)
            if ext is None:
                continue  # counted as bad by the example stage, which sees no target
            yield {**sample, f"target.{ext}": other[ext], "json": {**sample["json"], "target": other["json"]}}

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        rng = random.Random(stream_seed(seed, rank, _worker_id(), "pairs"))
        group: list[dict] = []
        for sample in src:
            if group and _identity_of(sample) != _identity_of(group[0]):
                if len(group) > 1:
                    yield from pair(group, rng)
                group = []
            group.append(sample)
        if len(group) > 1:
            yield from pair(group, rng)

    return stage


def _to_examples(image_size: int, augment: bool, seed: int, rank: int, handler: Callable[[BaseException], bool]):
    def stage(src: Iterable[dict]) -> Iterator[dict]:
        worker = _worker_id()  # known only at iteration time: workers do not repeat each other's jitter
        for sample in src:
            try:
                # one generator per sample, seeded by its place in the stream: a resumed stream that
                # skipped samples jitters the next ones as the uninterrupted stream did
                rng = random.Random(stream_seed(seed, rank, worker, sample["__index__"], "augment"))
                ext = next((e for e in IMAGE_EXTS if e in sample), None)
                meta = sample.get("json")
                if ext is None or not isinstance(meta, dict) or "caption" not in meta:
                    raise ValueError(
                        f"sample {sample.get('__key__')!r} must have an image ({IMAGE_EXTS}) and a json with "
                        f"a caption but has {sorted(k for k in sample if not k.startswith('__'))}."
                    )
                example = {"pixels": _pixels(sample[ext], image_size, augment, rng), "caption": meta["caption"]}
                target = next((f"target.{e}" for e in IMAGE_EXTS if f"target.{e}" in sample), None)
                if target is not None:  # never jittered: it is what the base must draw (see `make_pipeline`)
                    example["target_pixels"] = _pixels(sample[target], image_size, False, rng)
                yield {**example, "meta": meta}
            except Exception as exn:  # the handler decides what is fatal
                if handler(exn):
                    continue
                raise

    return stage


def _pixels(image, image_size: int, augment: bool, rng: random.Random) -> torch.Tensor:
    arr = np.asarray(resize_center_crop(image, image_size), dtype=np.float32) / 255.0
    if augment:
        arr = _augment(arr, rng)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))) * 2.0 - 1.0


def collate(examples: list[dict]) -> dict:
    """Stack examples into {"pixels": [B,3,H,W], "caption": [...], "meta": [...]} (+ "target_pixels" for pairs)."""
    batch = {
        "pixels": torch.stack([e["pixels"] for e in examples]),
        "caption": [e["caption"] for e in examples],
        "meta": [e["meta"] for e in examples],
    }
    if all("target_pixels" in e for e in examples):
        batch["target_pixels"] = torch.stack([e["target_pixels"] for e in examples])
    return batch


def make_pipeline(
    urls: Sequence[str],
    *,
    batch_size: int,
    image_size: int = 64,
    splits: Sequence[str] | None = None,
    resampled: bool = False,
    shuffle: int = 1000,
    augment: bool = False,
    seed: int = 0,
    world_size: int | None = None,
    rank: int | None = None,
    num_workers: int = 0,
    handler: Callable[[BaseException], bool] | None = None,
    pairs: bool = False,
    skip: int = 0,
) -> wds.DataPipeline:
    """Build the training pipeline over shard `urls`.

    `world_size`/`rank` default to the torch.distributed (or RANK/WORLD_SIZE) values. Without
    `resampled`, shards are split over ranks x workers and each is read once per epoch (last
    partial batch kept); with it, every rank/worker streams forever (partial batches dropped),
    drawing shards from a seed of its own. `splits` keeps only samples whose json "split" is
    listed. `handler` receives every bad sample's exception; the default is a `CountingHandler`
    (available as `pipe.handler`). `pairs` gives each sample another view of its identity as
    `target_pixels` (its json under meta["target"]): the input of the encoder and the image it
    must help to denoise differ. `augment` jitters `pixels` only, never `target_pixels`: a
    diffusion target must come from the base's own distribution, and weight offsets fitted to
    jittered targets learn the jitter and draw mosaics (README, "Clean targets").

    Read in-process (`num_workers=0`), `pipe.position.samples` counts the samples the batches
    so far took (rejected ones included); a pipeline built with the same arguments and
    `skip=that count` yields the very batches that would have come next, without decoding the
    images it passes over.
    """
    # 1. check inputs
    urls = [str(u) for u in urls]
    if not urls:
        raise ValueError("`urls` must list at least one shard but is empty.")
    if batch_size < 1 or image_size < 8 or shuffle < 0 or num_workers < 0 or skip < 0:
        raise ValueError(
            "`batch_size` >= 1, `image_size` >= 8, `shuffle` >= 0, `num_workers` >= 0 and `skip` >= 0 are required "
            f"but got {batch_size}, {image_size}, {shuffle}, {num_workers} and {skip}."
        )
    if skip and num_workers:
        raise ValueError(
            f"`skip` counts the samples of one in-process stream; it needs num_workers=0, not {num_workers}."
        )
    if (world_size is None) != (rank is None):
        raise ValueError(f"give both `world_size` and `rank` or neither, but got {world_size} and {rank}.")
    if world_size is None:
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    if not 0 <= rank < world_size:
        raise ValueError(f"`rank` must be in [0, {world_size}) but is {rank}.")
    wanted = set(check_splits(splits)) if splits is not None else None
    handler = handler if handler is not None else CountingHandler()
    readers = world_size * max(1, num_workers)
    if not resampled and len(urls) < readers:
        raise ValueError(
            f"{len(urls)} shard(s) cannot be split over {world_size} rank(s) x {max(1, num_workers)} worker(s) "
            f"= {readers} readers: use resampled=True, or write more shards (smaller maxcount)."
        )
    # 2. which shards this rank/worker reads: drawn with replacement from a (seed, rank, worker) seed,
    # or a once-per-epoch share of one shuffled list that all ranks agree on
    if resampled:
        source = [
            wds.ResampledShards(
                urls, seed=seed, deterministic=True, worker_seed=lambda: stream_seed(rank, _worker_id(), "shards")
            )
        ]
    else:
        source = [
            wds.SimpleShardList(urls),
            wds.detshuffle(len(urls), initial=len(urls), seed=seed) if shuffle else None,  # same order on all ranks
            _split_by_rank(rank, world_size),
            wds.split_by_worker,
        ]
    # 3. samples: read, shuffle, decode, filter, skip, to tensors, batch
    position = _Position()
    pipe = wds.DataPipeline(
        *source,
        wds.tarfile_to_samples(handler=handler),
        # pairing reads the json of consecutive samples, before the shuffle separates an identity's views
        wds.decode(only=["json"], handler=handler) if pairs else None,
        _pair_views(seed, rank) if pairs else None,
        _Shuffle(shuffle, min(100, shuffle), seed, rank) if shuffle > 1 else None,
        # json first: filtering by split before decoding images skips the work on dropped samples
        wds.decode(only=["json"], handler=handler) if not pairs else None,
        # samples without a json dict pass on, to be counted as bad by the last stage
        wds.select(lambda s: not isinstance(s.get("json"), dict) or s["json"].get("split") in wanted)
        if wanted is not None
        else None,
        _skip(skip, position, handler),
        wds.decode("pil", partial=True, handler=handler),
        _to_examples(image_size, augment, seed, rank, handler),
        _batched(batch_size, partial=not resampled),
    )
    pipe.handler = handler
    pipe.position = position
    return pipe


def make_loader(urls: Sequence[str], *, batch_size: int, num_workers: int = 2, **kw) -> wds.WebLoader:
    """`make_pipeline` behind a `wds.WebLoader` with `num_workers` processes (batches come pre-made)."""
    pipe = make_pipeline(urls, batch_size=batch_size, num_workers=num_workers, **kw)
    return wds.WebLoader(pipe, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)
