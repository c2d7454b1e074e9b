"""The engine behind the servicer: models loaded once, one model worker, a bounded queue.

Plain Python, no gRPC: requests are validated in the caller's thread (so a bad
request fails at once, without waiting in the queue), then run as a `Job` on
the single model worker thread. Jobs stream their events (progress, images)
back to the caller and carry a cancellation flag and a deadline, checked
between tuning steps and between images.

Generate requests are batched: the worker takes the first one, waits up to
`batch_wait_ms` for more with the same steps and guidance, and denoises up to
`max_batch` images as ONE UNet batch, even when they name different concepts
(each sample carries its own prompt encodings and weight offsets:
`e4t.generate.generate_samples`). Concepts that requests name stay in memory,
least recently used first out, within `concept_cache_mb`.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

import e4t
from e4t.break_a_scene import check_masks
from e4t.combine import check_combination
from e4t.concept import Concept
from e4t.errors import InvalidInput, NotFound
from e4t.generate import PreparedPrompt, generate_samples, prepare_prompt
from e4t.methods import METHODS, SCENE_TUNERS, TUNERS
from serve import metrics
from serve.errors import Cancelled, DeadlineExceeded, QueueFull
from serve.limits import (
    CONCEPT_ID_RE,
    DEFAULT_GENERATE_STEPS,
    DEFAULT_METHOD_STEPS,
    DEFAULT_NUM_IMAGES,
    DEFAULT_PAGE_SIZE,
    Limits,
    check_concept_id,
    check_method,
    check_owner,
    check_prompt,
    check_range,
    decode_image,
)
from serve.store import ConceptRecord, ConceptStore

logger = logging.getLogger(__name__)

_POLL_S = 0.1  # how often a waiting caller notices its own cancellation


@dataclass(frozen=True)
class DomainInfo:
    name: str
    class_word: str
    pack_hash: str
    methods: tuple[str, ...] = METHODS


@dataclass(eq=False)
class Job:
    """One request on the model worker; iterate `events()` to follow it."""

    kind: str
    run: Callable[[Job], Any]
    deadline: float | None = None  # time.monotonic() value
    spec: GenerateSpec | None = None  # set for Generate: the worker batches these instead of calling `run`
    # told every event as it happens, on the thread that makes it, plus "started" (the worker took the
    # job up) and "saving" (the concept ids about to be stored); only a "saving" listener may raise,
    # which fails the job before anything is stored (serve.operations writes its record there)
    listener: Callable[[str, Any], None] | None = None
    started: threading.Event = field(default_factory=threading.Event, repr=False)
    _events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue, repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Asks the job to stop at its next check; safe from any thread, idempotent."""
        self._cancelled.set()

    def should_stop(self) -> bool:
        """True once the job is cancelled or past its deadline; `e4t` polls it between steps and images."""
        return self._cancelled.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)

    def check(self) -> None:
        """Raises DeadlineExceeded or Cancelled if the job should stop now."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded(f"the {self.kind} request ran past its deadline.")
        if self._cancelled.is_set():
            raise Cancelled(f"the {self.kind} request was cancelled.")

    def emit(self, kind: str, payload: Any) -> None:
        self._events.put((kind, payload))
        self.tell(kind, payload)

    def tell(self, kind: str, payload: Any) -> None:
        """Tells the listener (if any) of an event; a "saving" listener's error propagates, others are logged."""
        if self.listener is None:
            return
        if kind == "saving":
            self.listener(kind, payload)
            return
        try:
            self.listener(kind, payload)
        except Exception:  # a listener must never take the model worker down
            logger.exception("listener of a %s job failed on %r", self.kind, kind)

    def execute(self) -> None:
        """Runs the job on the calling (worker) thread; never raises."""
        # started before the check: a canceller that still sees it unset knows the job will never run
        self.started.set()
        self.tell("started", None)
        try:
            self.check()
            result = self.run(self)
        except Cancelled as e:  # e4t says "cancelled" for both reasons; tell them apart
            if self.deadline is not None and time.monotonic() > self.deadline and not isinstance(e, DeadlineExceeded):
                e = DeadlineExceeded(f"the {self.kind} request ran past its deadline.")
            self.emit("error", e)
        except BaseException as e:  # the worker thread must survive anything a job does
            if not isinstance(e, (InvalidInput, NotFound)):
                logger.exception("%s job failed", self.kind)
            self.emit("error", e)
        else:
            self.emit("done", result)

    def events(self) -> Iterator[tuple[str, Any]]:
        """Yields ("progress" | "image", payload) events, then ("done", result); raises the job's error."""
        while True:
            try:
                kind, payload = self._events.get(timeout=_POLL_S)
            except queue.Empty:
                self.check()  # the worker skips or stops a cancelled job; the caller need not wait for it
                continue
            if kind == "error":
                raise payload
            yield kind, payload
            if kind == "done":
                return

    def wait(self, on_event: Callable[[str, Any], None] | None = None) -> Any:
        """Blocks until the job is done, passing each event to `on_event`; returns its result."""
        for kind, payload in self.events():
            if kind == "done":
                return payload
            if on_event is not None:
                on_event(kind, payload)
        raise AssertionError("unreachable: events() ends with a done event or raises")


