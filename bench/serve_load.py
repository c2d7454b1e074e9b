"""A real `e4t serve` (subprocess, embedded default) under load; the last line printed is one JSON object.

Measured in this one run, as ratios where the shared machine makes absolute seconds noisy:

- `batched_speedup_8`: 8 Generate requests (1 image each) for ONE concept sent together (the
  server batches them) vs the same 8 sent one at a time; `mixed_speedup_8`: the same for 8
  DIFFERENT concepts; `mixed_vs_same_8`: throughput of the mixed batch / the same-concept batch.
- `cold_concept_ms`: with `--stored-concepts` (1,000) in the store, the extra latency of a
  Generate naming a concept not yet in the memory cache over a cached one: the engine's concept
  lookup timed in process (the only step that differs), and end to end over gRPC
  (`cold_concept_grpc_ms`, within the noise of a whole Generate on a shared machine).
- `grpc_overhead`: one Generate over gRPC / the same on an in-process `Engine` (same thread settings).
- `contention_slowdown`: the demo's generation (4 images, 25 steps) beside a competing CPU-bound
  PyTorch process (torch's default threads, same niceness) / alone.
- under `--clients` (32) concurrent clients mixing Personalize and Generate for `--duration-s`
  (or `--soak-minutes`): `p99_ms` (and per RPC), `errors_by_code` (RESOURCE_EXHAUSTED is by
  design: the queue is bounded), `rss_drift` (server resident memory, last sample / first after
  the warm-up quarter, minus 1).

    python bench/serve_load.py                       # ~6 min on 2 cores
    python bench/serve_load.py --soak-minutes 10     # the >= 10 min soak: RSS drift over it
    python bench/serve_load.py --server-threads 2    # compare thread settings (README, "Sharing the CPU")
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# a CPU-bound PyTorch process like a training job: torch's default threads, busy until killed
COMPETITOR = """
import torch
a = torch.randn(256, 256)
while True:
    b = torch.relu(a @ a) + 1
"""


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(store: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", "0", "--store", str(store)]
    cmd += ["--queue-size", str(args.queue_size), "--max-batch", str(args.max_batch), "--log-level", "WARNING"]
    if args.server_threads:
        cmd += ["--threads", args.server_threads]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "e4t server on port" not in line:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line}{proc.stderr.read()}")
    threads_line = proc.stdout.readline().strip()
    print(f"server pid {proc.pid}: {threads_line}", file=sys.stderr)
    # keep draining its pipes so a chatty server never blocks on a full pipe
    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=stream.read, daemon=True).start()
    return proc, f"127.0.0.1:{int(line.split('port')[1].split()[0])}"


def subject_png(domain: str, index: int) -> bytes:
    from shards.synth import render_sample

    return render_sample(domain, index, 0, 64, 0)[1]


def timed_generate(client, prompt: str, **kw) -> float:
    start = time.perf_counter()
    images = list(client.generate(prompt, **kw))
    assert len(images) == kw.get("num_images", 4), "fewer images than asked for"
    return time.perf_counter() - start


def together(fn, calls: list[dict]) -> float:
    """Wall time of all `calls` to `fn` started at once, each in its own thread."""
    errors: list[BaseException] = []

    def one(kw: dict) -> None:
        try:
            fn(**kw)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(kw,)) for kw in calls]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def measure_batching(client, concepts: list[str], steps: int, repeats: int) -> dict:
    same = [dict(prompt=f"a photo of {{{concepts[0]}}} on the beach", seed=i) for i in range(8)]
    mixed = [dict(prompt=f"a photo of {{{c}}} on the beach", seed=i) for i, c in enumerate(concepts[:8])]
    kw = dict(num_images=1, steps=steps)
    seq, t_same, t_mixed = [], [], []
    for _ in tqdm(range(repeats), desc="batching", file=sys.stderr):
        seq.append(sum(timed_generate(client, c["prompt"], seed=c["seed"], **kw) for c in mixed))
        t_same.append(together(lambda prompt, seed: timed_generate(client, prompt, seed=seed, **kw), same))
        t_mixed.append(together(lambda prompt, seed: timed_generate(client, prompt, seed=seed, **kw), mixed))
    seq_s, same_s, mixed_s = statistics.median(seq), statistics.median(t_same), statistics.median(t_mixed)
    return {
        "one_at_a_time_8_s": round(seq_s, 3),
        "batched_same_8_s": round(same_s, 3),
        "batched_mixed_8_s": round(mixed_s, 3),
        "batched_speedup_8": round(seq_s / same_s, 2),
        "mixed_speedup_8": round(seq_s / mixed_s, 2),
        "mixed_vs_same_8": round(same_s / mixed_s, 3),
    }


def measure_cold(client, cold_ids: list[str], hot_id: str, steps: int) -> dict:
    """End to end over gRPC: a Generate naming a concept never used yet vs one naming a cached concept."""
    kw = dict(num_images=1, steps=steps)
    timed_generate(client, f"a photo of {{{hot_id}}}", **kw)
    hot, cold = [], []
    for concept_id in tqdm(cold_ids, desc="cold vs cached concept", file=sys.stderr):
        hot.append(timed_generate(client, f"a photo of {{{hot_id}}}", **kw))
        cold.append(timed_generate(client, f"a photo of {{{concept_id}}}", **kw))
    return {"cold_concept_grpc_ms": round(1000 * (statistics.median(cold) - statistics.median(hot)), 1)}


def measure_cold_load(engine, cold_ids: list[str]) -> dict:
    """The part of a request that differs: `Engine.load_concept` from the store vs from the memory cache."""

    def timed(concept_id: str) -> float:
        start = time.perf_counter()
        engine.load_concept(concept_id)
        return time.perf_counter() - start

    cold = [timed(i) for i in cold_ids]
    hot = [timed(i) for i in cold_ids]
    return {"cold_concept_ms": round(1000 * (statistics.median(cold) - statistics.median(hot)), 2)}


def measure_grpc_overhead(client, store: Path, concept: str, args: argparse.Namespace, cold_ids: list[str]) -> dict:
    from e4t.embedded import default_paths
    from e4t.threads import configure
    from serve.engine import Engine

    configure(args.server_threads)  # the server's settings, so only the transport differs
    base, packs = default_paths()
    engine = Engine.load(base, packs, store, max_batch=args.max_batch)
    prompt, kw = f"a photo of {{{concept}}} on the beach", dict(num_images=1, steps=args.steps)
    cold = measure_cold_load(engine, cold_ids) if cold_ids else {}
    try:
        grpc_s, local_s = [], []
        for i in tqdm(range(args.repeats * 5), desc="gRPC vs in-process", file=sys.stderr):
            grpc_s.append(timed_generate(client, prompt, seed=i, **kw))
            start = time.perf_counter()
            engine.generate(prompt, seed=i, **kw)
            local_s.append(time.perf_counter() - start)
    finally:
        engine.close(30)
    return {
        **cold,
        "grpc_generate_ms": round(1000 * statistics.median(grpc_s), 1),
        "inprocess_generate_ms": round(1000 * statistics.median(local_s), 1),
        "grpc_overhead": round(statistics.median(grpc_s) / statistics.median(local_s), 3),
    }


def measure_contention(client, concept: str, repeats: int) -> dict:
    prompt = f"a photo of {{{concept}}} on the beach"
    alone = [timed_generate(client, prompt, num_images=4, steps=25) for _ in range(repeats)]
    # torch's defaults in the competitor, whatever this process was told
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "E4T_THREADS")}
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env)
    try:
        time.sleep(2)  # let it get busy
        busy = [timed_generate(client, prompt, num_images=4, steps=25) for _ in range(repeats)]
    finally:
        competitor.kill()
        competitor.wait()
    return {
        "generate4_alone_s": round(statistics.median(alone), 2),
        "generate4_contended_s": round(statistics.median(busy), 2),
        "contention_slowdown": round(statistics.median(busy) / statistics.median(alone), 2),
    }


def run_load(address: str, pid: int, concepts: list[str], args: argparse.Namespace, duration: float) -> dict:
    from serve.client import E4TClient

    stop = time.monotonic() + duration
    latencies: dict[str, list[float]] = {"Personalize": [], "Generate": []}
    codes: Counter[str] = Counter()
    rss: list[tuple[float, int]] = []
    lock = threading.Lock()
    pngs = [subject_png("faces", i) for i in range(4)]

    def client_loop(n: int) -> None:
        rng = random.Random(n)
        with E4TClient(address, timeout=600) as client:
            while time.monotonic() < stop:
                kind = "Personalize" if rng.random() < args.personalize_share else "Generate"
                start = time.perf_counter()
                try:
                    if kind == "Personalize":
                        info = client.personalize(rng.choice(pngs), "faces", steps=rng.choice((1, 3, 5)), seed=n)
                        with lock:
                            concepts.append(info["id"])
                    else:
                        with lock:
                            concept = rng.choice(concepts)
                        prompt = f"a photo of {{{concept}}} on the beach"
                        list(client.generate(prompt, num_images=rng.choice((1, 2)), steps=args.steps, seed=n))
                    code = "OK"
                except grpc.RpcError as e:
                    code = e.code().name
                with lock:
                    codes[code] += 1
                    if code == "OK":
                        latencies[kind].append(time.perf_counter() - start)
                if code == "RESOURCE_EXHAUSTED":
                    time.sleep(rng.uniform(0.05, 0.5))  # back off as the status asks

    workers = [threading.Thread(target=client_loop, args=(n,), daemon=True) for n in range(args.clients)]
    for w in workers:
        w.start()
    t0 = time.monotonic()
    with tqdm(total=int(duration), desc=f"{args.clients} clients", unit="s", file=sys.stderr) as bar:
        while time.monotonic() < stop:
            time.sleep(1)
            rss.append((time.monotonic() - t0, rss_bytes(pid)))
            bar.update(1)
            bar.set_postfix(ok=codes["OK"], rss_mb=rss[-1][1] >> 20)
    for w in workers:
        w.join()
    every = sorted(latencies["Personalize"] + latencies["Generate"])

    def p99(values: list[float]) -> float | None:
        return round(1000 * statistics.quantiles(values, n=100)[98], 1) if len(values) >= 2 else None

    after_warmup = [r for t, r in rss if t >= duration / 4]
    return {
        "load_s": round(duration, 1),
        "requests": sum(codes.values()),
        "errors_by_code": {k: v for k, v in codes.items() if k != "OK"},
        "p99_ms": p99(every),
        "p99_ms_by_rpc": {k: p99(v) for k, v in latencies.items()},
        "p50_ms_by_rpc": {k: round(1000 * statistics.median(v), 1) if v else None for k, v in latencies.items()},
        "rss_mb_after_warmup": round(after_warmup[0] / 2**20, 1),
        "rss_mb_end": round(after_warmup[-1] / 2**20, 1),
        "rss_drift": round(after_warmup[-1] / after_warmup[0] - 1, 4),
    }


def fill_store(store: Path, concept_id: str, count: int) -> list[str]:
    """`count` copies of one stored concept under new ids, stored as the server stores them."""
    from e4t.concept import new_concept_id
    from serve.store import ConceptStore

    concepts = ConceptStore(store)
    concept = concepts.load(concept_id)
    ids = []
    for _ in tqdm(range(count), desc="filling the store", file=sys.stderr):
        concept.id = new_concept_id()
        concepts.put(concept)
        ids.append(concept.id)
    return ids


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration-s", type=float, default=180.0, help="length of the load phase")
    p.add_argument("--soak-minutes", type=float, default=0.0, help="if set, the load phase lasts this long")
    p.add_argument("--steps", type=int, default=10, help="denoising steps of the batching and load Generates")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--personalize-share", type=float, default=0.2)
    p.add_argument("--queue-size", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--stored-concepts", type=int, default=1000, help="store size for cold_concept_ms")
    p.add_argument("--server-threads", default=None, help="passed to `e4t serve --threads` (default: its auto)")
    p.add_argument("--skip", default="", help="comma list of phases to skip: batching,cold,grpc,contention,load")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    from cli import prepare_process

    prepare_process()  # this process runs an in-process engine too: the same OpenMP setting as the server
    from serve.client import E4TClient

    result: dict = {"clients": args.clients, "steps": args.steps, "max_batch": args.max_batch}
    cold_ids: list[str] = []
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        store = Path(tmp) / "store"
        proc, address = start_server(store, args)
        try:
            with E4TClient(address, timeout=600) as client:
                client.wait_ready(180)
                concepts = []
                subjects = 1 if {"batching", "load"} <= skip else 8
                for i in tqdm(range(subjects), desc=f"personalize {subjects} subjects", file=sys.stderr):
                    domain = ("faces", "cats")[i % 2]
                    start = time.perf_counter()
                    concepts.append(client.personalize(subject_png(domain, 100 + i), domain, steps=5)["id"])
                    result.setdefault("personalize_s", []).append(round(time.perf_counter() - start, 2))
                if "batching" not in skip:
                    result.update(measure_batching(client, concepts, args.steps, args.repeats))
                if "contention" not in skip:
                    result.update(measure_contention(client, concepts[0], args.repeats))
            if "cold" not in skip and args.stored_concepts:
                # the server reads its store at start: restart it on the filled folder
                proc.terminate()
                proc.wait(60)
                cold_ids = fill_store(store, concepts[0], args.stored_concepts - len(concepts))
                proc, address = start_server(store, args)
                with E4TClient(address, timeout=600) as client:
                    client.wait_ready(180)
                    result.update(measure_cold(client, cold_ids[: 5 * args.repeats], concepts[1], args.steps))
                    result["stored_concepts"] = len(list(store.glob("c_*.json")))
            if "grpc" not in skip:
                unused = cold_ids[5 * args.repeats :][:50]  # never named by a request: not in any cache
                with E4TClient(address, timeout=600) as client:
                    result.update(measure_grpc_overhead(client, store, concepts[0], args, unused))
            if "load" not in skip:
                duration = args.soak_minutes * 60 or args.duration_s
                result.update(run_load(address, proc.pid, list(concepts), args, duration))
        finally:
            proc.terminate()
            try:
                result["server_exit"] = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                result["server_exit"] = "killed"
    result["threads_env"] = os.environ.get("E4T_THREADS", "")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