@dataclass(frozen=True)
class GenerateSpec:
    """A validated Generate request; requests with equal `batch_key` can share one UNet batch."""

    prompt: str
    negative_prompt: str
    num_images: int
    steps: int
    guidance: float
    seed: int
    concepts: dict[str, Concept]
    identity_guidance: float | None = None

    @property
    def batch_key(self) -> tuple[int, float, float | None]:
        return (self.steps, self.guidance, self.identity_guidance)  # one scheduler and one guidance rule per batch


def concept_bytes(concept: Concept) -> int:
    return concept.embedding.nbytes + sum(t.nbytes for t in concept.offset_deltas.values())


class ConceptCache:
    """Loaded concepts by id, least recently used dropped first once their tensors pass `max_bytes`; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"the concept cache size has to be at least 0 bytes but is {max_bytes}.")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[str, tuple[Concept, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, concept_id: str) -> bool:
        return concept_id in self._items

    def get(self, concept_id: str) -> Concept | None:
        with self._lock:
            item = self._items.get(concept_id)
            if item is None:
                self.misses += 1
                metrics.CONCEPT_CACHE.labels("miss").inc()
                return None
            self.hits += 1
            metrics.CONCEPT_CACHE.labels("hit").inc()
            self._items.move_to_end(concept_id)
            return item[0]

    def put(self, concept: Concept) -> None:
        size = concept_bytes(concept)
        with self._lock:
            self._drop(concept.id)
            if size > self.max_bytes:
                return  # larger than the whole cache: served from the store every time
            self._items[concept.id] = (concept, size)
            self.bytes += size
            metrics.CONCEPT_CACHE_BYTES.set(self.bytes)
            while self.bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def pop(self, concept_id: str) -> None:
        with self._lock:
            self._drop(concept_id)

    def _drop(self, concept_id: str) -> None:
        item = self._items.pop(concept_id, None)
        if item is not None:
            self.bytes -= item[1]
        metrics.CONCEPT_CACHE_BYTES.set(self.bytes)


class Engine:
    """One base, one pack per domain, a concept store and ONE model worker behind a bounded queue."""

    def __init__(
        self,
        base: Any,
        packs: dict[str, Any],
        store: ConceptStore,
        *,
        limits: Limits | None = None,
        queue_size: int = 16,
        max_batch: int = 8,
        batch_wait_ms: float = 20.0,
        concept_cache_mb: float = 256.0,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"`queue_size` has to be at least 1 but is {queue_size}.")
        if max_batch < 1:
            raise ValueError(f"`max_batch` has to be at least 1 but is {max_batch}.")
        if batch_wait_ms < 0:
            raise ValueError(f"`batch_wait_ms` has to be at least 0 but is {batch_wait_ms}.")
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000
        self.concepts = ConceptCache(int(concept_cache_mb * 1024 * 1024))
        self.batch_sizes: Counter[int] = Counter()  # images per UNet batch -> how many such batches ran
        self.base = base
        self.packs = dict(packs)
        self.store = store
        self.limits = limits or Limits()
        self.queue_size = queue_size
        # a private tokenizer: HF fast tokenizers mutate their truncation state per call,
        # so sharing the pipeline's one with the worker thread could race
        self._tokenizer = copy.deepcopy(base.tokenizer)
        self._tokenizer_lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self._worker = threading.Thread(target=self._work, name="e4t-model-worker", daemon=True)
        self._worker.start()
        metrics.watch_queue(self, self._queue.qsize)

    @classmethod
    def load(
        cls,
        base_path: str | Path,
        pack_paths: list[str | Path],
        store_root: str | Path | ConceptStore,
        *,
        limits: Limits | None = None,
        queue_size: int = 16,
        **options: Any,
    ) -> Engine:
        """Loads the base once and every pack on it, one per domain; `options`: batching and cache (see __init__)."""
        if not pack_paths:
            raise ValueError("At least one domain pack is required but none was given.")
        base = e4t.load_base(base_path)
        packs: dict[str, Any] = {}
        for path in pack_paths:
            pack = e4t.load_pack(path, base)
            if pack.domain in packs:
                raise ValueError(f"Expected one pack per domain but got two for {pack.domain!r} (second: {path}).")
            packs[pack.domain] = pack
            logger.info("loaded pack %s: domain %s, hash %s", path, pack.domain, pack.hash)
        store = store_root if isinstance(store_root, ConceptStore) else ConceptStore(store_root)
        return cls(base, packs, store, limits=limits, queue_size=queue_size, **options)

    # ---- the model worker

    def _work(self) -> None:
        held: deque[Job | None] = deque()  # taken from the queue while gathering a batch but not batchable with it
        while True:
            job = held.popleft() if held else self._queue.get()
            if job is None:
                return
            if job.spec is None:
                job.execute()
            else:
                self._run_generate(self._gather(job, held))

    def _gather(self, first: Job, held: deque[Job | None]) -> list[Job]:
        """`first` and the Generate jobs of its batch key that arrive within the wait, up to `max_batch` images.

        Jobs that do not fit (other steps or guidance, Personalize) stay in `held`, in arrival order.
        """
        key = first.spec.batch_key
        batch, images = [first], first.spec.num_images
        for job in list(held):
            if images >= self.max_batch:
                break
            if job is not None and job.spec is not None and job.spec.batch_key == key:
                held.remove(job)
                batch.append(job)
                images += job.spec.num_images
        until = time.monotonic() + self.batch_wait_s
        while images < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if job is not None and job.spec is not None and job.spec.batch_key == key:
                batch.append(job)
                images += job.spec.num_images
            else:
                held.append(job)
        return batch

    def _run_generate(self, jobs: list[Job]) -> None:
        """Runs Generate jobs of one batch key as UNet batches of at most `max_batch` images; never raises."""
        failed: set[int] = set()

        def fail(job: Job, error: BaseException) -> None:
            if id(job) not in failed:
                failed.add(id(job))
                job.emit("error", error)

        samples: list[tuple[Job, int, PreparedPrompt]] = []
        for job in jobs:
            spec = job.spec
            try:
                job.check()
                identity = spec.identity_guidance is not None
                prepared = prepare_prompt(
                    self.base, self.packs, spec.concepts, spec.prompt, spec.negative_prompt, identity=identity
                )
            except BaseException as e:
                if not isinstance(e, (InvalidInput, NotFound, Cancelled)):
                    logger.exception("generate job failed")
                fail(job, e)
                continue
            samples += [(job, index, prepared) for index in range(spec.num_images)]

        steps, guidance, identity_guidance = jobs[0].spec.batch_key
        for start in range(0, len(samples), self.max_batch):
            chunk = [s for s in samples[start : start + self.max_batch] if id(s[0]) not in failed]
            live = [s for s in chunk if not s[0].should_stop()]
            if not live:
                for job, _, _ in chunk:
                    self._stop(job, fail)
                continue
            try:
                images = generate_samples(
                    self.base,
                    [(prepared, job.spec.seed + index) for job, index, prepared in live],
                    steps=steps,
                    guidance=guidance,
                    identity_guidance=identity_guidance,
                    should_stop=lambda live=live: all(job.should_stop() for job, _, _ in live),
                )
            except BaseException as e:  # one bad batch fails its requests, never the worker
                if not isinstance(e, Cancelled):
                    logger.exception("generate batch of %d images failed", len(live))
                for job, _, _ in live:
                    if isinstance(e, Cancelled):
                        self._stop(job, fail)
                    else:
                        fail(job, e)
                continue
            self.batch_sizes[len(live)] += 1
            metrics.BATCH_SIZE.observe(len(live))
            for (job, index, _), image in zip(live, images):
                if job.should_stop():
                    self._stop(job, fail)
                elif id(job) not in failed:
                    job.emit("image", (index, job.spec.seed + index, image))  # image i has seed + i
        for job in jobs:
            if id(job) not in failed:
                job.emit("done", job.spec.num_images)

    @staticmethod
    def _stop(job: Job, fail: Callable[[Job, BaseException], None]) -> None:
        try:
            job.check()
        except (Cancelled, DeadlineExceeded) as e:
            fail(job, e)

    def _submit(self, job: Job) -> Job:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"the model queue is full ({self.queue_size} requests waiting); retry later.") from None
        return job

    def close(self, timeout: float | None = None) -> None:
        """Stops the worker once the jobs already queued are done; idempotent."""
        if self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout)

    # ---- domains and concepts

    def domains(self) -> list[DomainInfo]:
        return [DomainInfo(name, pack.class_word, pack.hash) for name, pack in sorted(self.packs.items())]

    def _pack(self, domain: str) -> Any:
        if domain not in self.packs:
            available = ", ".join(sorted(self.packs)) or "none"
            raise NotFound(f"domain {domain!r} does not exist; available: {available}.")
        return self.packs[domain]

    def get_concept(self, concept_id: str) -> ConceptRecord:
        return self.store.get(check_concept_id(concept_id))

    def list_concepts(
        self, domain: str = "", page_size: int = 0, page_token: str = "", *, owner: str | None = None
    ) -> tuple[list[ConceptRecord], str]:
        page_size = page_size or DEFAULT_PAGE_SIZE
        check_range("page_size", page_size, 1, self.limits.max_page_size)
        return self.store.list(domain or None, page_size, page_token, owner=owner)

    def delete_concept(self, concept_id: str) -> ConceptRecord:
        record = self.store.delete(check_concept_id(concept_id))
        self.concepts.pop(record.id)
        return record

    # ---- personalize

    def submit_personalize(
        self,
        image_bytes: bytes,
        mask_bytes: bytes = b"",
        domain: str = "",
        method: str = "",
        steps: int | None = None,
        seed: int | None = None,
        owner: str = "",
        *,
        timeout: float | None = None,
        listener: Callable[[str, Any], None] | None = None,
        masks: list[bytes] | tuple[bytes, ...] = (),
        mask_domains: list[str] | tuple[str, ...] = (),
    ) -> Job:
        """Validates and queues a personalization; its events are ("progress", (step, total, loss, stage)).

        `listener`: see `Job.listener`; it is told before the job is queued. A scene method
        (break_a_scene) takes `masks` (one per subject) and optional `mask_domains` instead of
        `mask`, and its job's result is a list of records, one per mask.
        """
        # 1. check inputs
        limits = self.limits
        method = check_method(method, METHODS)
        if method in SCENE_TUNERS or masks or mask_domains:
            return self._submit_scene(image_bytes, mask_bytes, masks, domain, mask_domains, method, steps, seed,
                                      owner, timeout, listener)  # fmt: skip
        steps, seed, owner = self._run_settings(method, steps, seed, owner)
        if len(image_bytes) + len(mask_bytes) > limits.max_request_bytes:
            raise InvalidInput(
                f"`image` and `mask` together have to be at most {limits.max_request_bytes} bytes "
                f"but have {len(image_bytes) + len(mask_bytes)}."
            )
        pack = self._pack(domain)
        # 2. decode images (here, not on the worker: a bad image must not wait in the queue)
        image = decode_image(image_bytes, limits, what="image")
        mask = decode_image(mask_bytes, limits, what="mask", mode="L") if mask_bytes else None
        if mask is not None and mask.size != image.size:
            raise InvalidInput(f"`mask` has to be the size of `image` {image.size} but is {mask.size}.")

        # 3. tune, then store, on the worker
        def tune(progress: Callable[..., None], should_stop: Callable[[], bool]) -> Concept:
            return TUNERS[method](
                self.base,
                pack,
                image,
                steps=steps,
                seed=seed,
                mask=mask,
                owner=owner,
                progress=progress,
                should_stop=should_stop,
            )

        return self._queue_tuning(tune, steps, timeout, listener)

    def _submit_scene(
        self,
        image_bytes: bytes,
        mask_bytes: bytes,
        masks: list[bytes] | tuple[bytes, ...],
        domain: str,
        mask_domains: list[str] | tuple[str, ...],
        method: str,
        steps: int | None,
        seed: int | None,
        owner: str,
        timeout: float | None,
        listener: Callable[[str, Any], None] | None,
    ) -> Job:
        """`submit_personalize` of a method that learns one concept per mask; the job's result is their records."""
        # 1. check inputs: masks only for scene methods, and scene methods only with masks
        limits = self.limits
        if method not in SCENE_TUNERS:
            raise InvalidInput(f"`masks` and `mask_domains` are for {', '.join(SCENE_TUNERS)}; {method} takes `mask`.")
        if not masks:
            raise InvalidInput(f"{method} needs `masks`, one per subject of the image, but none were given.")
        if mask_bytes:
            raise InvalidInput(f"{method} takes one mask per subject in `masks`, not `mask`.")
        if mask_domains and len(mask_domains) != len(masks):
            raise InvalidInput(
                f"`mask_domains` has to name one domain per mask ({len(masks)}) but has {len(mask_domains)}."
            )
        steps, seed, owner = self._run_settings(method, steps, seed, owner)
        total = len(image_bytes) + sum(len(m) for m in masks)
        if total > limits.max_request_bytes:
            raise InvalidInput(
                f"`image` and `masks` together have to be at most {limits.max_request_bytes} bytes but have {total}."
            )
        packs = [self._pack(d) for d in (mask_domains or [domain] * len(masks))]
        # 2. decode and check the image and masks here, not on the worker
        image = decode_image(image_bytes, limits, what="image")
        n = len(masks)
        decoded = [decode_image(m, limits, what=f"mask {i + 1} of {n}", mode="L") for i, m in enumerate(masks)]
        check_masks(image, decoded, self.base.resolution)

        # 3. tune, then store every concept, on the worker
        def tune(progress: Callable[..., None], should_stop: Callable[[], bool]) -> list[Concept]:
            return SCENE_TUNERS[method](
                self.base,
                packs,
                image,
                decoded,
                steps=steps,
                seed=seed,
                owner=owner,
                progress=progress,
                should_stop=should_stop,
            )

        return self._queue_tuning(tune, steps, timeout, listener)

    def _run_settings(self, method: str, steps: int | None, seed: int | None, owner: str) -> tuple[int, int, str]:
        """A Personalize's steps (the method's default when unset), seed and owner, checked against the limits."""
        limits = self.limits
        steps = DEFAULT_METHOD_STEPS[method] if steps is None else steps
        seed = 0 if seed is None else seed
        check_range("steps", steps, 0, limits.max_steps(method))  # 0: the starting point, untuned
        check_range("seed", seed, 0, limits.max_seed)
        return steps, seed, check_owner(owner, limits)

    def _queue_tuning(
        self,
        tune: Callable[[Callable[..., None], Callable[[], bool]], Concept | list[Concept]],
        steps: int,
        timeout: float | None,
        listener: Callable[[str, Any], None] | None,
    ) -> Job:
        """Queues `tune(progress, should_stop)`; the job stores what it returns: one record, or a list for a list."""

        def run(job: Job) -> ConceptRecord | list[ConceptRecord]:
            def progress(step: int, total: int, loss: float, stage: str = "tuning") -> None:
                # a method of several stages names them ("tuning:embedding", "tuning:unet": e4t.two_stage)
                job.emit("progress", (int(step), int(total), float(loss), stage))

            tuned = tune(progress, job.should_stop)
            concepts = tuned if isinstance(tuned, list) else [tuned]
            job.check()  # a cancelled request is not acknowledged, so its concepts are not kept
            job.emit("progress", (steps, steps, 0.0, "saving"))
            job.tell("saving", [concept.id for concept in concepts])
            records = [self.store.put(concept) for concept in concepts]
            return records if isinstance(tuned, list) else records[0]

        job = Job("personalize", run, None if timeout is None else time.monotonic() + timeout, listener=listener)
        job.emit("progress", (0, steps, 0.0, "queued"))
        return self._submit(job)

    def personalize(
        self,
        image_bytes: bytes,
        mask_bytes: bytes = b"",
        domain: str = "",
        method: str = "",
        steps: int | None = None,
        seed: int | None = None,
        owner: str = "",
        on_progress: Callable[[int, int, float, str], None] | None = None,
        *,
        timeout: float | None = None,
    ) -> ConceptRecord:
        """Blocking form of `submit_personalize`; `on_progress(step, total, loss, stage)`."""
        job = self.submit_personalize(image_bytes, mask_bytes, domain, method, steps, seed, owner, timeout=timeout)
        return job.wait(None if on_progress is None else lambda kind, payload: on_progress(*payload))

    # ---- generate

    def submit_generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        num_images: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        *,
        identity_guidance: float | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Validates and queues a generation; its events are ("image", (index, seed, PIL.Image))."""
        # 1. check inputs
        limits = self.limits
        num_images = DEFAULT_NUM_IMAGES if num_images is None else num_images
        steps = DEFAULT_GENERATE_STEPS if steps is None else steps
        guidance = self.base.default_guidance if guidance is None else guidance
        seed = 0 if seed is None else seed
        check_range("num_images", num_images, 1, limits.max_num_images)
        check_range("steps", steps, 1, limits.max_generate_steps)
        check_range("guidance", guidance, 0.0, limits.max_guidance)
        check_range("seed", seed, 0, limits.max_seed)
        concept_ids = e4t.find_concept_ids(prompt)
        if identity_guidance is not None:
            check_range("identity_guidance", identity_guidance, 0.0, limits.max_guidance)
            if not concept_ids:
                raise InvalidInput("`identity_guidance` needs a prompt that names a concept")
        negative_ids = e4t.find_concept_ids(negative_prompt)
        with self._tokenizer_lock:
            check_prompt(prompt, limits, tokenizer=self._tokenizer, concept_ids=concept_ids)
            check_prompt(
                negative_prompt,
                limits,
                tokenizer=self._tokenizer,
                concept_ids=negative_ids,
                what="negative_prompt",
                required=False,
            )
        # 2. load the named concepts (NotFound now rather than after waiting in the queue)
        named = list(dict.fromkeys(concept_ids + negative_ids))
        for name in named:
            if not CONCEPT_ID_RE.fullmatch(name):
                raise NotFound(f"prompt names {{{name}}} but no concept has that id (ids are c_ + 12 hex digits).")
        concepts = {concept_id: self.load_concept(concept_id) for concept_id in named}
        check_combination(self.base, self.packs, list(concepts.values()))  # a bad combination fails before queueing

        # 3. generate on the worker, batched with other requests; images stream back as each batch is done
        identity = None if identity_guidance is None else float(identity_guidance)
        spec = GenerateSpec(prompt, negative_prompt, num_images, steps, float(guidance), seed, concepts, identity)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._submit(Job("generate", self._unbatched, deadline, spec=spec))

    def _unbatched(self, job: Job) -> None:
        raise AssertionError("generate jobs run in batches (Engine._run_generate), never through Job.run")

    def load_concept(self, concept_id: str) -> Concept:
        """A concept's tensors, from the memory cache when it is there; NotFound if it is not in the store."""
        self.store.get(concept_id)  # the store is the truth: a concept deleted there is not served from memory
        concept = self.concepts.get(concept_id)
        if concept is None:
            concept = self.store.load(concept_id)
            self.concepts.put(concept)
        return concept

    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        num_images: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
        on_image: Callable[[int, int, Image.Image], None] | None = None,
        *,
        identity_guidance: float | None = None,
        timeout: float | None = None,
    ) -> list[tuple[int, int, Image.Image]]:
        """Blocking form of `submit_generate`; returns [(index, seed, image)], `on_image` sees each as it is done."""
        job = self.submit_generate(
            prompt,
            negative_prompt,
            num_images,
            steps,
            guidance,
            seed,
            identity_guidance=identity_guidance,
            timeout=timeout,
        )
        results: list[tuple[int, int, Image.Image]] = []

        def collect(kind: str, payload: tuple[int, int, Image.Image]) -> None:
            results.append(payload)
            if on_image is not None:
                on_image(*payload)

        job.wait(collect)
        return results
